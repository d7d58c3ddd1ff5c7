"""The FHIR interactions on single resources, independent of HTTP.

Every write goes through `prepare` (validate, assign id and meta, extract index entries,
serialise once) and then into a storage transaction; conditional interactions resolve their
search inside that same transaction, so their check and their write cannot be split by
another writer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_server.audit.protection import refuse_audit_write
from fhir_server.model import jsonio
from fhir_server.model.ids import new_id
from fhir_server.model.outcome import FhirError, Issue, error
from fhir_server.model.resource_types import is_resource_type, is_valid_id
from fhir_server.model.validation import validate_structure
from fhir_server.search.types import IndexEntry
from fhir_server.service.patching import Patch
from fhir_server.storage.base import (
    NewResource,
    Storage,
    StoredResource,
    WriteTransaction,
    groupable,
    instant,
    now_millis,
)

Validator = Callable[[dict[str, Any]], list[Issue]]

# Elements the server owns: a client's values for them are replaced on every write.
SERVER_META = ("versionId", "lastUpdated")


# meta.lastUpdated of a create prepared before its transaction (the epoch): the real instant
# is written over it inside the transaction, so that history and `_since` follow commit
# order. It is the first instant in the JSON (meta comes right after the id), and
# `_lastUpdated` is never taken from the index, which saw the epoch.
PENDING_INSTANT = instant(0.0).encode()


@dataclass(frozen=True, slots=True)
class PreparedCreate:
    """A create validated, indexed and serialised, waiting only for its transaction."""

    resource_type: str
    rid: str
    json: bytes  # meta.lastUpdated is PENDING_INSTANT until stored
    index: Sequence[IndexEntry]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: `status` 200 (updated / found) or 201 (created)."""

    status: int
    stored: StoredResource
    created: bool

    @property
    def resource_type(self) -> str:
        return self.stored.resource_type


