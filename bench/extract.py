"""Index extraction speed: µs per resource for typical diabetes resources.

Prints a table (not a pass/fail test). Usage: python bench/extract.py [--rounds N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from bench.common import Result, own_peak_rss_mb
from fhir_server.search.extract import IndexExtractor
from fhir_server.search.registry import SearchParamRegistry

GLUCOSE_OBSERVATION = {
    "resourceType": "Observation",
    "id": "glucose-1",
    "meta": {
        "lastUpdated": "2024-03-05T08:00:01.123Z",
        "profile": ["https://diatabase.org/fhir/StructureDefinition/BloodGlucose"],
        "source": "urn:device:meter-42",
    },
    "identifier": [{"system": "urn:device:meter-42:readings", "value": "000123"}],
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory",
                }
            ]
        }
    ],
    "code": {
        "coding": [
            {
                "system": "http://loinc.org",
                "code": "2339-0",
                "display": "Glucose [Mass/volume] in Blood",
            }
        ]
    },
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-03-05T08:00:00+01:00",
    "issued": "2024-03-05T08:00:01.123Z",
    "device": {"reference": "Device/meter-42"},
    "valueQuantity": {
        "value": 112,
        "unit": "mg/dL",
        "system": "http://unitsofmeasure.org",
        "code": "mg/dL",
    },
}

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"lastUpdated": "2024-03-05T08:00:01Z"},
    "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "279035121518989"}],
    "active": True,
    "name": [{"use": "official", "family": "Lefèvre", "given": ["Hélène", "Marie"]}],
    "telecom": [{"system": "phone", "value": "+33 6 12 34 56 78", "use": "mobile"}],
    "gender": "female",
    "birthDate": "1979-05-21",
    "address": [
        {"line": ["12 rue de la Paix"], "city": "Lyon", "postalCode": "69002", "country": "FR"}
    ],
    "generalPractitioner": [{"reference": "Practitioner/gp1"}],
}


def glucose_canonicalize(value, system, code, resource):
    # a stand-in for the terminology UCUM converter: mg/dL -> mmol/L for glucose
    if system == "http://unitsofmeasure.org" and code == "mg/dL":
        return [(value / 18.016, "mmol/L")]
    if system == "http://unitsofmeasure.org" and code == "mmol/L":
        return [(value, "mmol/L")]
    return []


def server_extractor(registry: SearchParamRegistry, fulltext: bool = False) -> IndexExtractor:
    """The extractor with the server's own quantity canonicalizer (UCUM conversions, the
    glucose molar mass) rather than the stand-in above; with `fulltext`, also the
    resource's words for `_text` / `_content`, as the server writes them."""
    from fhir_server.service.terminology import ServerTerminology

    return IndexExtractor(
        registry, canonicalize=ServerTerminology().canonicalize, fulltext=fulltext
    )


def measure(extractor: IndexExtractor, resource: dict, rounds: int) -> tuple[float, float, int]:
    """(best, median) CPU µs per resource over batches of distinct copies, and entry count.

    CPU time of this process, not wall time: the bench machine is shared. The best batch is
    the cost without interference; the median shows what a busy machine gives."""
    copies = [copy.deepcopy(resource) for _ in range(min(rounds, 1000))]
    entries = len(extractor.extract(resource))  # warm-up compiles the type
    batch = max(1, min(500, rounds // 10))
    timings = []
    for start_index in range(0, rounds, batch):
        start = time.process_time()
        for index in range(start_index, start_index + batch):
            extractor.extract(copies[index % len(copies)])
        timings.append((time.process_time() - start) / batch * 1e6)
    return min(timings), statistics.median(timings), entries


SIZES = {"small": 500, "medium": 5000, "large": 20000}  # rounds per resource


def run(size: str = "small", db: str | None = None) -> list[Result]:
    """Index extraction for the report (in-process; `db` is unused)."""
    extractor = IndexExtractor(SearchParamRegistry.default(), canonicalize=glucose_canonicalize)
    best, median, entries = measure(extractor, GLUCOSE_OBSERVATION, SIZES[size])
    best_patient, median_patient, _ = measure(extractor, PATIENT, SIZES[size])
    server = server_extractor(SearchParamRegistry.default())
    best_server, median_server, server_entries = measure(server, GLUCOSE_OBSERVATION, SIZES[size])
    with_text = server_extractor(SearchParamRegistry.default(), fulltext=True)
    best_text, median_text, _ = measure(with_text, GLUCOSE_OBSERVATION, SIZES[size])
    return [
        Result(
            "extract",
            f"index entries of a glucose Observation ({entries} entries), {SIZES[size]:,} "
            f"rounds: {median:.1f} µs median, {best:.1f} µs best; Patient {median_patient:.1f} µs",
            1e6 / median, "resources/s", peak_rss_mb=own_peak_rss_mb(), backend="-"),
        Result(
            "extract (server units)",
            f"the same Observation with the server's UCUM canonicalizer ({server_entries} "
            f"entries): {median_server:.1f} µs median, {best_server:.1f} µs best; with its "
            f"full-text words (as the server writes) {median_text:.1f} µs median",
            1e6 / median_server, "resources/s", peak_rss_mb=own_peak_rss_mb(), backend="-"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5000)
    arguments = parser.parse_args()
    registry = SearchParamRegistry.default()
    extractor = IndexExtractor(registry, canonicalize=glucose_canonicalize)
    rows = [
        ("glucose Observation", GLUCOSE_OBSERVATION),
        ("Patient", PATIENT),
    ]
    print(
        f"{'resource':<22}{'params':>7}{'entries':>8}{'best µs':>9}{'median µs':>11}"
        f"{'resources/s (best)':>20}"
    )
    server = server_extractor(registry)
    with_text = server_extractor(registry, fulltext=True)
    rows.append(("glucose Obs. (server)", GLUCOSE_OBSERVATION))
    rows.append(("glucose Obs. (+text)", GLUCOSE_OBSERVATION))
    rows.append(("Patient (+text)", PATIENT))
    for name, resource in rows:
        which = {"(server)": server, "(+text)": with_text}.get(name.split()[-1], extractor)
        best, median, entries = measure(which, resource, arguments.rounds)
        params = len(registry.for_type(resource["resourceType"]))
        print(f"{name:<22}{params:>7}{entries:>8}{best:>9.1f}{median:>11.1f}{1e6 / best:>20.0f}")


if __name__ == "__main__":
    main()
