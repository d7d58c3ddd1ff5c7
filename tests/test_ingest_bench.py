"""bench/mappers.py still runs (at a tiny size: the figures themselves are not tested)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ingest_benchmark_runs_and_prints_its_table() -> None:
    command = [sys.executable, "bench/mappers.py", "--messages", "8", "--connections", "2",
               "--days", "1", "--runs", "1", "--reimport-days", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("measure")
    labels = [line.split("  ")[0] for line in lines[2:]]
    assert labels == [
        "HL7 v2 ORU^R01 mapped in-process",
        "HL7 v2 over MLLP + SQLite, 2 connections",
        "Libre CSV, 1 days, imported into SQLite",
        "Libre CSV, 1 days, imported AGAIN",
    ]
    assert "300 readings" in lines[4]  # 288 at 5 min in 24 h, and a scan every 25 of them