class ResourceService:
    def __init__(
        self,
        storage: Storage,
        extract_index: Callable[[dict[str, Any]], Sequence[IndexEntry]],
        parse_conditional: Callable[[str, list[tuple[str, str]]], Any],
        validators: Sequence[Validator] = (),
        core: Validator | None = None,
        lenient: bool = False,
    ) -> None:
        """`core`: the R4 core rules (after the schema, before `validators`, the profiles);
        `lenient`: a write that breaks only core rules is stored, its errors are warnings."""
        self.storage = storage
        self.extract_index = extract_index
        self.parse_conditional = parse_conditional
        self.validators = list(validators)
        self.core = core
        self.lenient = lenient

    # -- checks --------------------------------------------------------------------------

    @staticmethod
    def check_type(resource_type: str) -> None:
        if not is_resource_type(resource_type):
            raise error(404, "not-supported", f"Unknown resource type '{resource_type}'")

    def validate(self, resource: Any) -> list[Issue]:
        """Structure, the R4 core rules, then every configured validator (profiles); all
        problems at once. The one validation path of every write and of $validate."""
        structure, core, others = self._validate(resource)
        return [*structure, *core, *others]

    def write_issues(self, resource: Any) -> list[Issue]:
        """What a write of `resource` meets: in lenient mode, core errors as warnings."""
        structure, core, others = self._validate(resource)
        if self.lenient:
            core = [
                Issue("warning", i.code, i.diagnostics, i.expression)
                if i.severity in ("error", "fatal") else i
                for i in core
            ]
        return [*structure, *core, *others]

    def _validate(self, resource: Any) -> tuple[list[Issue], list[Issue], list[Issue]]:
        try:
            checked = resource
            structure = validate_structure(checked)
        except ValueError:
            # jsonschema-rs takes builtin types only: exact decimals go through as floats.
            checked = jsonio.plain(resource)
            structure = validate_structure(checked)
        core: list[Issue] = []
        others: list[Issue] = []
        if not structure:
            if self.core is not None:
                core = self.core(checked)
            for validator in self.validators:
                others.extend(validator(checked))
        return structure, core, others

    def _check_body(self, resource_type: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise error(400, "structure", "The body must be a FHIR resource (a JSON object)")
        if body.get("resourceType") is None:
            raise error(
                400, "required", f"The body has no resourceType (expected '{resource_type}')",
                "resourceType",
            )
        if body["resourceType"] != resource_type:
            raise error(
                400,
                "invalid",
                f"The body's resourceType '{body['resourceType']}' does not match the URL "
                f"type '{resource_type}'",
                "resourceType",
            )
        issues = [i for i in self.write_issues(body) if i.severity in ("error", "fatal")]
        if issues:
            raise FhirError(422 if self._profile_issue(issues) else 400, issues)
        return body

    @staticmethod
    def _profile_issue(issues: list[Issue]) -> bool:
        # Structural failures and the base R4 rules are a 400 ("failed basic FHIR
        # validation rules"); a well-formed resource that breaks a profile's rules is 422
        # Unprocessable Entity (the profile check puts a `processing` summary first).
        return any(i.code in ("processing", "business-rule") for i in issues)

    # -- preparing a version ---------------------------------------------------------------

    def prepare(
        self, resource: dict[str, Any], rid: str, version: int, now: float
    ) -> tuple[bytes, Sequence[IndexEntry]]:
        """Set id and meta, then return the JSON to store and its index entries."""
        meta = resource.get("meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        for key in SERVER_META:
            meta.pop(key, None)
        ordered: dict[str, Any] = {
            "resourceType": resource["resourceType"],
            "id": rid,
            "meta": {"versionId": str(version), "lastUpdated": instant(now), **meta},
        }
        for key, value in resource.items():
            if key not in ordered:
                ordered[key] = value
        return jsonio.dumps(ordered), self.extract_index(ordered)

    # -- reads -----------------------------------------------------------------------------

    def read(self, resource_type: str, rid: str) -> StoredResource:
        self.check_type(resource_type)
        stored = self.storage.read(resource_type, rid) if is_valid_id(rid) else None
        if stored is None:
            raise error(404, "not-found", f"{resource_type}/{rid} is not known")
        if stored.deleted:
            raise error(410, "deleted", f"{resource_type}/{rid} was deleted", ETag=stored.etag)
        return stored

    def vread(self, resource_type: str, rid: str, version: str) -> StoredResource:
        self.check_type(resource_type)
        if not version.isdigit() or not is_valid_id(rid):
            raise error(404, "not-found", f"{resource_type}/{rid}/_history/{version} is not known")
        stored = self.storage.vread(resource_type, rid, int(version))
        if stored is None:
            raise error(404, "not-found", f"{resource_type}/{rid}/_history/{version} is not known")
        if stored.deleted:
            raise error(410, "deleted", f"Version {version} of {resource_type}/{rid} is a deletion")
        return stored

    # -- writes inside a transaction -------------------------------------------------------

    def conditional_ids(
        self,
        tx: WriteTransaction,
        resource_type: str,
        items: list[tuple[str, str]],
        limit: int | None = 2,
    ) -> list[str]:
        """Ids matching conditional criteria; two are enough to tell 'several' (None: all)."""
        query = self.parse_conditional(resource_type, items)
        return tx.search_ids(query, limit=limit if limit is not None else 1_000_000)

    def create_in(
        self,
        tx: WriteTransaction,
        resource_type: str,
        body: Any,
        if_none_exist: list[tuple[str, str]] | None = None,
        rid: str | None = None,
        now: float | None = None,
    ) -> WriteResult:
        refuse_audit_write(resource_type)
        resource = self._check_body(resource_type, body)
        if if_none_exist:
            ids = self.conditional_ids(tx, resource_type, if_none_exist)
            if len(ids) > 1:
                raise error(
                    412,
                    "multiple-matches",
                    f"If-None-Exist matched several {resource_type} resources: be more precise",
                )
            if ids:
                existing = tx.read(resource_type, ids[0])
                assert existing is not None
                return WriteResult(200, existing, created=False)
        return self.put_prepared(tx, self._prepared_create(resource, rid), now)

    def prepare_create(self, resource_type: str, body: Any) -> PreparedCreate:
        """The work of a plain create that needs no transaction: validation, index
        extraction and serialisation. Done outside the write lock, it lets several server
        processes share one database's writes (a batch of device readings)."""
        self.check_type(resource_type)
        refuse_audit_write(resource_type)
        return self._prepared_create(self._check_body(resource_type, body), None)

    def _prepared_create(self, resource: dict[str, Any], rid: str | None) -> PreparedCreate:
        rid = rid or new_id()
        json, index = self.prepare(resource, rid, 1, 0.0)
        return PreparedCreate(resource["resourceType"], rid, json, index)

    def put_prepared(
        self, tx: WriteTransaction, prepared: PreparedCreate, now: float | None = None
    ) -> WriteResult:
        create = _stamped(prepared, now or now_millis())
        c = create
        tx.put(c.resource_type, c.id, 1, c.last_updated, c.json, c.index, "POST")
        return _created(create)

    def create_prepared_many(
        self, tx: WriteTransaction, prepared: Sequence[PreparedCreate]
    ) -> list[WriteResult]:
        """Store several prepared creates at once (one timestamp, one storage call)."""
        now = now_millis()
        creates = [_stamped(p, now) for p in prepared]
        tx.create_many(creates)
        return [_created(c) for c in creates]

    def update_in(
        self,
        tx: WriteTransaction,
        resource_type: str,
        rid: str,
        body: Any,
        if_match: str | None = None,
        method: str = "PUT",
    ) -> WriteResult:
        refuse_audit_write(resource_type)
        resource = self._check_body(resource_type, body)
        if not is_valid_id(rid):
            raise error(400, "invalid", f"'{rid}' is not a valid FHIR id", "id")
        body_id = resource.get("id")
        if body_id is None:
            raise error(400, "required", "The resource in an update must carry its id", "id")
        if body_id != rid:
            raise error(
                400, "invalid", f"The body's id '{body_id}' does not match the URL id '{rid}'", "id"
            )
        return self._write_version(tx, resource_type, rid, resource, if_match, method)

    def _write_version(
        self,
        tx: WriteTransaction,
        resource_type: str,
        rid: str,
        resource: dict[str, Any],
        if_match: str | None,
        method: str,
    ) -> WriteResult:
        current = tx.read(resource_type, rid)
        self._check_version(current, if_match, resource_type, rid)
        if (
            current is not None
            and current.json is not None
            and _same_content(current.json, resource)
        ):
            # A re-sent message (HL7 feeds do this all the time) must not grow the history.
            return WriteResult(200, current, created=False)
        version = current.version + 1 if current else 1
        now = now_millis()
        json, index = self.prepare(resource, rid, version, now)
        tx.put(resource_type, rid, version, now, json, index, method)
        created = current is None or current.deleted
        stored = StoredResource(resource_type, rid, version, now, False, json, method)
        return WriteResult(201 if created else 200, stored, created)

    @staticmethod
    def _check_version(
        current: StoredResource | None, if_match: str | None, resource_type: str, rid: str
    ) -> None:
        if if_match is None:
            return
        wanted = parse_etag(if_match)
        if current is None or current.deleted:
            raise error(
                412 if current is None else 409,
                "conflict",
                f"If-Match {if_match}: {resource_type}/{rid} has no current version",
            )
        if wanted != str(current.version):
            raise error(
                412,
                "conflict",
                f"If-Match {if_match} is stale: {resource_type}/{rid} is at version "
                f"{current.version}",
            )

    def _conditional_match(
        self,
        tx: WriteTransaction,
        resource_type: str,
        items: list[tuple[str, str]],
        interaction: str,
    ) -> list[str]:
        """The id (a list of zero or one) that the criteria of a conditional update, patch
        or delete select: 400 without criteria, 412 when they select several (this server
        changes one resource at a time)."""
        refuse_audit_write(resource_type)
        if not items:
            raise error(400, "invalid", f"A conditional {interaction} needs search parameters")
        ids = self.conditional_ids(tx, resource_type, items)
        if len(ids) > 1:
            raise error(
                412,
                "multiple-matches",
                f"The conditional {interaction} matched several {resource_type} resources",
            )
        return ids

    def conditional_update_in(
        self,
        tx: WriteTransaction,
        resource_type: str,
        items: list[tuple[str, str]],
        body: Any,
        if_match: str | None = None,
    ) -> WriteResult:
        ids = self._conditional_match(tx, resource_type, items, "update")
        resource = self._check_body(resource_type, body)
        body_id = resource.get("id")
        if ids:
            if body_id is not None and body_id != ids[0]:
                raise error(
                    400,
                    "invalid",
                    f"The body's id '{body_id}' is not the id of the matching resource '{ids[0]}'",
                    "id",
                )
            rid = ids[0]
        else:
            rid = body_id or new_id()
            existing = tx.read(resource_type, rid)
            if existing is not None and not existing.deleted:
                raise error(
                    409,
                    "conflict",
                    f"No {resource_type} matched, and the body's id '{rid}' is already used",
                )
        return self._write_version(tx, resource_type, rid, {**resource, "id": rid}, if_match, "PUT")

    def patch_in(
        self,
        tx: WriteTransaction,
        resource_type: str,
        rid: str,
        patch: Patch | list[Any],
        if_match: str | None = None,
    ) -> WriteResult:
        """Apply `patch` (a bare list is a JSON Patch) to the current version. The patched
        resource is validated like the body of an update (400 when it breaks the base
        structure, 422 a profile) and nothing is stored."""
        if isinstance(patch, list):
            patch = Patch("json-patch", patch)
        refuse_audit_write(resource_type)
        current = tx.read(resource_type, rid) if is_valid_id(rid) else None
        if current is None:
            raise error(404, "not-found", f"{resource_type}/{rid} is not known")
        if current.deleted:
            raise error(410, "deleted", f"{resource_type}/{rid} was deleted")
        self._check_version(current, if_match, resource_type, rid)
        assert current.json is not None
        patched = patch.apply(jsonio.loads(current.json))
        if not isinstance(patched, dict) or patched.get("resourceType") != resource_type:
            raise error(422, "processing", "A patch may not change the resourceType")
        if patched.get("id") != rid:
            raise error(422, "processing", "A patch may not change the id")
        issues = [i for i in self.validate(patched) if i.severity in ("error", "fatal")]
        if issues:
            summary = Issue(
                "error",
                "invalid",
                f"The patched {resource_type} would not be valid: nothing was changed",
                (resource_type,),
            )
            raise FhirError(422 if self._profile_issue(issues) else 400, [summary, *issues])
        return self._write_version(tx, resource_type, rid, patched, None, "PATCH")

    def conditional_patch_in(
        self,
        tx: WriteTransaction,
        resource_type: str,
        items: list[tuple[str, str]],
        patch: Patch,
        if_match: str | None = None,
    ) -> WriteResult:
        """`PATCH [type]?criteria`: the one match is patched; none is a 404, several a 412."""
        ids = self._conditional_match(tx, resource_type, items, "patch")
        if not ids:
            raise error(404, "not-found", f"The conditional patch matched no {resource_type}")
        return self.patch_in(tx, resource_type, ids[0], patch, if_match)

    def delete_in(
        self,
        tx: WriteTransaction,
        resource_type: str,
        rid: str,
        now: float | None = None,
        if_match: str | None = None,
    ) -> StoredResource | None:
        """Delete; returns the deletion version, or None when there was nothing to delete.
        With `if_match`, a stale or absent version is a 412 and nothing is deleted."""
        refuse_audit_write(resource_type)
        current = tx.read(resource_type, rid) if is_valid_id(rid) else None
        self._check_version(current, if_match, resource_type, rid)
        if current is None or current.deleted:
            return None
        now = now or now_millis()
        tx.delete(resource_type, rid, current.version + 1, now)
        return StoredResource(resource_type, rid, current.version + 1, now, True, None, "DELETE")

    def conditional_delete_in(
        self,
        tx: WriteTransaction,
        resource_type: str,
        items: list[tuple[str, str]],
        if_match: str | None = None,
    ) -> list[StoredResource]:
        ids = self._conditional_match(tx, resource_type, items, "delete")
        if if_match is not None and not ids:
            raise error(412, "conflict", f"If-Match {if_match}: no {resource_type} matched")
        deleted = [self.delete_in(tx, resource_type, rid, if_match=if_match) for rid in ids]
        return [d for d in deleted if d is not None]

    # -- one-shot wrappers (each its own transaction) ----------------------------------------

    def create(self, resource_type: str, body: Any, if_none_exist=None) -> WriteResult:
        self.check_type(resource_type)
        if not if_none_exist:  # nothing to look up: do the work before taking the lock
            prepared = self.prepare_create(resource_type, body)
            with groupable(), self.storage.transaction() as tx:
                return self.put_prepared(tx, prepared)
        with groupable(), self.storage.transaction() as tx:
            return self.create_in(tx, resource_type, body, if_none_exist)

    def update(self, resource_type: str, rid: str, body: Any, if_match=None) -> WriteResult:
        self.check_type(resource_type)
        with groupable(), self.storage.transaction() as tx:
            return self.update_in(tx, resource_type, rid, body, if_match)

    def conditional_update(self, resource_type, items, body, if_match=None) -> WriteResult:
        self.check_type(resource_type)
        with groupable(), self.storage.transaction() as tx:
            return self.conditional_update_in(tx, resource_type, items, body, if_match)

    def patch(self, resource_type, rid, patch, if_match=None) -> WriteResult:
        self.check_type(resource_type)
        with groupable(), self.storage.transaction() as tx:
            return self.patch_in(tx, resource_type, rid, patch, if_match)

    def conditional_patch(self, resource_type, items, patch, if_match=None) -> WriteResult:
        self.check_type(resource_type)
        with groupable(), self.storage.transaction() as tx:
            return self.conditional_patch_in(tx, resource_type, items, patch, if_match)

    def delete(
        self, resource_type: str, rid: str, if_match: str | None = None
    ) -> StoredResource | None:
        self.check_type(resource_type)
        with groupable(), self.storage.transaction() as tx:
            return self.delete_in(tx, resource_type, rid, if_match=if_match)

    def conditional_delete(self, resource_type, items, if_match=None) -> list[StoredResource]:
        self.check_type(resource_type)
        with groupable(), self.storage.transaction() as tx:
            return self.conditional_delete_in(tx, resource_type, items, if_match)


def parse_etag(value: str) -> str:
    """`W/"3"` or `"3"` or `3` -> `3`."""
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _without_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k != "meta"}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in SERVER_META}
    if meta:
        out["meta"] = meta
    return out


def _same_content(stored_json: bytes, resource: dict[str, Any]) -> bool:
    """True when a write would store what is already there (server meta aside)."""
    stored = jsonio.loads(stored_json)
    return jsonio.dumps(_without_server_meta(stored), sort_keys=True) == jsonio.dumps(
        _without_server_meta(resource), sort_keys=True
    )


def _stamped(prepared: PreparedCreate, now: float) -> NewResource:
    """A prepared create as a first version stored at `now` (meta.lastUpdated filled in)."""
    json = prepared.json.replace(PENDING_INSTANT, instant(now).encode(), 1)
    return NewResource(prepared.resource_type, prepared.rid, now, json, prepared.index)


def _created(create: NewResource) -> WriteResult:
    stored = StoredResource(
        create.resource_type, create.id, 1, create.last_updated, False, create.json, "POST"
    )
    return WriteResult(201, stored, True)
