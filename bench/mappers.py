"""Ingestion end to end: HL7 v2 over MLLP into SQLite, and a 90-day CGM export imported.

    python bench/mappers.py [--messages 1000] [--connections 4] [--days 90] [--runs 3]
                            [--profile] [--reimport-days 0]

Rows of the table (each the median of `--runs` runs, every run on a fresh SQLite file):
- HL7 v2 ORU^R01 mapped in-process (`to_bundle`, no storage), messages/s;
- the same messages sent over MLLP (`--connections` senders on 127.0.0.1) to the listener of
  `diatabase mllp`, each stored as one transaction before its ACK, messages/s;
- a FreeStyle Libre export of `--days` days (a reading every 5 minutes plus scans: about
  26,000 readings for 90 days) imported as `diatabase import` does (read, map, one
  transaction), seconds and rows/s; target: under 10 s.
`--profile` adds a cProfile breakdown of one import by stage (mapping, validation, index
extraction, conditional-create searches, SQLite writes, reference handling);
`--reimport-days N` times importing an N-day export a second time (every row found).
CI runs it small: `python bench/mappers.py --messages 50 --days 2 --runs 1`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mappers_csv import generate_libre_export  # noqa: E402
from bench.mappers_hl7 import glucose_message  # noqa: E402
from fhir_server.gc_tuning import tune_for_server  # noqa: E402
from fhir_server.ingest.importer import Importer, ImportOptions  # noqa: E402
from fhir_server.ingest.mllp_config import MllpConfig  # noqa: E402
from fhir_server.ingest.mllp_listener import start_listener  # noqa: E402
from fhir_server.service.fhir import FhirService  # noqa: E402
from fhir_server.settings import Settings  # noqa: E402
from fhir_server.storage import open_storage  # noqa: E402
from mappers.hl7v2 import to_bundle  # noqa: E402
from mappers.mllp import MllpClient  # noqa: E402


def fresh_service(folder: Path, name: str) -> FhirService:
    url = f"sqlite:///{folder / name}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    tune_for_server()  # as `diatabase import` and `diatabase mllp` do
    return service


def map_in_process(messages: list[str]) -> tuple[float, float]:
    """(messages per wall second, messages per CPU second)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for message in messages:
        to_bundle(message)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return len(messages) / wall, len(messages) / cpu


