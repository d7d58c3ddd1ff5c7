"""Device CSV mapping cost per row: generated FreeStyle Libre and Dexcom Clarity exports.

    python bench/csv_mapping.py [--days 90] [--runs 5]

Maps each export in-process with `mappers.device_csv.to_bundle` (no storage, no JSON) and
prints, per format, the rows, the CPU time per row (`time.process_time`, which a shared
machine disturbs less than wall time) and the rows per second, median of the runs, with the
best run beside it (a busy machine inflates even CPU time) and the load average.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mappers_csv import generate_libre_export  # noqa: E402
from mappers.device_csv import to_bundle  # noqa: E402

DEXCOM_HEADER = (
    "Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,Device Info,"
    "Source Device ID,Glucose Value (mg/dL),Insulin Value (u),Carb Value (grams),"
    "Duration (hh:mm:ss),Glucose Rate of Change (mg/dL/min),Transmitter Time (Long Integer),"
    "Transmitter ID"
)


def generate_dexcom_export(days: int, interval_minutes: int = 5, seed: int = 1) -> str:
    """A Clarity export: metadata rows, then an EGV every 5 minutes and a daily calibration."""
    rng = random.Random(seed)
    lines = [
        DEXCOM_HEADER,
        "1,,FirstName,,Bench,,,,,,,,,",
        "2,,LastName,,Patient,,,,,,,,,",
        "3,,Device,,,Dexcom G6 Mobile App,iPhone G6,,,,,,,",
    ]
    start = datetime(2024, 1, 1)
    glucose = 120.0
    for step in range(days * 24 * 60 // interval_minutes):
        moment = (start + timedelta(minutes=step * interval_minutes)).isoformat()
        glucose = min(400.0, max(40.0, glucose + rng.gauss(0, 4)))
        event = "Calibration" if step % 288 == 100 else "EGV"
        lines.append(f"{len(lines)},{moment},{event},,,,iPhone G6,{round(glucose)},,,,,"
                     f"{step * 300},8BENCH")
    return "\n".join(lines) + "\n"


def measure(data: bytes, runs: int) -> tuple[int, float, float]:
    """(rows read, median and best CPU seconds of one mapping)."""
    cpu = []
    rows = 0
    for _ in range(runs):
        began = time.process_time()
        result = to_bundle(data, patient="Patient/bench", timezone="Europe/Paris")
        cpu.append(time.process_time() - began)
        rows = result.rows_read
    return rows, statistics.median(cpu), min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    exports = {
        "freestyle-libre": generate_libre_export(args.days, 5).encode("utf-8"),
        "dexcom-clarity": generate_dexcom_export(args.days).encode("utf-8"),
    }
    print(f"{args.days} days, median of {args.runs} runs; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'format':<16} | {'rows':>7} | {'µs/row CPU':>10} | {'rows/s':>9} | "
          f"{'CPU s':>6} | {'best CPU s':>10}")
    print(f"{'-' * 16}-|-{'-' * 7}-|-{'-' * 10}-|-{'-' * 9}-|-{'-' * 6}-|-{'-' * 10}")
    for name, data in exports.items():
        rows, seconds, best = measure(data, args.runs)
        print(f"{name:<16} | {rows:>7,} | {seconds / rows * 1e6:>10.1f} | "
              f"{rows / seconds:>9,.0f} | {seconds:>6.3f} | {best:>10.3f}")


if __name__ == "__main__":
    main()
