"""Search latency and throughput on a CGM-sized SQLite database, over HTTP.

Builds (once, cached under bench/out/ by size) a database of P patients, each with R CGM
readings (LOINC 99504-3, every 5 minutes) plus a few lab results and 1-2 Conditions,
written in-process through the storage layer with the real index extractor (no HTTP), then
starts a real server (a subprocess, so that clients and server do not share a GIL) and
measures, with several concurrent HTTP clients:

  (a) Observation?patient=X&code=http://loinc.org|99504-3&date=ge..&date=lt..&_count=100
  (b) Condition?code=...&_include=Condition:subject
  (c) Patient?name=...
  (d) Observation?code=http://loinc.org|99504-3&_summary=count (matches counted per second)
  (e) paging through all of one patient's Observations (_count=1000, following `next`)
  (f) Observation?patient=X&value-quantity=gt13.9|UCUM|mmol/L&_count=100 (unit conversion)
  (g) Patient?_content=<family name> (full-text search)

Prints ingest speed (indexing on), database size per resource, and p50/p99 latency and
requests/s per query. Not a pass/fail test.

    python bench/search.py                  # --size small: 20 x 500 readings, < 1 minute
    python bench/search.py --size 100k      # 100 patients x 1,000 readings
    python bench/search.py --size 1m        # 100 patients x 10,000 readings (slow build)
    python bench/search.py --size 10m       # 100 patients x a year of CGM

`run(size, db)` gives bench/run.py the same figures as Result rows (small, 1m, 10m).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import serve  # noqa: E402
from fhir_server.search import fast_dates  # noqa: E402
from fhir_server.search.extract import IndexExtractor  # noqa: E402
from fhir_server.search.types import (  # noqa: E402
    CompositeEntry,
    DateEntry,
    QuantityEntry,
    TokenEntry,
)
from fhir_server.storage.base import instant  # noqa: E402
from fhir_server.storage.sqlite import SqliteStorage  # noqa: E402

OUT = Path(__file__).parent / "out"
SIZES = {
    "small": (20, 500),
    "100k": (100, 1_000),
    "1m": (100, 10_000),
    "10m": (100, 105_000),  # a year of CGM for 100 patients
}
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"
START = 1_704_067_200.0  # 2024-01-01T00:00:00Z: first reading
STEP = 300.0  # CGM: one reading every 5 minutes
CHUNK = 5_000
FAMILIES = [
    "Martin",
    "Bernard",
    "Thomas",
    "Petit",
    "Robert",
    "Richard",
    "Durand",
    "Dubois",
    "Moreau",
    "Laurent",
    "Simon",
    "Michel",
    "Lefèvre",
    "Leroy",
    "Roux",
    "David",
]
GIVEN = ["Hélène", "Éloïse", "Jean", "Marc", "Anaïs", "Loïc", "Chloé", "Noël", "Zoé", "Paul"]
LABS = [("4548-4", "%", 7.2), ("2339-0", "mg/dL", 140.0), ("2345-7", "mg/dL", 120.0)]


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def patient(i: int) -> dict:
    return {
        "resourceType": "Patient",
        "id": f"p{i}",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": f"{1_000_000 + i}"}],
        "name": [{"family": FAMILIES[i % len(FAMILIES)], "given": [GIVEN[i % len(GIVEN)]]}],
        "gender": "female" if i % 2 else "male",
        "birthDate": f"{1940 + i % 60}-0{1 + i % 9}-1{i % 10}",
    }


def conditions(i: int) -> list[dict]:
    codes = ["E11.9"] if i % 3 else ["E10.9", "E11.65"]
    return [
        {
            "resourceType": "Condition",
            "id": f"c{i}-{n}",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"coding": [{"system": ICD10, "code": code}]},
            "subject": {"reference": f"Patient/p{i}"},
            "onsetDateTime": f"{2000 + i % 20}",
        }
        for n, code in enumerate(codes)
    ]


def reading(i: int, n: int, rng: random.Random) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"g{i}-{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "99504-3"}]},
        "subject": {"reference": f"Patient/p{i}"},
        "device": {"reference": f"Device/cgm{i}"},
        "effectiveDateTime": iso(START + n * STEP),
        "valueQuantity": {
            "value": round(rng.gauss(140, 40), 0),
            "unit": "mg/dL",
            "system": UCUM,
            "code": "mg/dL",
        },
    }


def lab(i: int, n: int, readings: int) -> dict:
    code, unit, value = LABS[n % len(LABS)]
    return {
        "resourceType": "Observation",
        "id": f"l{i}-{n}",
        "status": "final",
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/p{i}"},
        "effectiveDateTime": iso(START + (n + 0.5) * readings * STEP / 10),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def resources(patients: int, readings: int):
    rng = random.Random(42)
    for i in range(patients):
        yield patient(i)
        yield from conditions(i)
    for i in range(patients):
        for n in range(10):
            yield lab(i, n, readings)
        for n in range(readings):
            yield reading(i, n, rng)


def patched(
    template: list,
    rid: str,
    low: float,
    value: float,
    updated: tuple[float, float],
    canonical: dict[str | None, float],
) -> list:
    """A CGM reading's index entries from another reading's: only the id, the instants, the
    value and its canonical forms (`canonical`: unit -> value, computed by the server's own
    converter) differ (checked against the real extractor every CHECK_EVERY readings)."""

    def quantity(entry: QuantityEntry) -> QuantityEntry:
        return entry._replace(
            value=value, canonical_value=canonical.get(entry.canonical_unit)
        )

    out = []
    for entry in template:
        kind = type(entry)
        if kind is TokenEntry and entry.param == "_id":
            entry = entry._replace(code=rid)
        elif kind is DateEntry and entry.param == "_lastUpdated":
            entry = entry._replace(low=updated[0], high=updated[1])
        elif kind is DateEntry:
            entry = entry._replace(low=low, high=low + 1.0)
        elif kind is QuantityEntry:
            entry = quantity(entry)
        elif kind is CompositeEntry:
            parts = tuple(quantity(p) if type(p) is QuantityEntry else p for p in entry.parts)
            entry = entry._replace(parts=parts)
        out.append(entry)
    return out


CHECK_EVERY = 997


def server_extractor(storage: SqliteStorage) -> IndexExtractor:
    """The extractor the server itself uses on this storage (canonical units, rows shared
    between parameters), so that the database is the one the server would have written."""
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings

    extractor = FhirService(storage, Settings(db_url=f"sqlite:///{storage.path}")).extractor
    extractor.extract(reading(0, 0, random.Random(0)))  # loads the unit tables: not timed
    return extractor


def build(path: Path, patients: int, readings: int, fast: bool) -> dict:
    """Write everything through SqliteStorage transactions with index entries from the real
    extractor; with `fast`, CGM readings reuse their patient's first reading's entries,
    patched (and verified against the extractor on a sample)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    storage = SqliteStorage(str(path))
    extractor = server_extractor(storage)
    started = time.perf_counter()
    total = extracted = patched_count = 0
    extract_seconds = 0.0
    batch: list[dict] = []
    templates: dict[str, list] = {}

    def entries_of(resource: dict, now: float) -> list:
        nonlocal extracted, extract_seconds, patched_count
        subject = resource.get("subject", {}).get("reference", "")
        is_reading = resource["id"].startswith("g")
        if fast and is_reading and subject in templates:
            low = fast_dates.date_period(resource["effectiveDateTime"])
            updated = fast_dates.date_period(resource["meta"]["lastUpdated"])
            quantity = resource["valueQuantity"]
            forms = extractor.canonicalize(quantity["value"], UCUM, quantity["code"], resource)
            entries = patched(
                templates[subject],
                resource["id"],
                low[0],
                quantity["value"],
                updated,
                {unit: float(amount) for amount, unit in forms},
            )
            patched_count += 1
            if patched_count % CHECK_EVERY == 0:
                assert entries == extractor.extract(resource), resource["id"]
            return entries
        t0 = time.perf_counter()
        entries = extractor.extract(resource)
        extract_seconds += time.perf_counter() - t0
        extracted += 1
        if is_reading:
            templates[subject] = entries
        return entries

    def flush() -> None:
        with storage.transaction() as tx:
            for resource in batch:
                now = time.time()
                resource["meta"] = {"versionId": "1", "lastUpdated": instant(now)}
                tx.put(
                    resource["resourceType"],
                    resource["id"],
                    1,
                    now,
                    orjson.dumps(resource),
                    entries_of(resource, now),
                    "PUT",
                )
        batch.clear()

    for resource in resources(patients, readings):
        batch.append(resource)
        total += 1
        if len(batch) >= CHUNK:
            flush()
            if total % 50_000 < CHUNK:
                rate = total / (time.perf_counter() - started)
                print(f"  {total:>9,} resources, {rate:,.0f}/s", flush=True)
    if batch:
        flush()
    seconds = time.perf_counter() - started
    storage._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    storage._writer.execute("ANALYZE")
    storage.close()
    return {
        "resources": total,
        "seconds": seconds,
        "rate": total / seconds,
        "fast": fast,
        "extract_rate": extracted / extract_seconds if extract_seconds else None,
    }


