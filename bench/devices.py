"""Connected devices: a year of one patient's CGM readings three ways, side by side.

The same 5-minute readings (105,120 for a year) are stored
- by `diatabase load` (NDJSON of the readings as FHIR Observations, a subprocess),
- through `POST /$submit-cgm-bundle` in transaction Bundles of 1,000 readings without
  identifiers (each made conditional on its keyed hash), and
- through the Nightscout API (`POST /nightscout/{site}/api/v1/entries`, arrays of 1,000
  `sgv` documents, each a conditional create with the uploader as Device),
each on a fresh SQLite database with a real server (`diatabase serve`, one worker, one
client). Prints readings/s, p50/p99 per request, the server's peak RSS, and each HTTP
path's rate as a share of the load rate (the aim: at least half).

    python -m bench.devices                 # medium: a year (105,120 readings)
    python -m bench.devices --size small    # 1,000 readings, a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from bench.common import ROOT, Result, percentile, print_table, serve

READINGS = {"small": 1_000, "medium": 105_120, "large": 105_120}
RUNS = {"small": 1, "medium": 1, "large": 3}
BATCH = 1_000
PATIENT = "bench-cgm"
START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
STEP_MS = 300_000


def values(count: int) -> list[int]:
    """Plausible glucose: a daily wave and a slower drift, 40-400 mg/dL."""
    return [max(40, min(400, round(140 + 50 * math.sin(i / 288 * 2 * math.pi)
                                   + 30 * math.sin(i / 41)))) for i in range(count)]


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def fhir_reading(index: int, value: int) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3",
                             "display": "Glucose [Mass/volume] in Interstitial fluid"}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "effectiveDateTime": iso(START_MS + index * STEP_MS),
        "valueQuantity": {"value": value, "unit": "mg/dL",
                          "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }


def run_load(readings: list[int], folder: Path) -> dict:
    """`diatabase load` of the readings (ids given, as NDJSON from an export has them)."""
    path = folder / "readings.ndjson"
    with path.open("wb") as out:
        out.write(orjson.dumps({"resourceType": "Patient", "id": PATIENT}) + b"\n")
        for i, value in enumerate(readings):
            resource = fhir_reading(i, value)
            resource["id"] = hashlib.sha1(f"r{i}".encode()).hexdigest()[:32]
            out.write(orjson.dumps(resource) + b"\n")
    db = f"sqlite:///{folder / 'load.db'}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fhir_server.cli", "load", str(path), "--db", db,
                    "--quiet"], check=True, stdout=subprocess.DEVNULL,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    elapsed = time.perf_counter() - started
    return {"rate": len(readings) / elapsed, "p50": None, "p99": None, "rss": None}


def _post_all(url: str, path: str, bodies: list[bytes], headers: dict[str, str],
              check) -> tuple[float, list[float]]:
    latencies = []
    with httpx.Client(base_url=url, timeout=600) as http:
        started = time.perf_counter()
        for body in bodies:
            t0 = time.perf_counter()
            answer = http.post(path, content=body, headers=headers)
            latencies.append(time.perf_counter() - t0)
            if answer.status_code != 200:
                raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:300]}")
            check(answer.content)
        return time.perf_counter() - started, latencies


def run_submit(readings: list[int], folder: Path) -> dict:
    bodies = []
    for first in range(0, len(readings), BATCH):
        entries = [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                    "resource": fhir_reading(i, readings[i]),
                    "request": {"method": "POST", "url": "Observation"}}
                   for i in range(first, min(first + BATCH, len(readings)))]
        bodies.append(orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                                    "timestamp": iso(START_MS), "entry": entries}))

    def check(content: bytes) -> None:
        if any(not e["response"]["status"].startswith("201")
               for e in orjson.loads(content)["entry"]):
            raise RuntimeError("a reading was not created")

    with serve(f"sqlite:///{folder / 'submit.db'}") as server:
        httpx.put(f"{server.url}/Patient/{PATIENT}", timeout=120,
                  json={"resourceType": "Patient", "id": PATIENT})
        elapsed, latencies = _post_all(server.url, "/$submit-cgm-bundle", bodies,
                                       {"content-type": "application/fhir+json"}, check)
        rss = server.peak_rss_mb()
    return {"rate": len(readings) / elapsed, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "rss": rss}


def run_nightscout(readings: list[int], folder: Path) -> dict:
    db = f"sqlite:///{folder / 'nightscout.db'}"
    bodies, sizes = [], iter([min(BATCH, len(readings) - f)
                              for f in range(0, len(readings), BATCH)])
    for first in range(0, len(readings), BATCH):
        bodies.append(orjson.dumps([
            {"type": "sgv", "sgv": readings[i], "date": START_MS + i * STEP_MS,
             "direction": "Flat", "device": "xDrip-DexcomG6"}
            for i in range(first, min(first + BATCH, len(readings)))]))

    def check(content: bytes) -> None:  # called once per body, in order
        if len(orjson.loads(content)) != next(sizes):
            raise RuntimeError("not every entry was answered")

    with serve(db) as server:
        httpx.put(f"{server.url}/Patient/{PATIENT}", timeout=120,
                  json={"resourceType": "Patient", "id": PATIENT})
        added = subprocess.run(
            [sys.executable, "-m", "fhir_server.cli", "nightscout", "add", "--patient",
             f"Patient/{PATIENT}", "--db", db], check=True, capture_output=True, text=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        site = json.loads(added.stdout.strip().splitlines()[-1])
        secret = hashlib.sha1(site["secret"].encode()).hexdigest()
        elapsed, latencies = _post_all(
            server.url, f"/nightscout/{site['site']}/api/v1/entries", bodies,
            {"content-type": "application/json", "api-secret": secret}, check)
        rss = server.peak_rss_mb()
    return {"rate": len(readings) / elapsed, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "rss": rss}


ROWS = (("devices diatabase load", run_load),
        ("devices $submit-cgm-bundle", run_submit),
        ("devices nightscout entries", run_nightscout))


def run(size: str = "medium", db: str | None = None) -> list[Result]:
    """The three paths on the same readings; `db` is ignored (each path needs a fresh
    SQLite database of its own)."""
    readings = values(READINGS[size])
    measured: dict[str, list[dict]] = {name: [] for name, _ in ROWS}
    for run_number in range(RUNS[size]):
        for name, function in ROWS:
            with tempfile.TemporaryDirectory() as tmp:
                result = function(readings, Path(tmp))
            measured[name].append(result)
            print(f"  {name} run {run_number + 1}: {result['rate']:,.0f} readings/s",
                  file=sys.stderr, flush=True)
    load_rate = statistics.median(r["rate"] for r in measured[ROWS[0][0]])
    results = []
    for name, _ in ROWS:
        runs = measured[name]
        rate = statistics.median(r["rate"] for r in runs)
        http = runs[0]["p50"] is not None
        what = {"devices diatabase load": "NDJSON of the readings, one subprocess",
                "devices $submit-cgm-bundle": f"transaction Bundles of {BATCH:,}, keyed-hash "
                "conditional creates, 1 client, 1 worker",
                "devices nightscout entries": f"arrays of {BATCH:,} sgv, conditional creates "
                "+ uploader Device, 1 client, 1 worker"}[name]
        rates = " / ".join(f"{r['rate']:,.0f}" for r in runs)
        results.append(Result(
            name, f"{len(readings):,} readings of one patient; {what} (runs: {rates})",
            rate, "readings/s",
            statistics.median(r["p50"] for r in runs) * 1000 if http else None,
            statistics.median(r["p99"] for r in runs) * 1000 if http else None,
            max(r["rss"] for r in runs) if http else None,
            "" if not http else f"{rate / load_rate:.0%} of diatabase load"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(READINGS), default="medium")
    args = parser.parse_args()
    print_table(run(args.size), "bench.devices (SQLite)")


if __name__ == "__main__":
    main()
