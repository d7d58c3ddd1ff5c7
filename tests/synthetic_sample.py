"""A small generated population shared by the synthetic generator tests (built once)."""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any

from fhir_server.synthetic import generate

# 40 patients over 14 days: about 15 CGM patients, 60,000 readings, under a second.
PATIENTS, DAYS, SEED = 40, 14, 7


@lru_cache(maxsize=4)
def sample(patients: int = PATIENTS, days: int = DAYS, seed: int = SEED) -> list[dict[str, Any]]:
    return list(generate(patients, days, seed))


def by_type(resources: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in resources:
        out[r["resourceType"]].append(r)
    return out


def loinc_of(resource: dict[str, Any]) -> str:
    return resource["code"]["coding"][0]["code"]


def patient_of(resource: dict[str, Any]) -> str:
    return resource["subject"]["reference"]
