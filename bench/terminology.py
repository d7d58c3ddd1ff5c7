"""Terminology over HTTP: `$validate-code` and `$lookup` requests/s with concurrent clients,
`$expand` with a filter over all of ICD-10 (p50/p99), and what canonical UCUM quantities
cost index extraction (µs per glucose Observation, without and with the canonicalizer).

The server runs in its own process (uvicorn on 127.0.0.1, fresh SQLite database), so the
clients do not share its interpreter; the clients are plain asyncio keep-alive HTTP/1.1
connections (an HTTP library would cost more CPU than the server on a small machine).
Each figure is the median of `--runs` runs.

    python bench/terminology.py [--seconds 1.5] [--clients 8] [--runs 3] [--expand 200]
                                [--workers 1] [--extract 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from bench.http_load import exchange

ROOT = Path(__file__).resolve().parent.parent
# The repository root first: this file's own name would otherwise shadow the package.
sys.path.insert(0, str(ROOT))

ICD10 = "http://hl7.org/fhir/sid/icd-10"
FILTERS = ["diabete", "type 2 diabetes", "E11", "insuffisance", "tuberculosis", "fracture",
           "neoplasm", "a", "coma", "pregnancy"]


# -- server --------------------------------------------------------------------------------


def serve(port: int, db: str, workers: int) -> None:
    import uvicorn

    # The app factory reads its settings from the environment, so that every worker
    # process builds the same app.
    os.environ["DIATABASE_DB"] = f"sqlite:///{db}"
    os.environ["DIATABASE_INSECURE_DEV"] = "1"  # the terminology work, not access control
    uvicorn.run("fhir_server.app:create_app", factory=True, host="127.0.0.1", port=port,
                workers=workers, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(db: str, workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--db", db, "--workers", str(workers)],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 180  # a loaded machine (60 s was seen to be too short)
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not start in 180 s")


# -- clients -------------------------------------------------------------------------------


def request_bytes(port: int, path: str, params: dict[str, str | int]) -> bytes:
    target = f"{path}?{urlencode(params)}"
    return (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: application/fhir+json\r\n\r\n").encode()


async def throughput(port: int, requests: list[bytes], clients: int, seconds: float) -> float:
    done = failed = 0
    stop = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal done, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        index = offset
        while time.perf_counter() < stop:
            status = await exchange(reader, writer, requests[index % len(requests)])
            index += clients
            done += 1
            failed += status != 200
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    if failed:
        raise RuntimeError(f"{failed} of {done} requests did not answer 200")
    return done / (time.perf_counter() - start)


async def latencies(port: int, requests: list[bytes]) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    timings = []
    for request in requests:
        start = time.perf_counter()
        status = await exchange(reader, writer, request)
        timings.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise RuntimeError(f"$expand answered {status}")
    writer.close()
    return timings


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# -- extraction ----------------------------------------------------------------------------


def extraction_us(n: int) -> tuple[float, float]:
    """µs per glucose Observation: IndexExtractor without, then with, canonical units."""
    from fhir_server.search.extract import IndexExtractor
    from fhir_server.search.registry import SearchParamRegistry
    from fhir_server.service.terminology import ServerTerminology

    rng = random.Random(3)
    observations = []
    for index in range(n):
        molar = index % 2 == 0
        value = round(rng.uniform(3, 15), 1) if molar else rng.randint(60, 280)
        unit = "mmol/L" if molar else "mg/dL"
        observations.append({
            "resourceType": "Observation", "id": f"o{index}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org",
                                 "code": "15074-8" if molar else "2339-0"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-05T08:40:00+01:00",
            "valueQuantity": {"value": value, "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit},
        })
    registry = SearchParamRegistry.default()
    terminology = ServerTerminology(None)
    extractors = [IndexExtractor(registry, canonicalize=c)
                  for c in (None, terminology.canonicalize)]
    for extractor in extractors:
        for resource in observations[:50]:  # compile and warm up
            extractor.extract(resource)
    # CPU time of this process, interleaved in blocks: other load on the machine then
    # weighs on both figures alike.
    spent = [0.0, 0.0]
    for block in range(0, n, 500):
        for which, extractor in enumerate(extractors):
            start = time.process_time()
            for resource in observations[block:block + 500]:
                extractor.extract(resource)
            spent[which] += time.process_time() - start
    return spent[0] / n * 1e6, spent[1] / n * 1e6


# -- report --------------------------------------------------------------------------------

SIZES = {"small": (0.5, 1, 20), "medium": (1.5, 3, 200), "large": (3.0, 3, 400)}
# seconds per throughput run, runs, $expand requests per run


def run(size: str = "small", db: str | None = None) -> list:
    """Terminology operations over HTTP for the report (a fresh SQLite server; `db` unused)."""
    from bench.common import Result, peak_rss_mb
    from terminology import TerminologyService

    seconds, runs, expand_count = SIZES[size]
    clients = 8
    codes = [c.code for c in TerminologyService().system(ICD10)]
    rng = random.Random(7)
    sample = [rng.choice(codes) for _ in range(500)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_server(os.path.join(tmp, "bench.db"), 1)
        try:
            validate = [request_bytes(port, "/CodeSystem/$validate-code",
                                      {"url": ICD10, "code": c}) for c in sample]
            lookup = [request_bytes(port, "/CodeSystem/$lookup",
                                    {"system": ICD10, "code": c, "displayLanguage": "fr"})
                      for c in sample]
            expand = [request_bytes(port, "/ValueSet/$expand",
                                    {"url": f"{ICD10}?fhir_vs", "filter": FILTERS[i % 10],
                                     "count": 20}) for i in range(expand_count)]
            asyncio.run(latencies(port, expand[:10]))  # build the ICD-10 expansion index
            for name, requests in (("$validate-code", validate), ("$lookup", lookup)):
                asyncio.run(throughput(port, requests, clients, min(0.5, seconds)))  # warm-up
                rates = [asyncio.run(throughput(port, requests, clients, seconds))
                         for _ in range(runs)]
                rows.append(Result(f"terminology {name}",
                                   f"CodeSystem/{name} ICD-10 over HTTP GET, {clients} clients, "
                                   f"median of {runs}", statistics.median(rates), "req/s",
                                   peak_rss_mb=peak_rss_mb(process.pid), backend="-"))
            timings = [t for _ in range(runs) for t in asyncio.run(latencies(port, expand))]
            rows.append(Result("terminology $expand",
                               f"ValueSet/$expand filter over all ICD-10, count=20, "
                               f"{len(timings)} requests, 1 client",
                               1000 / statistics.mean(timings), "req/s",
                               percentile(timings, 0.5), percentile(timings, 0.99),
                               peak_rss_mb(process.pid), backend="-"))
        finally:
            process.terminate()
            process.wait(timeout=10)
    return rows


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.5, help="per throughput run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--expand", type=int, default=200, help="$expand requests per run")
    parser.add_argument("--extract", type=int, default=5000, help="Observations to extract")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.db, args.workers)
        return

    from terminology import TerminologyService

    codes = [c.code for c in TerminologyService().system(ICD10)]
    rng = random.Random(7)
    sample = [rng.choice(codes) for _ in range(500)]

    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_server(os.path.join(tmp, "bench.db"), args.workers)
        try:
            validate = [request_bytes(port, "/CodeSystem/$validate-code",
                                      {"url": ICD10, "code": c}) for c in sample]
            lookup = [request_bytes(port, "/CodeSystem/$lookup",
                                    {"system": ICD10, "code": c, "displayLanguage": "fr"})
                      for c in sample]
            expand = [request_bytes(port, "/ValueSet/$expand",
                                    {"url": f"{ICD10}?fhir_vs", "filter": FILTERS[i % 10],
                                     "count": 20}) for i in range(args.expand)]
            asyncio.run(latencies(port, expand[:20]))  # build the ICD-10 expansion index
            rows = []
            for requests in (validate, lookup):  # warm up both paths before measuring
                asyncio.run(throughput(port, requests, args.clients, 0.5))
            for name, requests in (("$validate-code", validate), ("$lookup", lookup)):
                rates = [asyncio.run(throughput(port, requests, args.clients, args.seconds))
                         for _ in range(args.runs)]
                rows.append((f"CodeSystem/{name} (ICD-10, GET)",
                             f"{statistics.median(rates):,.0f} req/s",
                             f"{args.clients} clients"))
            runs = [asyncio.run(latencies(port, expand)) for _ in range(args.runs)]
            # The one-letter filter ("a": 6,000 of 12,500 codes) is the slow case; the
            # second row shows the others on their own.
            short = {i for i in range(len(expand)) if len(FILTERS[i % len(FILTERS)]) == 1}
            for label, keep in (("", lambda i: True), (", 2+ letters", lambda i: i not in short)):
                kept = [[t for i, t in enumerate(run) if keep(i)] for run in runs]
                rows.append((f"ValueSet/$expand filter{label}, all ICD-10, count=20",
                             f"p50 {statistics.median(percentile(k, 0.5) for k in kept):.2f} ms",
                             f"p99 {statistics.median(percentile(k, 0.99) for k in kept):.2f} ms"))
        finally:
            process.terminate()
            process.wait(timeout=10)

    extract_runs = [extraction_us(args.extract) for _ in range(args.runs)]
    before = statistics.median(r[0] for r in extract_runs)
    after = statistics.median(r[1] for r in extract_runs)
    rows.append(("index extraction per glucose Observation", f"{before:.1f} µs plain",
                 f"{after:.1f} µs with canonical units"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>18}  detail")
    print("-" * (width + 40))
    for name, result, detail in rows:
        print(f"{name:<{width}}  {result:>18}  {detail}")
    print(f"(median of {args.runs} runs; {os.cpu_count()} CPUs; {args.workers} server "
          f"worker(s); uvicorn HTTP: {http_implementation()})")


def http_implementation() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


if __name__ == "__main__":
    main()