def measure_ingest(count: int) -> float:
    """Resources/s for `count` fresh resources (patients, conditions, labs, readings) through
    the real extractor and SqliteStorage.put, 500 per transaction, into a new database."""
    with tempfile.TemporaryDirectory() as tmp:
        storage = SqliteStorage(str(Path(tmp) / "ingest.db"))
        extractor = server_extractor(storage)
        items = list(itertools.islice(resources(20, count), count))
        started = time.perf_counter()
        for start in range(0, len(items), 500):
            with storage.transaction() as tx:
                for resource in items[start : start + 500]:
                    now = time.time()
                    resource["meta"] = {"versionId": "1", "lastUpdated": instant(now)}
                    raw = orjson.dumps(resource)
                    entries = extractor.extract(resource)
                    tx.put(resource["resourceType"], resource["id"], 1, now, raw, entries, "PUT")
        seconds = time.perf_counter() - started
        storage.close()
    return len(items) / seconds


def query_a_params(rng: random.Random, patients: int, readings: int) -> str:
    """Query (a): one random patient's CGM readings of one random day (no leading `?`)."""
    days = readings * STEP / 86400
    day = START + int(rng.random() * max(days - 1, 0)) * 86400
    return (
        f"patient=p{rng.randrange(patients)}&code={LOINC}|99504-3"
        f"&date=ge{iso(day)}&date=lt{iso(day + 86400)}&_count=100"
    )


