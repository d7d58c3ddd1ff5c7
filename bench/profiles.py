"""Profile validation speed: µs of CPU per resource, per profile, in-process.

    python bench/profiles.py [--days 7] [--patients 3] [--runs 5]

What a write runs after the base structure check: `ProfileValidator.validate(resource)`
on the profiles the resource claims. Resources are the ones the server receives:
CGMSensorReading Observations from a generated FreeStyle Libre export mapped by
`mappers.device_csv` (bundle-local `urn:uuid:` references rewritten to `Type/id`, as a
transaction does before validation), and every profiled resource of the synthetic cohort
(`fhir_server.synthetic`: BloodGlucose, HbA1c, CGM readings, DiabetesPatient,
DiabetesCondition, DiabetesMedicationStatement). Each figure is the median of `--runs`
runs of `time.process_time()` over all resources of that profile (the machine is shared),
each run with a new validator (see `microseconds_per_resource`).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mappers_csv import generate_libre_export  # noqa: E402
from fhir_server.synthetic import generate  # noqa: E402
from mappers.device_csv import to_bundle  # noqa: E402
from profiles import ProfileValidator  # noqa: E402
from terminology import TerminologyService  # noqa: E402

TERMINOLOGY = TerminologyService.default()


def _rewrite_local_references(value: Any, ids: dict[str, str]) -> Any:
    """`urn:uuid:` references to `Type/id`, as the transaction processor does."""
    if isinstance(value, dict):
        return {
            k: ids.get(v, v) if k == "reference" and isinstance(v, str)
            else _rewrite_local_references(v, ids)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_local_references(v, ids) for v in value]
    return value


def libre_observations(days: int) -> list[dict]:
    bundle = to_bundle(generate_libre_export(days, 5), patient="Patient/p1").bundle
    ids = {
        entry["fullUrl"]: f"{entry['resource']['resourceType']}/r{n}"
        for n, entry in enumerate(bundle["entry"])
    }
    resources = [_rewrite_local_references(e["resource"], ids) for e in bundle["entry"]]
    return [r for r in resources if ProfileValidator.claimed_profiles(r)]


def synthetic_resources(patients: int, days: int) -> list[dict]:
    resources = generate(patients, days, seed=1, end_date=date(2025, 6, 30))
    return [r for r in resources if ProfileValidator.claimed_profiles(r)]


def by_profile(resources: list[dict], source: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for resource in resources:
        names = "+".join(p.rsplit("/", 1)[-1] for p in ProfileValidator.claimed_profiles(resource))
        groups[f"{names} ({source})"].append(resource)
    return groups


def microseconds_per_resource(resources: list[dict], runs: int) -> tuple[float, int]:
    """Median µs per resource over `runs` runs, and the number of issues found (a check).

    Each run validates every resource once, as an import does, with a new validator (built
    and warmed on one resource outside the timing): memoized verdicts are earned within the
    run, never carried over from the previous one.
    """
    figures, issues = [], 0
    for _ in range(runs):
        validator = ProfileValidator(TERMINOLOGY)
        validator.validate(resources[0])
        gc.collect()  # the resources just built are old now: no full collection in the timing
        start = time.process_time()
        found = [validator.validate(resource) for resource in resources[1:]]
        figures.append((time.process_time() - start) / max(len(resources) - 1, 1) * 1e6)
        issues = sum(map(len, found))
    return statistics.median(figures), issues


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=7, help="days of the Libre export")
    parser.add_argument("--patients", type=int, default=60, help="synthetic patients")
    parser.add_argument("--synthetic-days", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    groups = by_profile(libre_observations(args.days), "Libre CSV")
    groups.update(by_profile(synthetic_resources(args.patients, args.synthetic_days), "synthetic"))
    print(f"{'profile (source)':<48} {'resources':>9} {'µs/resource':>12} {'issues':>7}")
    for name, resources in sorted(groups.items()):
        micros, issues = microseconds_per_resource(resources, args.runs)
        print(f"{name:<48} {len(resources):>9} {micros:>12.1f} {issues:>7}")


if __name__ == "__main__":
    main()
