"""Pseudonymize one resource for one recipient: the rules compiled against R4, one walk.

`Deidentifier.transform(resource)` returns the recipient's version of a parsed resource:

1. the resource is walked with its type's plan (plan.py: the rules compiled against the
   R4 element model). Every key is looked up: elements the rules redact, and elements
   that are not in the type's definition, are left out; free text stays only where a rule
   keeps it (coded values); dates are shifted by the patient's keyed shift; references
   become pseudonyms (their displays go); extensions off the allow-list go (one that is a
   modifier suppresses the resource); contained resources get their own type's plan and
   local ids `c1`, `c2`... (the `#` references follow); UIDs become keyed pseudo-UIDs;
   objects and lists left empty are removed (FHIR JSON has no empty ones);
2. a glucose reading's value gets the second watermark (value_mark.py);
3. the resource id becomes its pseudonym, `meta.security` gets PSEUDED, and a Patient
   gets one recipient-scoped pseudonymous identifier.

Dates: one shift per patient, a whole number of days in [-N, -1] U [1, N] keyed by
(recipient, patient id), so that intervals and times of day are preserved. Timestamps that
carry seconds also carry the recipient's watermark: their seconds field is replaced by a
keyed function of the (shifted) date, hour, minute and zone, so intervals and times of day
are exact to the minute (see watermark.py for detection and its error rates).

One walk for every resource: the byte-level fast path this replaced checked a resource's
serialized form for what it could not handle; with every element typed, the typed walk
costs about what those passes did (bench/deid.py) and leaves no shape unchecked.
"""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import date, timedelta
from functools import cache, lru_cache
from typing import Any

import orjson

from fhir_server.deid.keys import RecipientKeys
from fhir_server.deid.plan import (
    APPLY,
    CHILD,
    CONTAINED,
    DROP,
    EXTENSIONS,
    INLINE_RESOURCE,
    KEEP,
    KEEP_TREE,
    REFERENCE,
    SHIFT,
    Plan,
    PlanCompiler,
    Step,
)
from fhir_server.deid.pseudonyms import Pseudonymizer
from fhir_server.deid.rules import Rules
from fhir_server.deid.value_mark import keyed_residue, mark
from fhir_server.deid.watermark import keyed_seconds
from fhir_server.model import jsonio
from terminology import TerminologyError, TerminologyService

PSEUDED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "PSEUDED",
    "display": "pseudonymized",
}
PSEUDONYM_SYSTEM = "https://diatabase.org/fhir/sid/deid-pseudonym/"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
DICOM_UID_SYSTEM = "urn:dicom:uid"
PATIENT_LINKS = ("subject", "patient", "beneficiary")
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?)?)?)?")
_RELATIVE_REF = re.compile(
    r"(?:https?://[^\s?#]+/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?"
)
_UID = re.compile(r"(urn:oid:)?([0-2](?:\.(?:0|[1-9][0-9]*))+)")
_MISSING = object()
_CACHE_LIMIT = 200_000


class Suppressed(Exception):
    """The resource cannot be released (e.g. a modifier extension not on the allow-list)."""


