"""Library-level terminology figures (no HTTP): validate-code/s, lookup/s, and a filtered
$expand over all of ICD-10 (p50/p99). The HTTP benchmark (bench/terminology.py) is the
server's; this one shows what the library itself costs.

    python bench/terminology_lib.py [--n 2000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from terminology.service import TerminologyService
from terminology.uris import ATC, ICD10

FILTERS = ["diabete", "type 2 diabetes", "E11", "insuffisance", "tuberculosis", "fracture",
           "neoplasm", "a", "coma", "pregnancy"]


def rate(fn, calls: list) -> float:
    start = time.perf_counter()
    for args in calls:
        fn(*args)
    return len(calls) / (time.perf_counter() - start)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


SIZES = {"small": 200, "medium": 2000, "large": 10000}  # calls per measure


def run(size: str = "small", db: str | None = None) -> list:
    """The terminology library for the report (in-process; `db` is unused)."""
    from bench.common import Result, own_peak_rss_mb

    n = SIZES[size]
    started = time.perf_counter()
    service = TerminologyService()
    icd_codes = [c.code for c in service.system(ICD10)]
    service.system(ATC)
    load_ms = (time.perf_counter() - started) * 1000
    rng = random.Random(7)
    sample = [(ICD10, rng.choice(icd_codes)) for _ in range(n)]
    validate = rate(service.validate_code, sample)
    lookup = rate(service.lookup, sample)
    url = ICD10 + "?fhir_vs"
    service.expand(url, count=0)  # build the expansion index once
    timings: list[float] = []
    for index in range(n):
        start = time.perf_counter()
        service.expand(url, filter=FILTERS[index % len(FILTERS)], count=20)
        timings.append((time.perf_counter() - start) * 1000)
    return [
        Result("terminology-lib validate_code",
               f"ICD-10, {n:,} calls in-process (lookup {lookup:,.0f}/s; ICD-10 + CIM-10 + ATC "
               f"loaded in {load_ms:,.0f} ms)", validate, "calls/s",
               peak_rss_mb=own_peak_rss_mb(), backend="-"),
        Result("terminology-lib expand", f"filtered expand over ICD-10, count=20, {n:,} calls",
               1000 / statistics.mean(timings), "calls/s", percentile(timings, 0.5),
               percentile(timings, 0.99), own_peak_rss_mb(), backend="-"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="calls per measure")
    n = parser.parse_args().n

    started = time.perf_counter()
    service = TerminologyService()
    icd10 = service.system(ICD10)
    service.system(ATC)
    load_ms = (time.perf_counter() - started) * 1000
    rng = random.Random(7)
    icd_codes = [c.code for c in icd10]
    sample = [(ICD10, rng.choice(icd_codes)) for _ in range(n)]

    validate = rate(service.validate_code, sample)
    lookup = rate(service.lookup, sample)
    below = rate(service.descendants, [(ICD10, "IV")] * n)

    url = ICD10 + "?fhir_vs"
    service.expand(url, count=0)  # build the expansion index once
    timings: list[float] = []
    for index in range(n):
        text = FILTERS[index % len(FILTERS)]
        start = time.perf_counter()
        service.expand(url, filter=text, count=20)
        timings.append((time.perf_counter() - start) * 1000)

    rows = [
        ("load ICD-10 + CIM-10 + ATC (ms)", f"{load_ms:.0f}"),
        ("validate_code / s", f"{validate:,.0f}"),
        ("lookup / s", f"{lookup:,.0f}"),
        ("descendants(IV) / s (cached)", f"{below:,.0f}"),
        ("filtered expand over ICD-10, p50 (ms)", f"{statistics.median(timings):.2f}"),
        ("filtered expand over ICD-10, p99 (ms)", f"{percentile(timings, 0.99):.2f}"),
        ("filtered expand over ICD-10, max (ms)", f"{max(timings):.2f}"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'measure':<{width}}  value   (n={n}, {len(icd_codes)} ICD-10 codes)")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
