"""Validation speed: base R4 schema + diabetes profiles, in-process, and its cost on ingest.

Prints tables (not a pass/fail test); every figure is the median of 3 runs, measured in
CPU time of this process (`time.process_time`), so that "per core" figures hold on a machine
shared with other work.
Usage: python bench/validate.py [--rounds N] [--bundle N]

1. one glucose Observation claiming BloodGlucose: base JSON schema alone, profile alone,
   and both (what a write runs: `ResourceService.validate`, operator rule included);
2. a transaction Bundle of N glucose Observations: every entry validated;
3. ingest of that Bundle through the transaction processor into SQLite, with profile
   enforcement on and off: the extra cost per resource.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bench.common import Result, own_peak_rss_mb, percentile  # noqa: E402
from fhir_server.model.validation import validate_structure  # noqa: E402
from fhir_server.service.fhir import FhirService  # noqa: E402
from fhir_server.service.terminology import ServerTerminology  # noqa: E402
from fhir_server.settings import Settings  # noqa: E402
from fhir_server.storage import open_storage  # noqa: E402
from profiles import BLOOD_GLUCOSE, ProfileValidator  # noqa: E402
from terminology import TerminologyService  # noqa: E402

GLUCOSE_RULE = ("Observation?code:in=https://diatabase.org/fhir/ValueSet/glucose-codes",
                BLOOD_GLUCOSE)


def glucose(index: int = 0) -> dict:
    return {
        "resourceType": "Observation",
        "meta": {"profile": [BLOOD_GLUCOSE]},
        "identifier": [{"system": "urn:device:meter-42:readings", "value": f"{index:06d}"}],
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0",
                             "display": "Glucose [Mass/volume] in Blood"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-05T08:00:00+01:00",
        "device": {"reference": "Device/meter-42"},
        "valueQuantity": {"value": 80 + index % 150, "unit": "mg/dL",
                          "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }


def median_of_3(run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(3))


def per_second(check: Callable[[dict], object], resources: list[dict]) -> float:
    def run() -> float:
        start = time.process_time()
        for resource in resources:
            check(resource)
        return len(resources) / (time.process_time() - start)

    check(resources[0])  # warm-up: compile the schema and the profile
    return median_of_3(run)


def transaction(size: int) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": glucose(i), "request": {"method": "POST", "url": "Observation"}}
            for i in range(size)
        ],
    }


def ingest_micros(terminology: ServerTerminology, size: int, enforce: bool) -> float:
    def run() -> float:
        with tempfile.TemporaryDirectory() as directory:
            db = f"sqlite:///{directory}/bench.db"
            settings = Settings(db_url=db, validate_profiles=enforce,
                                require_profiles=(GLUCOSE_RULE,))
            service = FhirService(open_storage(db), settings, terminology=terminology)
            try:
                processor = service.bundles("http://bench.local")
                processor.process(transaction(20), lambda url, items: (200, None))  # warm-up
                bundle = transaction(size)
                start = time.process_time()
                processor.process(bundle, lambda url, items: (200, None))
                return (time.process_time() - start) / size * 1e6
            finally:
                service.storage.close()

    return median_of_3(run)


SIZES = {"small": (300, 2, 2), "medium": (5000, 20, 14), "large": (20000, 40, 30)}
# glucose Observations validated; generated patients, days


def latencies_ms(check: Callable[[dict], object], resources: list[dict]) -> list[float]:
    timings = []
    for resource in resources:
        start = time.perf_counter()
        check(resource)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def orjson_parse_rate(documents: list[bytes]) -> float:
    """The floor: parsing the same documents, which every write does before validating."""
    def run() -> float:
        start = time.process_time()
        for document in documents:
            orjson.loads(document)
        return len(documents) / max(time.process_time() - start, 1e-9)

    return median_of_3(run)


def run(size: str = "small", db: str | None = None) -> list[Result]:
    """Validation for the report: in-process on a scratch SQLite service (`db` is unused)."""
    from fhir_server.synthetic import generate

    rounds, patients, days = SIZES[size]
    terminology = ServerTerminology(None)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/bench.db"
        service = FhirService(open_storage(url), Settings(db_url=url,
                              require_profiles=(GLUCOSE_RULE,)), terminology=terminology)
        try:
            check = service.resources.validate
            glucoses = [glucose(i) for i in range(rounds)]
            rate = per_second(check, glucoses)
            timings = latencies_ms(check, glucoses)
            floor = orjson_parse_rate([orjson.dumps(r) for r in glucoses])
            rows.append(Result(
                "validate", f"glucose Observation, R4 schema + BloodGlucose profile, "
                f"{rounds:,} resources (CPU time)", rate, "resources/s",
                percentile(timings, 50), percentile(timings, 99), own_peak_rss_mb(),
                f"orjson parse {floor:,.0f} docs/s", "-"))
            sample = [r for r in generate(patients, days, seed=3) if r.get("meta")]
            rate = per_second(check, sample)
            timings = latencies_ms(check, sample)
            floor = orjson_parse_rate([orjson.dumps(r) for r in sample])
            rows.append(Result(
                "validate generated", f"{len(sample):,} generated resources claiming a "
                f"diabetes profile ({patients} patients x {days} days), schema + profiles",
                rate, "resources/s", percentile(timings, 50), percentile(timings, 99),
                own_peak_rss_mb(), f"orjson parse {floor:,.0f} docs/s", "-"))
        finally:
            service.storage.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--bundle", type=int, default=1000)
    arguments = parser.parse_args()

    terminology = ServerTerminology(None)  # the server's terminology, as FhirService wants
    validator = ProfileValidator(TerminologyService())
    with tempfile.TemporaryDirectory() as directory:
        db = f"sqlite:///{directory}/bench.db"
        service = FhirService(open_storage(db), Settings(db_url=db,
                              require_profiles=(GLUCOSE_RULE,)), terminology=terminology)
        copies = [copy.deepcopy(glucose(i)) for i in range(min(arguments.rounds, 1000))]
        resources = (copies * (arguments.rounds // len(copies) + 1))[: arguments.rounds]
        rows = [
            ("base schema only", per_second(validate_structure, resources)),
            ("BloodGlucose profile only", per_second(validator.validate, resources)),
            ("schema + profile (write path)", per_second(service.resources.validate, resources)),
        ]
        bundle = transaction(arguments.bundle)
        entries = [entry["resource"] for entry in bundle["entry"]]
        rows.append(
            (f"{arguments.bundle}-entry Bundle, per entry",
             per_second(service.resources.validate, entries))
        )
        service.storage.close()

    print("glucose Observation validation (median of 3 runs, CPU time of one core)")
    print(f"{'what':<36}{'validations/s':>15}{'µs each':>10}")
    for name, rate in rows:
        print(f"{name:<36}{rate:>15,.0f}{1e6 / rate:>10.1f}")
    bundle_rate = rows[-1][1]
    milliseconds = arguments.bundle / bundle_rate * 1e3
    print(f"{arguments.bundle}-entry Bundle validated in {milliseconds:.1f} ms")

    on = ingest_micros(terminology, arguments.bundle, enforce=True)
    off = ingest_micros(terminology, arguments.bundle, enforce=False)
    print()
    print(f"ingest of a {arguments.bundle}-entry transaction into SQLite (median of 3 runs)")
    print(f"{'enforcement':<36}{'µs/resource':>15}{'resources/s':>12}")
    print(f"{'off (schema only)':<36}{off:>15.1f}{1e6 / off:>12,.0f}")
    print(f"{'on (schema + BloodGlucose)':<36}{on:>15.1f}{1e6 / on:>12,.0f}")
    print(f"{'extra cost per resource':<36}{on - off:>15.1f}")


if __name__ == "__main__":
    main()