def in_process_a(path: Path, patients: int, readings: int, count: int = 200) -> tuple[float, float]:
    """p50/p99 ms of query (a) through FhirService.search_bundle, without HTTP."""
    from urllib.parse import parse_qsl

    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage

    service = FhirService(open_storage(f"sqlite:///{path}"), Settings())
    rng = random.Random(1)
    times = []
    for _ in range(count):
        query = query_a_params(rng, patients, readings)
        t0 = time.perf_counter()
        service.search_bundle("Observation", parse_qsl(query), "http://bench", False)
        times.append((time.perf_counter() - t0) * 1000)
    service.storage.close()
    times = sorted(times[count // 5 :])  # the first ones warm the page cache
    return statistics.median(times), times[int(len(times) * 0.99)]


def timed_gets(url: str, make_path, requests: int, clients: int, check=None) -> dict:
    """`requests` GETs of make_path(rng) spread over `clients` client processes; latencies
    in ms. Processes, as separate apps would be: threads of one process would queue on its
    interpreter lock, and the load generator's own waits would count as server latency."""
    context = multiprocessing.get_context("fork")  # make_path may be a closure
    pipes, processes = [], []
    for seed in range(clients):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_client, args=(send, url, make_path, requests // clients, seed, check)
        )
        process.start()
        send.close()
        pipes.append(receive)
        processes.append(process)
    results = [pipe.recv() for pipe in pipes]
    for process in processes:
        process.join()
    failures = [r["error"] for r in results if "error" in r]
    if failures:
        raise RuntimeError(failures[0])
    latencies = sorted(t for r in results for t in r["latencies"])
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "n": len(latencies),
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "rps": len(latencies) / wall,
        "extra": [e for r in results for e in r["extra"]],
    }


def query_f(rng: random.Random, patients: int) -> str:
    """(f): one patient's readings above 13.9 mmol/L (stored in mg/dL: the UCUM conversion
    and the glucose molar mass meet in the canonical index)."""
    return (
        f"/Observation?patient=p{rng.randrange(patients)}"
        f"&value-quantity=gt13.9|{UCUM}|mmol/L&_count=100"
    )


def _client(send, url: str, make_path, count: int, seed: int, check) -> None:
    """One client process of timed_gets: its latencies (and check results) go back through
    the pipe."""
    rng = random.Random(seed)
    latencies, extra = [], []
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            start = time.perf_counter()
            for _ in range(count):
                path = make_path(rng)
                t0 = time.perf_counter()
                response = http.get(path)
                latencies.append((time.perf_counter() - t0) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
                result = check(response.json()) if check else None
                if result is not None:
                    extra.append(result)
            end = time.perf_counter()
        send.send({"latencies": latencies, "extra": extra, "start": start, "end": end})
    except Exception as exc:  # reported by the parent
        send.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        send.close()


def walk_patient(url: str, patients: int, clients: int, walks: int) -> dict:
    """(e): every Observation of one patient, page by page; time per complete walk."""
    times, counts = [], []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as http:
            for _ in range(max(1, walks // clients)):
                link = f"{url}/Observation?patient=p{rng.randrange(patients)}&_count=1000"
                t0 = time.perf_counter()
                seen = 0
                while link:
                    bundle = http.get(link).json()
                    seen += sum(1 for e in bundle["entry"] if e["search"]["mode"] == "match")
                    link = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
                with lock:
                    times.append((time.perf_counter() - t0) * 1000)
                    counts.append(seen)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return {"walk_ms_p50": statistics.median(times), "resources": counts[0]}


def cached_database(size: str, rebuild: bool = False,
                    fast: bool = True) -> tuple[Path, dict[str, Any], bool]:
    """The database of `size` under bench/out/, built on first use (a 10 M build takes over
    an hour): its path, its build figures, and whether it was built by this call."""
    patients, readings = SIZES[size]
    OUT.mkdir(exist_ok=True)
    path = OUT / f"search-{size}.db"
    meta_path = OUT / f"search-{size}.json"
    if not rebuild and path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text()), False
    print(f"building {path} ({patients} patients x {readings} readings) ...", flush=True)
    path.unlink(missing_ok=True)
    meta = build(path, patients, readings, fast=fast)
    meta["built"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    meta_path.write_text(json.dumps(meta))
    return path, meta, True


REPORT_SIZES = {  # bench.run size -> this module's size, requests per query kind, clients
    "small": ("small", 40, 4),
    "medium": ("1m", 400, 4),
    "large": ("10m", 400, 4),
}


def run(size: str = "small", db: str | None = None) -> list:
    """Search figures for bench/run.py: the same cached database and queries as `main`
    (SQLite only: `db` is unused, this bench writes through SqliteStorage directly)."""
    from bench.common import Result

    own_size, requests, clients = REPORT_SIZES[size]
    patients, readings = SIZES[own_size]
    rows = []
    path, meta, built_now = cached_database(own_size)
    per_resource = path.stat().st_size / meta["resources"]
    fresh = measure_ingest(1_000 if size == "small" else 5_000)
    when = "" if built_now else f" (build of {meta.get('built', 'an earlier run')}, cached)"
    rows.append(
        Result(
            "search build",
            f"{meta['resources']:,} CGM-heavy resources through SqliteStorage "
            f"with patched index entries{when}, {per_resource:,.0f} bytes/resource on disk",
            meta["rate"],
            "resources/s",
            floor=f"every resource extracted {fresh:,.0f}/s",
        )
    )
    p50, p99 = in_process_a(path, patients, readings, 50 if size == "small" else 200)
    with serve(f"sqlite:///{path}") as server:
        url = server.url

        def query_a(rng: random.Random) -> str:
            return f"/Observation?{query_a_params(rng, patients, readings)}"

        kinds = {
            "(a) patient+code+date, _count=100": query_a,
            "(b) Condition code + _include subject": lambda rng: (
                f"/Condition?code={ICD10}|E11.9&_include=Condition:subject"
            ),
            "(c) Patient?name=": lambda rng: f"/Patient?name={rng.choice(FAMILIES)[:4]}",
            "(d) _summary=count over one code": lambda rng: (
                f"/Observation?code={LOINC}|99504-3&_summary=count"
            ),
            "(f) patient + value-quantity in mmol/L": lambda rng: query_f(rng, patients),
            "(g) Patient?_content=": lambda rng: f"/Patient?_content={rng.choice(FAMILIES)}",
        }
        for name, make in kinds.items():
            timed_gets(url, make, clients * 2, clients)  # warm-up
            result = timed_gets(url, make, requests, clients)
            note = f"; in-process p50 {p50:.2f} ms, p99 {p99:.2f} ms" if name[1] == "a" else ""
            rows.append(
                Result(
                    f"search {name[:3]}",
                    f"{name[4:]}, {requests} requests, {clients} clients, "
                    f"{meta['resources']:,} resources{note}",
                    result["rps"],
                    "req/s",
                    result["p50"],
                    result["p99"],
                    server.peak_rss_mb(),
                )
            )
        walk = walk_patient(url, patients, 1, 1 if size == "small" else 3)
        rows.append(
            Result(
                "search (e)",
                f"all {walk['resources']:,} Observations of one patient, "
                "_count=1000, following next (ms per walk in p50)",
                walk["resources"] / walk["walk_ms_p50"] * 1000,
                "resources/s",
                walk["walk_ms_p50"],
                None,
                server.peak_rss_mb(),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--requests", type=int, default=400, help="per query kind")
    parser.add_argument("--rebuild", action="store_true", help="ignore the cached database")
    parser.add_argument(
        "--full-extract",
        action="store_true",
        help="run the extractor on every reading (default: on each patient's first, then "
        "patch id/time/value, verified on a sample): slower build, same database",
    )
    args = parser.parse_args()
    patients, readings = SIZES[args.size]
    path, meta, built_now = cached_database(args.size, args.rebuild, not args.full_extract)
    if not built_now:
        print(f"using cached {path}")
    size = path.stat().st_size
    observations = patients * (readings + 10)
    how = "patched CGM entries" if meta.get("fast") else "extractor on every resource"
    print(
        f"ingest (in-process, indexing on, {how}): {meta['rate']:,.0f} resources/s "
        f"({meta['resources']:,} in {meta['seconds']:.0f} s)"
    )
    if meta.get("extract_rate"):
        print(f"index extraction alone: {meta['extract_rate']:,.0f} resources/s")
    rate = measure_ingest(5_000)
    print(f"ingest, every resource extracted (5,000 into a new database): {rate:,.0f}/s")
    print(
        f"database: {size / 1e6:,.0f} MB, {size / meta['resources']:,.0f} bytes/resource; "
        f"{observations:,} Observations"
    )

    p50, p99 = in_process_a(path, patients, readings)
    print(f"(a) in-process (FhirService, no HTTP): p50 {p50:.2f} ms, p99 {p99:.2f} ms")

    with serve(f"sqlite:///{path}", args.workers) as server:
        url = server.url

        def query_a(rng: random.Random) -> str:
            return f"/Observation?{query_a_params(rng, patients, readings)}"

        kinds = {
            "(a) patient+code+date, _count=100": (query_a, None),
            "(b) Condition code + _include subject": (
                lambda rng: f"/Condition?code={ICD10}|E11.9&_include=Condition:subject",
                None,
            ),
            "(c) Patient?name=": (lambda rng: f"/Patient?name={rng.choice(FAMILIES)[:4]}", None),
            "(d) _summary=count over one code": (
                lambda rng: f"/Observation?code={LOINC}|99504-3&_summary=count",
                lambda bundle: bundle["total"],
            ),
            "(f) patient + value-quantity in mmol/L": (lambda rng: query_f(rng, patients), None),
            "(g) Patient?_content=": (
                lambda rng: f"/Patient?_content={rng.choice(FAMILIES)}", None
            ),
        }
        n = args.clients
        print(
            f"\nlatency: 1 client, {args.requests // 2} requests; throughput: {n} clients, "
            f"{args.requests} requests"
        )
        print(
            f"{'query':40} {'p50 ms':>7} {'p99 ms':>7} | {f'{n}cl p50':>8} {f'{n}cl p99':>8} "
            f"{'req/s':>6}  note"
        )
        for name, (make, check) in kinds.items():
            timed_gets(url, make, n * 2, n, check)  # warm-up
            single = timed_gets(url, make, args.requests // 2, 1, check)
            result = timed_gets(url, make, args.requests, n, check)
            note = ""
            if check:
                matches = single["extra"][0]
                note = f"{matches:,} matches, {matches / (single['p50'] / 1000):,.0f} matches/s"
            print(
                f"{name:40} {single['p50']:7.1f} {single['p99']:7.1f} | {result['p50']:8.1f} "
                f"{result['p99']:8.1f} {result['rps']:6.0f}  {note}"
            )
        walk = walk_patient(url, patients, 1, 3)
        print(
            f"{'(e) all of one patient, _count=1000':40} {walk['walk_ms_p50']:7.0f} ms per walk "
            f"of {walk['resources']:,} Observations (1 client)"
        )


if __name__ == "__main__":
    main()