class Deidentifier:
    def __init__(self, keys: RecipientKeys, rules: Rules) -> None:
        self.keys = keys
        self.rules = rules
        self.pseudonyms = Pseudonymizer(keys.pseudonym, keys.hashed_pseudonym)
        self.plans = PlanCompiler(rules)
        self._shifts: dict[str, int] = {}
        self._days = rules.date_shift_days if rules.shift_dates else 0
        self._allow = rules.extension_allow or frozenset()
        self._identifier_system = PSEUDONYM_SYSTEM + keys.recipient_id
        # transform keeps per-resource state (patient shift, local ids) on self: one at a time.
        self._lock = threading.RLock()
        self._watermark_second = keyed_seconds(keys.watermark)
        self._value_mark = rules.value_watermark
        self._value_residue = keyed_residue(keys.value_watermark)
        self._reference_cache: dict[str, str | None] = {}
        self._date_cache: dict[tuple[str, int], str] = {}
        self._uid_cache: dict[str, str] = {}
        self._current: tuple[str, str, int] = ("", "", 0)
        self._local_ids: dict[str, str] = {}

    # -- public ---------------------------------------------------------------------------

    def transform(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The pseudonymized version of `resource` (a new object); raises Suppressed."""
        with self._lock:
            return self._transform(resource)

    def transform_bytes(self, raw: bytes) -> bytes:
        """The stored JSON of a resource -> its pseudonymized JSON; raises Suppressed."""
        with self._lock:
            return jsonio.dumps(self._transform(_loads(raw)))

    def _transform(self, resource: dict[str, Any]) -> dict[str, Any]:
        rtype = resource.get("resourceType", "")
        rid = resource.get("id")
        shift = self.shift_days(self._patient_of(resource, rtype, rid))
        self._current = (rtype, rid or "", shift)
        contained = resource.get("contained")
        self._local_ids = _local_ids(contained) if contained else {}
        out = self._apply(resource, self.plans.resource_plan(rtype))
        if out is None:
            # A primitive R4 requires of the resource was removed: what is left would be
            # refused by FHIR readers and mean something else.
            raise Suppressed(f"{rtype}: a required element cannot be released")
        out["resourceType"] = rtype
        if self._value_mark is not None and rtype == "Observation":
            mark(out, self._value_mark, self._value_residue)
        self._finish(out, rtype, rid)
        return out

    def _finish(self, resource: dict[str, Any], rtype: str, rid: str | None) -> None:
        if rid is not None:
            resource["id"] = self.pseudonyms.pseudonym(rtype, rid)
            if rtype == "Patient" and self.rules.pseudonymous_identifier:
                resource["identifier"] = [
                    {"system": self._identifier_system, "value": resource["id"]}
                ]
        meta = resource.get("meta")
        if meta is None:
            meta = resource["meta"] = {}
        meta["security"] = [*meta.get("security", ()), PSEUDED]

    # -- the walk -------------------------------------------------------------------------

    def _apply(self, node: dict[str, Any], plan: Plan) -> dict[str, Any] | None:
        """`node` as its plan releases it (a new object), or None when nothing is left.
        The hot loop of an export: the common steps are tested inline, in order of use."""
        walk = plan.walk
        out: dict[str, Any] = {}
        for key, value in node.items():
            found = walk.get(key)
            if found is None:
                continue  # not an element of this definition: closed by default
            kind, child, step = found
            if kind == KEEP:
                out[key] = value
            elif kind == CHILD:
                if type(value) is dict:
                    kept = self._apply(value, child)  # type: ignore[arg-type]
                    if kept is not None:
                        out[key] = kept
                elif type(value) is list:
                    items = []
                    for item in value:
                        if type(item) is dict:
                            kept = self._apply(item, child)  # type: ignore[arg-type]
                            if kept is not None:
                                items.append(kept)
                    if items:
                        out[key] = items
            elif kind == DROP:
                continue
            elif kind == REFERENCE:
                if type(value) is str:
                    new = self._reference_value(value)
                    if new is not None:
                        out[key] = new
            elif kind == SHIFT:
                if type(value) is str:
                    value = self._shift(value)
                elif type(value) is list:
                    value = [self._shift(v) for v in value if type(v) is str]
                    value = [v for v in value if v is not None] or None
                else:
                    value = None
                if value is not None:
                    out[key] = value
            else:
                new = self._special(kind, step, key, value, node)
                if new is not None:
                    out[key] = new
        for group, complex_ in plan.required:
            if not group.isdisjoint(node) and group.isdisjoint(out):
                if not complex_:
                    return None  # a required primitive was removed: the object goes too
                # A required object the rules emptied: there, but saying it is withheld.
                name = next(n for n in node if n in group)
                is_list = plan.steps[name].element.is_list  # type: ignore[union-attr]
                out[name] = [masked()] if is_list else masked()
        return out or None

    def _special(self, kind: int, step: Step, key: str, value: Any, node: dict[str, Any]) -> Any:
        """The rarer steps (extensions, rule methods, kept trees, resources within)."""
        if kind == EXTENSIONS:
            return self._extensions(key, value, step.plan)
        if kind == APPLY:
            return self._apply_rule(step, value, node)
        if kind == KEEP_TREE:
            self._walk_references(value)
            return value
        if kind == CONTAINED:
            return self._contained(value)
        if kind == INLINE_RESOURCE:
            if type(value) is not dict:
                return None
            return self._apply(value, self.plans.resource_plan(value.get("resourceType", "")))
        raise AssertionError(kind)

    def _extensions(self, key: str, value: Any, plan: Plan | None) -> list[Any] | None:
        if type(value) is not list:
            return None
        kept = [e for e in value if type(e) is dict and e.get("url") in self._allow]
        if key == "modifierExtension" and len(kept) != len(value):
            # Dropping a modifier extension would change what the resource means.
            raise Suppressed("a modifier extension is not on the allow-list")
        assert plan is not None
        released = [e for e in (self._apply(x, plan) for x in kept) if e is not None and "url" in e]
        return released or None

    def _contained(self, value: Any) -> list[Any] | None:
        if type(value) is not list:
            return None
        released = []
        for item in value:
            if type(item) is not dict:
                continue
            inner_type = item.get("resourceType", "")
            kept = self._apply(item, self.plans.resource_plan(inner_type))
            if kept is None:
                continue  # a required element was removed (references to it are dropped)
            kept["resourceType"] = inner_type
            local = self._local_ids.get(item.get("id"))  # type: ignore[arg-type]
            if local is None:
                kept.pop("id", None)
            else:
                kept["id"] = local
            released.append(kept)
        return released or None

    def _reference_value(self, ref: str) -> str | None:
        cached = self._reference_cache.get(ref, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        if ref.startswith("#"):
            if ref == "#":
                return ref  # the containing resource itself
            local = self._local_ids.get(ref[1:])
            return None if local is None else "#" + local
        return self.reference(ref)

    def _walk_references(self, node: Any) -> None:
        """References below a kept element: pseudonymized, displays dropped (in place)."""
        if type(node) is list:
            for item in node:
                self._walk_references(item)
            return
        if type(node) is not dict:
            return
        ref = node.get("reference")
        if type(ref) is str:
            new = self._reference_value(ref)
            if new is None:
                del node["reference"]
            else:
                node["reference"] = new
            node.pop("display", None)
        for value in node.values():
            if type(value) is dict or type(value) is list:
                self._walk_references(value)

    # -- rule methods ---------------------------------------------------------------------

    def _apply_rule(self, step: Step, value: Any, node: dict[str, Any]) -> Any:
        rule = step.rule
        assert rule is not None and not isinstance(rule, str)
        method = rule.method
        if isinstance(value, list):
            values = [self._apply_one(method, rule.options, v, node, step.where) for v in value]
            values = [v for v in values if v is not None]
            return values or None
        return self._apply_one(method, rule.options, value, node, step.where)

    def _apply_one(
        self, method: str, options: dict[str, Any], value: Any, node: dict[str, Any], where: str
    ) -> Any:
        if method == "keep":  # with a condition (`when`): kept only when coded
            return value if _coded(options, value, node) else None
        if method == "generalize":
            return _generalize(options, value)
        if method == "pseudonymize":
            if not isinstance(value, str):
                return None  # only strings have a token; anything else goes
            return self.pseudonyms.keyed_token(where, value)
        if method == "perturb":
            return self._perturb(options, value, where)
        if method == "uid":
            return self._uid(value)
        raise AssertionError(method)

    def _uid(self, value: Any) -> Any:
        """A UID (or `urn:oid:` OID) -> `2.25.<decimal of a keyed hash>` under the same
        prefix: a valid DICOM UID (ISO/IEC 9834-8 UUID arc, at most 44 characters), the same
        for the same UID within a recipient. An Identifier stays only as a DICOM UID."""
        if type(value) is dict:
            if value.get("system") != DICOM_UID_SYSTEM:
                return None
            uid = self._uid(value.get("value"))
            return None if uid is None else {"system": DICOM_UID_SYSTEM, "value": uid}
        if type(value) is not str:
            return None
        cached = self._uid_cache.get(value)
        if cached is not None:
            return cached
        match = _UID.fullmatch(value)
        if match is None:
            return None
        digest = hashlib.blake2b(
            b"uid\0" + match.group(2).encode(), key=self.keys.hashed_pseudonym, digest_size=16
        ).digest()
        result = (match.group(1) or "") + "2.25." + str(int.from_bytes(digest, "big"))
        if len(self._uid_cache) < _CACHE_LIMIT:
            self._uid_cache[value] = result
        return result

    def _perturb(self, options: dict[str, Any], value: Any, where: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        rtype, rid, _ = self._current
        digest = hashlib.blake2b(
            f"{rtype}/{rid}\0{where}".encode(), key=self.keys.perturb, digest_size=8
        ).digest()
        unit = int.from_bytes(digest, "big") / 2**64 * 2 - 1  # in [-1, 1)
        noisy = value * (1 + unit * float(options["range"]))
        if isinstance(value, int):
            return round(noisy)
        decimals = len(repr(float(value)).partition(".")[2])
        return round(noisy, decimals)

    # -- ids, references, dates -----------------------------------------------------------

    def shift_days(self, patient_key: str) -> int:
        if not self._days:
            return 0
        days = self._shifts.get(patient_key)
        if days is None:
            digest = hashlib.blake2b(
                patient_key.encode(), key=self.keys.date_shift, digest_size=8
            ).digest()
            value = int.from_bytes(digest, "big") % (2 * self._days)
            # [-N, -1] U [1, N]: never 0, so no shifted date equals its original.
            days = value - self._days if value < self._days else value - self._days + 1
            self._shifts[patient_key] = days
        return days

    def reference(self, text: str) -> str | None:
        """`Type/pseudonym` for a `Type/id` (absolute or versioned too); None otherwise."""
        cached = self._reference_cache.get(text, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        match = _RELATIVE_REF.fullmatch(text)
        result = None
        if match is not None:
            rtype, rid = match.groups()
            result = f"{rtype}/{self.pseudonyms.pseudonym(rtype, rid)}"
        if len(self._reference_cache) < _CACHE_LIMIT:
            self._reference_cache[text] = result
        return result

    @staticmethod
    def _patient_of(resource: dict[str, Any], rtype: str, rid: str | None) -> str:
        if rtype == "Patient" and rid:
            return rid
        for key in PATIENT_LINKS:
            link = resource.get(key)
            if type(link) is dict:
                ref = link.get("reference")
                if type(ref) is str:
                    if ref.startswith("Patient/") and "/" not in ref[8:]:
                        return ref[8:]
                    match = _RELATIVE_REF.fullmatch(ref)
                    if match is not None and match.group(1) == "Patient":
                        return match.group(2)
        # Not tied to a patient: a shift of its own, keyed by the resource.
        return f"{rtype}/{rid}"

    def _shift(self, text: str) -> str | None:
        """A FHIR date, dateTime or instant shifted; anything else is not a date: None."""
        if _DATE.fullmatch(text) is None:
            return None
        days = self._current[2]
        if not days and not self.rules.watermark:
            return text
        if len(text) == 4:
            return text  # a year: a shift of up to a year would be a guess, not a shift
        if len(text) == 7:
            return _shift_day(text[:7] + "-15", days).isoformat()[:7]
        key = (text[:10], days)
        head = self._date_cache.get(key)
        if head is None:
            head = _shift_day(text, days).isoformat()
            if len(self._date_cache) < _CACHE_LIMIT:
                self._date_cache[key] = head
        if len(text) == 10:
            return head
        rest = text[10:]  # Thh:mm:ss[.fff][zone]
        if not self.rules.watermark:
            return head + rest
        zone_at = 9
        if len(rest) > 9 and rest[9] == ".":  # a fraction of a second goes with the seconds
            while zone_at < len(rest) and (rest[zone_at] == "." or rest[zone_at].isdigit()):
                zone_at += 1
        minute, zone = rest[:6], rest[zone_at:]
        second = self._watermark_second(head + minute + zone)
        return f"{head}{minute}:{second:02d}{zone}"


def masked() -> dict[str, Any]:
    """A required element whose content was withheld: data-absent-reason `masked`
    ("information not available because of security, privacy or related reasons")."""
    return {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}


def _local_ids(contained: Any) -> dict[str, str]:
    """Contained resources' local ids -> `c1`, `c2`... (a local id is the sender's text)."""
    local: dict[str, str] = {}
    if type(contained) is list:
        for item in contained:
            if type(item) is dict and type(item.get("id")) is str and item["id"] not in local:
                local[item["id"]] = f"c{len(local) + 1}"
    return local


def _coded(options: dict[str, Any], value: Any, node: dict[str, Any]) -> bool:
    """Whether a free-text value is backed by a code (rules: `keep` with `when`)."""
    if type(value) is not str:
        return False
    condition = options["when"]
    if condition == "prefix":
        return value.startswith(tuple(options["prefixes"]))
    if condition == "pattern":
        return _pattern(options["pattern"]).fullmatch(value) is not None
    if condition == "code":
        return type(node.get("code")) is str
    if condition == "knownDisplay":
        return known_display(node.get("system"), node.get("code"), value)
    if condition == "equalsCode":
        return node.get("code") == value
    codings = node.get("coding")  # equalsCodingDisplay
    return type(codings) is list and any(
        type(c) is dict
        and c.get("display") == value
        and known_display(c.get("system"), c.get("code"), value)
        for c in codings
    )


@lru_cache(maxsize=100_000)
def known_display(system: Any, code: Any, display: str) -> bool:
    """Whether `display` is what the code system itself calls `code` (in any language the
    server holds): a sender's free text in a display field is not."""
    if type(system) is not str or type(code) is not str:
        return False
    try:
        concept = TerminologyService.default().system(system).get(code)
    except TerminologyError:
        return False  # a system the server does not hold: nothing to check it against
    return concept is not None and (
        display == concept.display or display in concept.designations.values()
    )


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _loads(raw: bytes) -> Any:
    """Parse stored JSON keeping every decimal literal (the contract of jsonio.loads).

    Stored resources were written by orjson, so when orjson writes the parsed document
    back byte for byte, no literal was lost (cheaper than scanning for suspicious
    numbers); otherwise (`5.40`, exponents, long mantissas, other spacing) jsonio parses
    it again, exactly."""
    parsed = orjson.loads(raw)
    if orjson.dumps(parsed) == raw:
        return parsed
    return jsonio.loads(raw)


def _shift_day(text: str, days: int) -> date:
    """The date of `YYYY-MM-DD...` moved by `days`. A day the month does not have (the
    schema's pattern lets 2024-02-30 through) counts from the month's last day rather than
    failing or leaving the date unshifted."""
    year, month, day = int(text[0:4]), int(text[5:7]), int(text[8:10])
    if not 1 <= month <= 12:
        month = min(max(month, 1), 12)
    try:
        start = date(year, month, max(day, 1))
    except ValueError:
        start = date(year, month, 28)
        while True:
            try:
                start = date(year, month, start.day + 1)
            except ValueError:
                break
    return start + timedelta(days=days)


def _generalize(options: dict[str, Any], value: Any) -> Any:
    if "precision" in options and isinstance(value, str):
        return value[:4] if options["precision"] == "year" else value[:7]
    if "prefix" in options and isinstance(value, str):
        return value[: int(options["prefix"])] or None
    if "round" in options and isinstance(value, int | float) and not isinstance(value, bool):
        return round(value, int(options["round"]))
    return None  # nothing sensible to generalize to: leave nothing