def mllp_with_storage(messages: list[str], service: FhirService, connections: int) -> float:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start_listener(service, MllpConfig(port=0)))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    shares = [messages[i::connections] for i in range(connections)]

    def send(batch: list[str]) -> int:
        with MllpClient("127.0.0.1", port, timeout=60) as client:
            for message in batch:
                ack = client.send(message)
                if "|AA|" not in ack:
                    raise RuntimeError(f"not acknowledged AA: {ack!r}")
        return len(batch)

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=connections) as pool:
            sent = sum(pool.map(send, shares))
        elapsed = time.perf_counter() - start
    finally:
        asyncio.run_coroutine_threadsafe(_stop(server), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
    return sent / elapsed


async def _stop(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.gather(*others, return_exceptions=True)


def import_file(service: FhirService, path: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds to import `path` as `diatabase import` does, and the readings.

    The import runs on one thread, so its CPU time is what it costs on an idle core (the
    wall time grows when the machine is shared)."""
    importer = Importer(service, ImportOptions(patient="Patient/bench", timezone="Europe/Paris"))
    start, start_cpu = time.perf_counter(), time.process_time()
    report = importer.import_files([path])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    [file_report] = report.files
    if file_report.failed:
        raise RuntimeError(f"import failed: {file_report.failed}")
    return elapsed, cpu, file_report.readings


def median_import(folder: Path, csv_path: Path, runs: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of `runs` imports of `csv_path`, each into a fresh
    database, and the readings imported."""
    readings = 0

    def import_run(run: int) -> tuple[float, float]:
        nonlocal readings
        service = fresh_service(folder, f"import-{run}.db")
        try:
            seconds, cpu, readings = import_file(service, csv_path)
        finally:
            service.storage.close()
        return seconds, cpu

    seconds, cpu = median_of(runs, import_run)
    return seconds, cpu, readings


def median_of(runs: int, once: Callable[[int], tuple[float, float]]) -> tuple[float, float]:
    results = [once(run) for run in range(runs)]
    return (statistics.median(r[0] for r in results), statistics.median(r[1] for r in results))


# Stages of an import, each the cumulative time of the functions that do it.
STAGES = (
    ("mapping (mappers.device_csv.to_bundle)", ("device_csv/__init__.py", "to_bundle")),
    ("validation (ResourceService.validate)", ("service/resources.py", "validate")),
    ("index extraction (IndexExtractor.extract)", ("search/extract.py", "extract")),
    ("conditional-create searches (conditional_ids)",
     ("service/resources.py", "conditional_ids")),
    ("  of which parsing the search", ("service/fhir.py", "_parse_conditional")),
    ("  of which SQL (SqliteTransaction.search_ids)", ("storage/sqlite.py", "search_ids")),
    ("SQLite writes (SqliteTransaction.put)", ("storage/sqlite.py", "put")),
    ("reference rewriting (urn:uuid -> ids)", ("service/bundles.py", "_rewrite")),
    ("conditional references (Patient?identifier=)",
     ("service/bundles.py", "_resolve_conditional_references")),
    ("commit", ("storage/sqlite.py", "transaction")),
)


def profile_import(folder: Path, path: Path) -> list[tuple[str, float]]:
    service = fresh_service(folder, "profile.db")
    profiler = cProfile.Profile()
    profiler.enable()
    import_file(service, path)
    profiler.disable()
    service.storage.close()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = max(cumulative for (_, _, _, cumulative, _) in stats.values())
    rows = [("whole import (under the profiler)", total)]
    for label, (file_suffix, function) in STAGES:
        seconds = sum(
            value[3] for (filename, _, name), value in stats.items()
            if name == function and filename.endswith(file_suffix)
        )
        rows.append((label, seconds))
    return rows


SIZES = {"small": (30, 1, 1), "medium": (1000, 90, 3), "large": (5000, 90, 3)}
# HL7 v2 messages, days of CGM export, runs


def run(size: str = "small", db: str | None = None) -> list:
    """Mapped data stored in SQLite, for the report (fresh SQLite files; `db` is unused:
    the MLLP listener and the importer run in-process on their own databases)."""
    from bench.common import Result, own_peak_rss_mb

    count, days, runs = SIZES[size]
    connections = 4
    messages = [glucose_message(n) for n in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv_path = folder / "libre-export.csv"
        csv_path.write_bytes(generate_libre_export(days, 5).encode("utf-8"))

        def mllp_run(run: int) -> tuple[float, float]:
            service = fresh_service(folder, f"mllp-{run}.db")
            try:
                return mllp_with_storage(messages, service, connections), 0.0
            finally:
                service.storage.close()

        mllp_rate, _ = median_of(runs, mllp_run)
        seconds, cpu, readings = median_import(folder, csv_path, runs)
    return [
        Result("hl7v2 mllp+sqlite", f"ORU^R01 over MLLP, each stored as one transaction "
               f"before its ACK, {connections} connections, {count:,} messages of 7 resources",
               mllp_rate, "msg/s", peak_rss_mb=own_peak_rss_mb()),
        Result("csv import", f"FreeStyle Libre CSV, {days} days, {readings:,} readings imported "
               f"as `diatabase import` does in {seconds:.2f} s ({cpu:.2f} s CPU)",
               readings / seconds, "rows/s", peak_rss_mb=own_peak_rss_mb()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--reimport-days", type=int, default=0)
    args = parser.parse_args()

    messages = [glucose_message(n) for n in range(args.messages)]
    export = generate_libre_export(args.days, 5).encode("utf-8")
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv_path = folder / "libre-export.csv"
        csv_path.write_bytes(export)

        rate, cpu_rate = median_of(args.runs, lambda run: map_in_process(messages))
        rows.append(("HL7 v2 ORU^R01 mapped in-process", f"{rate:,.0f} msg/s",
                     f"{cpu_rate:,.0f} msg per CPU second"))

        def mllp_run(run: int) -> tuple[float, float]:
            service = fresh_service(folder, f"mllp-{run}.db")
            start_cpu = time.process_time()
            try:
                rate = mllp_with_storage(messages, service, args.connections)
            finally:
                service.storage.close()
            return rate, (time.process_time() - start_cpu) / len(messages)

        rate, cpu_each = median_of(args.runs, mllp_run)
        rows.append((f"HL7 v2 over MLLP + SQLite, {args.connections} connections",
                     f"{rate:,.0f} msg/s", f"{args.messages} messages of 7 resources; "
                     f"{cpu_each * 1000:.1f} ms CPU each (senders included)"))

        seconds, cpu, readings = median_import(folder, csv_path, args.runs)
        verdict = "meets < 10 s" if seconds < 10 else "MISSES the 10 s target"
        rows.append((f"Libre CSV, {args.days} days, imported into SQLite", f"{seconds:,.2f} s",
                     f"{readings:,} readings, {readings / seconds:,.0f} rows/s, {verdict}; "
                     f"{cpu:,.2f} s CPU"))

        if args.reimport_days:
            small = folder / "reimport.csv"
            small.write_bytes(generate_libre_export(args.reimport_days, 5).encode("utf-8"))
            service = fresh_service(folder, "reimport.db")
            import_file(service, small)
            again, again_cpu, count = import_file(service, small)
            service.storage.close()
            note = (f"{count:,} readings found, {count / again:,.0f} rows/s; "
                    f"{again_cpu:,.2f} s CPU")
            rows.append((f"Libre CSV, {args.reimport_days} days, imported AGAIN",
                         f"{again:,.2f} s", note))

        print(f"{'measure':<52} {'median':>14}  notes")
        print("-" * 110)
        for label, value, note in rows:
            print(f"{label:<52} {value:>14}  {note}")

        if args.profile:
            print()
            print(f"Where one import's time goes ({args.days} days; cProfile, cumulative seconds; "
                  "the profiler inflates Python-heavy stages):")
            for label, value in profile_import(folder, csv_path):
                print(f"  {label:<50} {value:>8.2f} s")


if __name__ == "__main__":
    main()
