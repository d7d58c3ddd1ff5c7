"""`bench/run.py --size small` end to end: every benchmark runs and has its rows in the one
table. Figures are not checked (speed is never asserted); that each benchmark still runs is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bench.run import BENCHMARKS, available

ROOT = Path(__file__).resolve().parent.parent

# The first-column names each module's rows start with (a module added later without an
# entry here is checked by its progress line only).
ROW_NAMES = {
    "deid": ["deid engine", "deid export", "deid search"],
    "search": ["search build", "search (a)", "search (b)", "search (c)", "search (d)",
               "search (e)", "search (f)", "search (g)"],
    "generate": ["generate"],
    "clinical": ["clinical load", "clinical $lastn", "clinical $cgm-metrics",
                 "clinical AGP html", "clinical AGP pdf", "clinical patient list"],
    "population": ["load", "search@"],
    "broad": ["broad read", "broad patient", "broad date", "broad date -date",
              "broad date total", "broad lastUpdated", "broad poll", "broad _id list"],
    "read": ["read", "vread"],
    "export": ["export"],
    "bulk": ["bulk export", "bulk import", "bulk load", "cohort@", "group export@", "api read",
             "api read+export", "api search", "api search+export", "api read+export elsewhere",
             "api search+export elsewhere"],
    "ingest": ["ingest"],
    "devices": ["devices diatabase load", "devices $submit-cgm-bundle",
                "devices nightscout entries"],
    "durability": ["durability NORMAL", "durability FULL", "durability FULL+group"],
    "writes": ["writes 1 worker 1 client", "writes 1 worker 8 clients",
               "writes 1 worker 32 clients", "writes 2 workers 1 client",
               "writes 2 workers 8 clients", "writes 2 workers 32 clients"],
    "kill9": ["kill9 2 workers"],
    "audit": ["audit ingest: batch Bundles", "audit ingest: single creates",
              "audit ingest: single creates, 8 clients", "audit search by patient, 8 clients",
              "audit search patient", "audit search code+date"],
    "validate": ["validate", "validate generated"],
    "extract": ["extract"],
    "fulltext": ["fulltext ingest cgm", "fulltext ingest cohort"],
    "terminology": ["terminology $validate-code", "terminology $lookup", "terminology $expand"],
    "terminology_lib": ["terminology-lib validate_code", "terminology-lib expand"],
    "mappers": ["hl7v2 mllp+sqlite", "csv import"],
    "mappers_hl7": ["hl7v2 map", "hl7v2 mllp"],
    "mappers_csv": ["csv map"],
    "compression": ["compression metadata", "compression search 100"],
    "rights": ["rights transparency", "rights objection check",
               "rights updates secure_delete on", "rights updates secure_delete off"],
    "subscriptions": ["subscriptions ingest", "subscriptions latency"],
    "auth": ["auth validate RS256", "auth validate ES256", "auth validate cached",
             "auth read insecure-dev", "auth read token", "auth read patient token"],
    "http_path": ["http read", "http search patient", "http create", "http $validate-code",
                  "http read insecure-dev", "http search patient insecure-dev",
                  "http create insecure-dev", "http $validate-code insecure-dev"],
}


def table_rows(output: str) -> list[list[str]]:
    """The table's rows (cells split on runs of 2+ spaces), header and rule excluded."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("benchmark "))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_small_report_has_a_row_per_benchmark() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--size", "small"],
        # a hang guard, not a measure: every bench at its small size, on a loaded machine
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    # the FAILED rows say which benchmark broke; the traceback before its progress line why
    failed = [line for line in completed.stdout.splitlines() if "FAILED" in line]
    tracebacks = [m.group(0)[-2500:] for m in re.finditer(
        r"Traceback \(most recent call last\):.*?(?=\n  \w+: \d+ row\(s\)|\Z)",
        completed.stderr, re.S)]
    assert completed.returncode == 0, "\n".join(failed + tracebacks) or completed.stderr[-3000:]
    rows = table_rows(completed.stdout)
    names = [row[0] for row in rows]
    assert not [row for row in rows if "FAILED" in " ".join(row)], completed.stderr[-3000:]
    for module in available(BENCHMARKS):
        progress = re.search(rf"^  {module}: (\d+) row\(s\)", completed.stderr, re.M)
        assert progress and int(progress.group(1)) >= 1, f"no rows from bench.{module}"
        for expected in ROW_NAMES.get(module, []):
            assert any(n == expected or (expected.endswith("@") and n.startswith(expected))
                       for n in names), f"bench.{module}: no '{expected}' row in {names}"
    # Every row has a throughput figure (a number and a unit), whatever its value.
    for row in rows:
        assert re.match(r"^[\d,.]+ \S+/s$", row[2]), row
    assert len(rows) == sum(
        int(n) for n in re.findall(r"^  \w+: (\d+) row\(s\)", completed.stderr, re.M))
    assert "not present" not in completed.stdout  # every module of bench.run.GROUPS is there
