"""Measure populations as a research recipient may be told them: in its pseudonyms, and
kept to the patients the de-identification facade releases to it (so a rule of the facade
about who a recipient may see holds for its indicators too)."""

from __future__ import annotations

from typing import Any

from fhir_server.analytics.measures import GroupResult, Subjects


def released_populations(results: list[GroupResult], deid: Any, recipient: str
                         ) -> list[GroupResult]:  # fmt: skip
    engine = deid.recipients.engine(recipient)
    released = {p.get("id") for p in deid.facade.released(engine, "Patient")}

    def mapped(subjects: Subjects) -> Subjects:
        out = set()
        for pid in subjects:
            pseudonym = (engine.reference(f"Patient/{pid}") or "").split("/", 1)[-1]
            if pseudonym in released:
                out.add(pseudonym)
        return out

    return [
        GroupResult(
            {code: mapped(s) for code, s in result.populations.items()},
            {
                stratifier: {
                    value: {code: mapped(s) for code, s in populations.items()}
                    for value, populations in strata.items()
                }
                for stratifier, strata in result.strata.items()
            },
        )  # fmt: skip
        for result in results
    ]
