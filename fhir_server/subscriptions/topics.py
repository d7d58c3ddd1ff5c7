"""The subscription topics this server ships (the R5 `SubscriptionTopic` model, served to
R4 clients through the Subscriptions backport IG as canonical URLs).

A topic says which writes are events: its resource type, whether creates or updates count,
and a trigger on the new version. The subscriber narrows it with filter criteria
(`Observation?patient=Patient/123&threshold=3.0|http://unitsofmeasure.org|mmol/L`): the
topic's own parameters (below, `Topic.parameters`) and any search parameter of the type.

- severe hypoglycaemia: a glucose reading (CGM, meter or laboratory, mg/dL or mmol/L)
  strictly below `threshold` (default 54 mg/dL, level 2 hypoglycaemia);
- prolonged hyperglycaemia: glucose readings all above `threshold` (default 250 mg/dL)
  for `duration` minutes (default 120): fires once per episode, at the reading that
  completes it; a reading at or below the threshold ends the episode (readings are taken
  in the order they are written);
- CGM data missing: no CGM reading received for `period` minutes (default 360) for a
  watched patient: a timer topic, checked by the delivery worker on its clock; fires once
  per gap, re-armed by the next reading;
- new HbA1c: an HbA1c Observation (LOINC 4548-4, 17856-6, 59261-8) created;
- new resource: every resource of the filter's type created (feeds, warehouses).

Every topic takes `patient` (Patient/x) and `group` (Group/x: the patient is a member) to
say whose data is watched; the missing-data topic requires one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fhir_server.clinical.glucose import CGM_CODES, LOINC, MG_PER_MMOL, reading_from

BASE = "http://diatabase.org/fhir/SubscriptionTopic"
HBA1C_CODES = frozenset({"4548-4", "17856-6", "59261-8"})
UCUM = "http://unitsofmeasure.org"
MG_DL = "mg/dL"
MMOL_L = "mmol/L"


@dataclass(frozen=True, slots=True)
class Threshold:
    """A glucose bound in the unit the subscriber gave it in."""

    value: float
    unit: str

    @property
    def mg_dl(self) -> float:
        return self.value * MG_PER_MMOL if self.unit == MMOL_L else self.value

    def above(self, value: float, unit: str) -> bool:
        """`value unit` is strictly above the bound (compared in the bound's own unit when
        the reading has it, so that 3.0 mmol/L is not above 3.0 mmol/L by rounding)."""
        return value > self.value if unit == self.unit else _mg(value, unit) > self.mg_dl

    def below(self, value: float, unit: str) -> bool:
        return value < self.value if unit == self.unit else _mg(value, unit) < self.mg_dl


def _mg(value: float, unit: str) -> float:
    return value * MG_PER_MMOL if unit == MMOL_L else value


def parse_threshold(text: str) -> Threshold:
    """`54`, `54||mg/dL`, `3.0|http://unitsofmeasure.org|mmol/L` (a search quantity)."""
    parts = text.split("|")
    if len(parts) not in (1, 3):
        raise ValueError(f"threshold is number or number|system|unit, not {text!r}")
    try:
        value = float(parts[0])
    except ValueError:
        raise ValueError(f"threshold is number or number|system|unit, not {text!r}") from None
    unit = parts[2] if len(parts) == 3 else MG_DL
    if len(parts) == 3 and parts[1] not in ("", UCUM):
        raise ValueError(f"threshold units are UCUM ({UCUM}), not {parts[1]!r}")
    if unit.lower() not in ("mg/dl", "mmol/l"):
        raise ValueError(f"threshold unit must be mg/dL or mmol/L, not {unit!r}")
    return Threshold(value, MG_DL if unit.lower() == "mg/dl" else MMOL_L)


def parse_minutes(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        raise ValueError(f"a duration in minutes, not {text!r}") from None
    if minutes <= 0:
        raise ValueError("a duration must be more than 0 minutes")
    return minutes * 60.0


@dataclass(frozen=True)
class Topic:
    url: str
    title: str
    resource_types: tuple[str, ...]  # empty: any type (the filter names it)
    interactions: tuple[str, ...]  # "create", "update"
    # the new version (and the subscription's parameters) -> is it an event?
    trigger: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None
    # parameter name -> (parser, default): topic parameters of the filter criteria
    parameters: dict[str, tuple[Callable[[str], Any], Any]] = field(default_factory=dict)
    kind: str = "event"  # "event", "episode" (stateful) or "timer"
    needs_patient: bool = False

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def is_hba1c(resource: dict[str, Any], params: dict[str, Any]) -> bool:
    return resource.get("status") in ("final", "amended", "corrected") and any(
        c.get("system") == LOINC and c.get("code") in HBA1C_CODES
        for c in (resource.get("code") or {}).get("coding") or ()
    )


def is_severe_hypo(resource: dict[str, Any], params: dict[str, Any]) -> bool:
    reading = reading_from(resource)
    return reading is not None and params["threshold"].below(reading.value, reading.unit)


def is_cgm(resource: dict[str, Any]) -> bool:
    return any(
        c.get("system") == LOINC and c.get("code") in CGM_CODES
        for c in (resource.get("code") or {}).get("coding") or ()
    )


SEVERE_HYPO = Topic(
    f"{BASE}/severe-hypoglycaemia",
    "Severe hypoglycaemia: a glucose reading below a threshold (default 54 mg/dL)",
    ("Observation",),
    ("create",),
    is_severe_hypo,
    {"threshold": (parse_threshold, Threshold(54.0, MG_DL))},
)
PROLONGED_HYPER = Topic(
    f"{BASE}/prolonged-hyperglycaemia",
    "Prolonged hyperglycaemia: glucose above a threshold (default 250 mg/dL) for a "
    "duration (default 120 minutes)",
    ("Observation",),
    ("create",),
    None,
    {
        "threshold": (parse_threshold, Threshold(250.0, MG_DL)),
        "duration": (parse_minutes, 120 * 60.0),
    },
    kind="episode",
)
CGM_MISSING = Topic(
    f"{BASE}/cgm-data-missing",
    "CGM data missing: no CGM reading received for a period (default 360 minutes)",
    ("Observation",),
    (),
    None,
    {"period": (parse_minutes, 360 * 60.0)},
    kind="timer",
    needs_patient=True,
)
NEW_HBA1C = Topic(
    f"{BASE}/new-hba1c",
    "A new HbA1c result",
    ("Observation",),
    ("create",),
    is_hba1c,
)
NEW_RESOURCE = Topic(
    f"{BASE}/new-resource",
    "Every new resource of a type (the filter criteria name the type)",
    (),
    ("create",),
    lambda resource, params: True,
)

TOPICS: dict[str, Topic] = {
    t.url: t for t in (SEVERE_HYPO, PROLONGED_HYPER, CGM_MISSING, NEW_HBA1C, NEW_RESOURCE)
}
