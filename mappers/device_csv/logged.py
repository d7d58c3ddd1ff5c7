"""Templates of the logged treatments and events exports carry beside glucose: insulin
doses, carbohydrates, exercise, notes (resources from mappers/treatments.py).

Each template's value is what varies per row: insulin `(dose or None, note or None)`,
carbohydrates `grams`, exercise `(minutes or None, intensity or None)`, an event its text
(or None).
"""

from __future__ import annotations

from typing import Any

from mappers import treatments

from .common import EventTemplate, Subject
from .resources import DeviceInfo


def insulin(kind: str, subject: Subject, source: DeviceInfo | None,
            device: DeviceInfo | None = None) -> EventTemplate:
    def build(identifier: tuple[str, str], subject_ref: str, effective: str,
              device_ref: str | None, value: tuple[Any, str | None]) -> dict[str, Any]:
        dose, note = value
        return treatments.insulin_administration(
            identifier=identifier, subject=subject_ref, kind=kind, effective=effective,
            dose=dose, device=device_ref, note=note)

    code = treatments.INSULINS[kind][0]
    return EventTemplate(f"insulin-{kind}", code, subject, build, source, device)


def carbohydrates(subject: Subject, source: DeviceInfo | None) -> EventTemplate:
    def build(identifier: tuple[str, str], subject_ref: str, effective: str,
              device_ref: str | None, grams: Any) -> dict[str, Any]:
        return treatments.carbohydrates(identifier=identifier, subject=subject_ref,
                                        effective=effective, grams=grams, device=device_ref)

    return EventTemplate("carbs", treatments.CARBS_CODE[0], subject, build, source)


def exercise(subject: Subject, source: DeviceInfo | None) -> EventTemplate:
    def build(identifier: tuple[str, str], subject_ref: str, effective: str,
              device_ref: str | None, value: tuple[Any, str | None]) -> dict[str, Any]:
        minutes, intensity = value
        return treatments.exercise(identifier=identifier, subject=subject_ref,
                                   effective=effective, minutes=minutes, intensity=intensity,
                                   device=device_ref)

    return EventTemplate("exercise", treatments.EXERCISE_CODE[0], subject, build, source)


def event(label: str, subject: Subject, source: DeviceInfo | None) -> EventTemplate:
    def build(identifier: tuple[str, str], subject_ref: str, effective: str,
              device_ref: str | None, text: str | None) -> dict[str, Any]:
        return treatments.event(identifier=identifier, subject=subject_ref,
                                effective=effective, label=label, text=text,
                                device=device_ref)

    code = treatments.event_code(label)
    return EventTemplate("event", code, subject, build, source)
