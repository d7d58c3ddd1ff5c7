"""Patient merges (HL7 v2 ADT^A40) and the Patient links they leave, inside one transaction.

A merge follows the FHIR Patient `$merge` operation (R5, trial use), written with R4
elements:

- the prior Patient (matched by an MRG-1 identifier) becomes `active: false` with a `link`
  of type `replaced-by` to the survivor, and the MRG-1 identifiers move from it to the
  survivor (with `use: old`): a search by the old identifier finds the survivor, and a
  later message still sent under the old identifier updates the survivor instead of
  matching two Patients;
- the survivor gains a `link` of type `replaces` to the prior Patient;
- every resource in the prior Patient's compartment (Observation.subject, Encounter,
  Condition, Immunization...) is re-pointed to the survivor, so the survivor's record is
  whole; AuditEvent and Provenance are not: they record what happened, to whom it was
  recorded then. The prior Patient and its history stay readable (`Patient/{old}`,
  `_history`), and its versions before the merge still show what was merged.

Patient updates from mapped sources (HL7 v2 PID, DICOM) carry no links: `keep_links`
copies the stored links and old identifiers into such an update, so an ADT^A08 after a
merge does not undo it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.model import jsonio
from fhir_server.model.references import iter_references
from fhir_server.search.compartment import compartment_params, compartment_resource_types
from fhir_server.service.resources import ResourceService
from fhir_server.storage.base import WriteTransaction
from mappers.bundle import identifier_query

# Records of what happened: they keep pointing where they pointed.
NOT_REPOINTED = frozenset({"Patient", "AuditEvent", "Provenance"})


@dataclass
class MergeResult:
    """What one merge did: the Patients merged, the resources re-pointed, and any warning."""

    survivor: str
    merged: list[str] = field(default_factory=list)
    repointed: int = 0
    warning: str | None = None


def _token_items(ident: dict) -> list[tuple[str, str]]:
    _, _, query = identifier_query(ident.get("system"), ident["value"]).partition("=")
    return [("identifier", query)]


def _same_identifier(a: dict, b: dict) -> bool:
    return a.get("system") == b.get("system") and a.get("value") == b.get("value")


def _read(tx: WriteTransaction, rtype: str, rid: str) -> dict[str, Any]:
    stored = tx.read(rtype, rid)
    assert stored is not None and stored.json is not None
    return jsonio.loads(stored.json)


def keep_links(tx: WriteTransaction, resources: ResourceService, bundle: dict) -> None:
    """Copy the stored `link`s and `use: old` identifiers of each Patient a conditional
    update of `bundle` will replace into that update (in place, before it runs)."""
    for entry in bundle.get("entry") or []:
        request = entry.get("request") or {}
        url = request.get("url") or ""
        resource = entry.get("resource")
        if request.get("method") != "PUT" or not url.startswith("Patient?"):
            continue
        ids = resources.conditional_ids(tx, "Patient", parse_qsl(url.partition("?")[2]))
        if len(ids) != 1 or not isinstance(resource, dict):
            continue  # none: a create; several: the update itself will refuse
        stored = _read(tx, "Patient", ids[0])
        if stored.get("link") and not resource.get("link"):
            resource["link"] = stored["link"]
        if stored.get("active") is False and "active" not in resource:
            resource["active"] = False  # a merged-away record stays inactive
        mine = resource.setdefault("identifier", [])
        for ident in stored.get("identifier") or []:
            if ident.get("use") == "old" and not any(_same_identifier(ident, m) for m in mine):
                mine.append(ident)


def merge_patients(
    tx: WriteTransaction,
    resources: ResourceService,
    survivor_key: dict,
    prior_keys: tuple[dict, ...],
) -> MergeResult:
    """Apply one merge in `tx` (see the module docstring); idempotent: a re-sent A40 finds
    the prior identifiers already on the survivor and changes nothing."""
    [survivor_id] = resources.conditional_ids(tx, "Patient", _token_items(survivor_key))
    result = MergeResult(survivor=survivor_id)
    prior_ids: list[str] = []
    for key in prior_keys:
        for rid in resources.conditional_ids(tx, "Patient", _token_items(key), limit=None):
            if rid != survivor_id and rid not in prior_ids:
                prior_ids.append(rid)
    survivor = _read(tx, "Patient", survivor_id)
    if not prior_ids:
        already = all(
            any(_same_identifier(key, ident) and ident.get("use") == "old"
                for ident in survivor.get("identifier") or [])
            for key in prior_keys
        )
        if not already:
            result.warning = "no Patient with the prior identifier (MRG-1): nothing merged"
        return result
    links = survivor.setdefault("link", [])
    identifiers = survivor.setdefault("identifier", [])
    for prior_id in prior_ids:
        prior = _read(tx, "Patient", prior_id)
        moved = [i for i in prior.get("identifier") or []
                 if any(_same_identifier(i, key) for key in prior_keys)]
        prior["identifier"] = [i for i in prior.get("identifier") or [] if i not in moved]
        if not prior["identifier"]:
            del prior["identifier"]
        prior["active"] = False
        replaced_by = {"other": {"reference": f"Patient/{survivor_id}"}, "type": "replaced-by"}
        prior["link"] = [link for link in prior.get("link") or []
                         if link.get("type") != "replaced-by"] + [replaced_by]
        resources.update_in(tx, "Patient", prior_id, prior)
        for ident in moved:
            if not any(_same_identifier(ident, mine) for mine in identifiers):
                identifiers.append({**ident, "use": "old"})
        replaces = {"other": {"reference": f"Patient/{prior_id}"}, "type": "replaces"}
        if replaces not in links:
            links.append(replaces)
        result.repointed += _repoint(tx, resources, prior_id, survivor_id)
        result.merged.append(prior_id)
    resources.update_in(tx, "Patient", survivor_id, survivor)
    return result


def _repoint(
    tx: WriteTransaction, resources: ResourceService, prior_id: str, survivor_id: str
) -> int:
    """Point every compartment resource of Patient/prior_id at Patient/survivor_id."""
    old, new = f"Patient/{prior_id}", f"Patient/{survivor_id}"
    count = 0
    for rtype in compartment_resource_types("Patient"):
        if rtype in NOT_REPOINTED:
            continue
        ids: list[str] = []
        for param in compartment_params("Patient", rtype):
            for rid in resources.conditional_ids(tx, rtype, [(param, old)], limit=None):
                if rid not in ids:
                    ids.append(rid)
        for rid in ids:
            resource = _read(tx, rtype, rid)
            for ref in iter_references(resource):
                if ref.get("reference") == old:
                    ref["reference"] = new
            resources.update_in(tx, rtype, rid, resource)
            count += 1
    return count
