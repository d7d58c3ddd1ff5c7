"""The members of a Group, for exports: its `member` entries (`actual` true) or its latest
evaluation (`actual` false, cohorts.py), as sorted batches of patient ids."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fhir_server.jobs.selection import batched
from fhir_server.model import jsonio
from fhir_server.model.outcome import error


class GroupMembers:
    def __init__(self, service: Any, cohorts: Any = None) -> None:
        self.service = service
        self.cohorts = cohorts

    def __call__(self, group_id: str) -> Iterator[list[str]]:
        stored = self.service.resources.read("Group", group_id)
        group = jsonio.loads(stored.json)
        if group.get("actual") is False:
            if self.cohorts is None:
                raise error(409, "not-supported", "Cohort definitions are not evaluated here")
            return self.cohorts.member_batches(group_id, group)
        return batched(explicit_members(group))


def explicit_members(group: dict[str, Any]) -> list[str]:
    """The ids of the Patients listed in `member` (inactive members left out), sorted."""
    ids = set()
    for member in group.get("member") or ():
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference")
        if isinstance(reference, str) and reference.startswith("Patient/"):
            ids.add(reference.removeprefix("Patient/").split("/")[0])
    return sorted(ids)
