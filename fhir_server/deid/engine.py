"""Pseudonymize one resource for one recipient: the compiled rules plus one walk.

`Deidentifier.transform(resource)` changes a freshly parsed resource in place:

1. path rules (compiled per resource type into a trie) redact, keep, generalize, perturb,
   pseudonymize or shift the elements they name;
2. one recursive walk then pseudonymizes every reference (dropping its display and any
   form that is not `Type/id`), removes the elements named by `nodesByName` rules and the
   extensions not on the allow-list, and shifts every date by the patient's keyed shift;
3. the resource id becomes its pseudonym, `meta.security` gets PSEUDED, and a Patient
   gets one recipient-scoped pseudonymous identifier.

Dates: one shift per patient, a whole number of days in [-N, -1] U [1, N] keyed by
(recipient, patient id), so that intervals and times of day are preserved. Timestamps that
carry seconds also carry the recipient's watermark: their seconds field is replaced by a
keyed function of the (shifted) date, hour, minute and zone, so intervals and times of day
are exact to the minute (see watermark.py for detection and its error rates).
"""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import date, timedelta
from typing import Any

import orjson

from fhir_server.deid.keys import RecipientKeys
from fhir_server.deid.pseudonyms import Pseudonymizer
from fhir_server.deid.rules import PathNode, PathRule, Rules
from fhir_server.deid.watermark import keyed_seconds
from fhir_server.model import jsonio

PSEUDED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "PSEUDED",
    "display": "pseudonymized",
}
PSEUDONYM_SYSTEM = "https://diatabase.org/fhir/sid/deid-pseudonym/"
PATIENT_LINKS = ("subject", "patient", "beneficiary")
_DATE = re.compile(r"\d{4}-\d{2}(-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?)?)?")
_RELATIVE_REF = re.compile(
    r"(?:https?://[^\s?#]+/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?"
)
EXTENSION_KEYS = ("extension", "modifierExtension")
_MISSING = object()
_CACHE_LIMIT = 200_000
# The fast path's passes over a serialized resource. Each is a plain pattern that the
# regex engine scans quickly (one alternation with lookbehinds cost three times more).
# A `"` followed by a letter or digit always opens a string (after a closing quote JSON
# has `:`, `,`, `}` or `]`), so these see every key and string value.
_SIMPLE_REFERENCE = re.compile(rb'\{"reference":"([^"\\]*)"\}')
_DATE_VALUE = re.compile(
    rb'"(\d{4}-\d{2}(?:-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?)?)?)"'
)
_DISPLAY_KEY = b'"display":'


def _walked_keys_pattern(keys: list[str]) -> re.Pattern[bytes]:
    """Keys (or whole string values: those only cost the full walk, with the same output)
    that only the full walk handles."""
    return re.compile(rb'"(?:' + b"|".join(re.escape(k.encode()) for k in keys) + rb')"')


class Suppressed(Exception):
    """The resource cannot be released (e.g. a modifier extension not on the allow-list)."""


class Deidentifier:
    def __init__(self, keys: RecipientKeys, rules: Rules) -> None:
        self.keys = keys
        self.rules = rules
        self.pseudonyms = Pseudonymizer(keys.pseudonym, keys.hashed_pseudonym)
        self._tries: dict[str, dict[str, PathNode]] = {}
        self._shifts: dict[str, int] = {}
        self._days = rules.date_shift_days if rules.shift_dates else 0
        self._redact = rules.redact_names
        self._allow = rules.extension_allow
        self._identifier_system = PSEUDONYM_SYSTEM + keys.recipient_id
        # transform keeps per-resource state (patient shift) on self: one at a time.
        self._lock = threading.RLock()
        self._shift_on = bool(self._days or rules.watermark)
        self._watermark_second = keyed_seconds(keys.watermark)
        # Keys the plain walk must look at: one set lookup per key instead of three.
        extension_keys = EXTENSION_KEYS if self._allow is not None else ()
        self._fast_strips: dict[str, Any] = {}
        self._reference_cache: dict[str, str | None] = {}
        self._reference_bytes: dict[bytes, bytes] = {}
        self._date_cache: dict[tuple[str, int], str] = {}
        # What only the full walk handles; the redacted names found at the top level are
        # removed before the check, so only nested ones send a resource down the full walk.
        self._walked_keys = _walked_keys_pattern(
            ["contained", *sorted(self._redact), *extension_keys]
        )
        self._special = frozenset({*self._redact, *extension_keys, "reference", "display"})

    # -- public ---------------------------------------------------------------------------

    def transform(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Pseudonymize `resource` in place and return it; raises Suppressed."""
        with self._lock:
            return self._transform(resource)

    def _transform(self, resource: dict[str, Any]) -> dict[str, Any]:
        rtype = resource.get("resourceType", "")
        rid = resource.get("id")
        shift = self.shift_days(self._patient_of(resource, rtype, rid))
        self._current = (rtype, rid or "", shift)
        trie = self._trie(rtype)
        if trie:
            self._apply_paths(resource, trie, rtype)
        for contained in resource.get("contained") or ():
            # Contained resources keep their local ids but get their own type's rules.
            if isinstance(contained, dict):
                inner_type = contained.get("resourceType", "")
                inner_trie = self._trie(inner_type)
                if inner_trie:
                    self._apply_paths(contained, inner_trie, inner_type)
        self._walk(resource, trie or None, False)
        self._finish(resource, rtype, rid)
        return resource

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

    def transform_bytes(self, raw: bytes) -> bytes:
        """The stored JSON of a resource -> its pseudonymized JSON; raises Suppressed.

        The fast path (most clinical resources: only redacting path rules; identifiers and
        other redacted names at the top level only; no extension or free-text element
        below it; every reference a bare `{"reference": ...}`) applies the path rules and
        removes those top-level elements on the parsed resource, then rewrites references
        and dates with regular expressions over the serialized bytes instead of walking
        the tree. Anything else takes the full walk; both give the same output."""
        with self._lock:
            return self._transform_bytes(raw)

    def _transform_bytes(self, raw: bytes) -> bytes:
        resource = _loads(raw)
        rtype = resource.get("resourceType", "")
        strip = self._fast_strips.get(rtype)
        if strip is None and rtype not in self._tries:
            self._trie(rtype)  # compiles the type's strip function on first sight
            strip = self._fast_strips.get(rtype)
        if strip is None or rtype == "Patient":
            # Patient: its own identifier goes in at the end, where the check would see it.
            return jsonio.dumps(self._transform(resource))
        rid = resource.get("id")
        patient = self._patient_fast(resource, rtype, rid)
        self._current = (rtype, rid or "", self.shift_days(patient))
        strip(resource)
        for name in self._redact:
            if name in resource:
                del resource[name]
        self._finish(resource, rtype, rid)
        out = jsonio.dumps(resource)
        fast = self._fast_rewrite(out)
        if fast is None:
            return jsonio.dumps(self._transform(_loads(raw)))
        return fast

    def _fast_rewrite(self, out: bytes) -> bytes | None:
        """References and dates of a serialized resource rewritten, or None when it holds
        something only the full walk handles."""
        if self._walked_keys.search(out) is not None:
            return None
        at = out.find(_DISPLAY_KEY)
        while at >= 0:
            if not _in_coding(out, at):
                return None  # a display that is not a Coding's: maybe a Reference's
            at = out.find(_DISPLAY_KEY, at + len(_DISPLAY_KEY))
        parts = _SIMPLE_REFERENCE.split(out)
        if len(parts) > 1:
            if len(parts) // 2 != out.count(b'"reference"'):
                return None  # a reference in another shape (with a display, a type...)
            parts[1::2] = [self._reference_json(ref) for ref in parts[1::2]]
            out = b"".join(parts)
        if self._shift_on:
            parts = _DATE_VALUE.split(out)
            if len(parts) > 1:
                # The pattern is _DATE's grammar: no need to check the dates again.
                shift = self._shift_date
                parts[1::2] = [b'"' + shift(d.decode()).encode() + b'"' for d in parts[1::2]]
                out = b"".join(parts)
        return out

    def _reference_json(self, ref: bytes) -> bytes:
        """The pseudonymized `{"reference": ...}` object of a bare reference."""
        cached = self._reference_bytes.get(ref)
        if cached is not None:
            return cached
        if ref.startswith(b"#"):
            result = b'{"reference":"' + ref + b'"}'
        else:
            new = self.reference(ref.decode())
            result = b"{}" if new is None else b'{"reference":"' + new.encode() + b'"}'
        if len(self._reference_bytes) < _CACHE_LIMIT:
            self._reference_bytes[ref] = result
        return result

    @staticmethod
    def _patient_fast(resource: dict[str, Any], rtype: str, rid: str | None) -> str:
        if rtype != "Patient":
            for key in PATIENT_LINKS:
                link = resource.get(key)
                if type(link) is dict:
                    ref = link.get("reference")
                    if type(ref) is str and ref.startswith("Patient/") and "/" not in ref[8:]:
                        return ref[8:]
        return Deidentifier._patient_of(resource, rtype, rid)

    def _trie(self, rtype: str) -> dict[str, PathNode]:
        trie = self._tries.get(rtype)
        if trie is None:
            trie = self.rules.trie(rtype)
            if _only_redactions(trie):
                self._fast_strips[rtype] = _compile_redactions(trie)
            self._tries[rtype] = trie
        return trie

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

    # -- date shift -----------------------------------------------------------------------

    @staticmethod
    def _patient_of(resource: dict[str, Any], rtype: str, rid: str | None) -> str:
        if rtype == "Patient" and rid:
            return rid
        for key in PATIENT_LINKS:
            link = resource.get(key)
            if isinstance(link, dict):
                ref = link.get("reference")
                if isinstance(ref, str):
                    match = _RELATIVE_REF.fullmatch(ref)
                    if match is not None and match.group(1) == "Patient":
                        return match.group(2)
        # Not tied to a patient: a shift of its own, keyed by the resource.
        return f"{rtype}/{rid}"

    def _shift(self, text: str) -> str:
        if _DATE.fullmatch(text) is None:
            return text
        return self._shift_date(text)

    def _shift_date(self, text: str) -> str:
        """`_shift` of a text known to be a FHIR date, dateTime or instant."""
        days = self._current[2]
        if not days and not self.rules.watermark:
            return text
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

    # -- path rules -----------------------------------------------------------------------

    def _apply_paths(self, node: Any, trie: dict[str, PathNode], where: str) -> None:
        if isinstance(node, list):
            for item in node:
                self._apply_paths(item, trie, where)
            return
        if not isinstance(node, dict):
            return
        for name, child in trie.items():
            if name not in node:
                continue
            if child.rule is None:
                self._apply_paths(node[name], child.children, f"{where}.{name}")
                continue
            value = self._apply_rule(child.rule, node[name], f"{where}.{name}")
            if value is None:
                del node[name]
            else:
                node[name] = value

    def _apply_rule(self, rule: PathRule, value: Any, where: str) -> Any:
        method = rule.method
        if method == "redact":
            return None
        if method == "keep":
            return value
        if isinstance(value, list):
            values = [self._apply_rule(rule, item, where) for item in value]
            values = [v for v in values if v is not None]
            return values or None
        if method == "dateShift":
            return self._shift(value) if isinstance(value, str) else value
        if method == "generalize":
            return _generalize(rule.options, value)
        if method == "pseudonymize":
            if not isinstance(value, str):
                return None  # only strings have a token; anything else goes
            return self.pseudonyms.keyed_token(where, value)
        if method == "perturb":
            return self._perturb(rule.options, value, where)
        raise AssertionError(method)

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

    # -- the walk -------------------------------------------------------------------------

    def _walk(self, node: dict[str, Any], trie: dict[str, PathNode] | None, claimed: bool) -> None:
        """References everywhere; below a node claimed by a path rule nothing else."""
        if claimed:
            self._walk_references(node)
        elif trie is None:
            self._walk_plain(node)
        else:
            self._walk_trie(node, trie)

    def _rewrite_reference(self, node: dict[str, Any], ref: str) -> None:
        if ref.startswith("#"):
            return
        new = self.reference(ref)
        if new is None:
            del node["reference"]
        else:
            node["reference"] = new
        node.pop("display", None)

    def _walk_trie(self, node: dict[str, Any], trie: dict[str, PathNode]) -> None:
        """The walk above and at the elements that path rules name."""
        untouched = {}
        for key in list(node):
            path_node = trie.get(key)
            if path_node is None:
                untouched[key] = node[key]
                continue
            value = node[key]
            if path_node.rule is not None:
                children = value if type(value) is list else (value,)
                for child in children:
                    if type(child) is dict:
                        self._walk_references(child)
                continue
            children = value if type(value) is list else (value,)
            for child in children:
                if type(child) is dict:
                    self._walk_trie(child, path_node.children)
        if untouched:
            # The rest is walked as if it were a node of its own, then put back in place.
            self._walk_plain(untouched, node)

    def _walk_plain(self, node: dict[str, Any], target: dict[str, Any] | None = None) -> None:
        """The walk where no path rule applies: the hot loop of an export."""
        if target is None:
            target = node
        ref = node.get("reference")
        if type(ref) is str:
            self._rewrite_reference(target, ref)
        elif "display" in node and "code" not in node and "system" not in node:
            # A Reference with only a display (`{"display": "Dr Jane Doe"}`): a Coding
            # always has a code or a system, so this is free text naming someone.
            del target["display"]
        special = self._special
        shift = self._shift_on
        for key, value in list(node.items()):
            if key in special:
                if key in self._redact:
                    del target[key]
                    continue
                if key == "reference" or key == "display":
                    continue
                value = self._filter_extensions(key, value)
                if value is None:
                    del target[key]
                    continue
                target[key] = value
            kind = type(value)
            if kind is str:
                if shift and len(value) >= 7 and value[4] == "-":
                    target[key] = self._shift(value)
            elif kind is dict:
                self._walk_plain(value)
            elif kind is list:
                for index, item in enumerate(value):
                    item_kind = type(item)
                    if item_kind is dict:
                        self._walk_plain(item)
                    elif item_kind is str and shift and len(item) >= 7 and item[4] == "-":
                        value[index] = self._shift(item)

    def _walk_references(self, node: dict[str, Any]) -> None:
        ref = node.get("reference")
        if type(ref) is str:
            self._rewrite_reference(node, ref)
        for value in node.values():
            kind = type(value)
            if kind is dict:
                self._walk_references(value)
            elif kind is list:
                for item in value:
                    if type(item) is dict:
                        self._walk_references(item)

    def _filter_extensions(self, key: str, value: Any) -> list[Any] | None:
        allow = self._allow
        assert allow is not None
        if not isinstance(value, list):
            return None
        kept = [e for e in value if isinstance(e, dict) and e.get("url") in allow]
        if key == "modifierExtension" and len(kept) != len(value):
            # Dropping a modifier extension would change what the resource means.
            raise Suppressed("a modifier extension is not on the allow-list")
        return kept or None


def _in_coding(text: bytes, at: int) -> bool:
    """Whether the `"display":` key at `at` belongs to an object that has a code or a
    system before it (a Coding keeps its display; the full walk drops the display of an
    object with neither, a Reference). Only the flat case is read: from the last `{`
    before the key, with no nested value in between; anything else says no (the full
    walk then decides, with the same output)."""
    members = text[text.rfind(b"{", 0, at) + 1 : at]
    if b"}" in members or b"]" in members:
        return False
    return b'"code":' in members or b'"system":' in members


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


def _compile_redactions(trie: dict[str, PathNode]) -> Any:
    """A function deleting the redacted paths of a type (the fast path's path rules)."""
    root = [name for name, node in trie.items() if node.rule is not None]
    nested = [(name, node.children) for name, node in trie.items() if node.rule is None]

    def strip(resource: dict[str, Any]) -> None:
        for name in root:
            resource.pop(name, None)
        for name, children in nested:
            value = resource.get(name)
            if value is not None:
                _strip_nested(value, children)

    return strip


def _strip_nested(value: Any, trie: dict[str, PathNode]) -> None:
    for item in value if type(value) is list else (value,):
        if type(item) is not dict:
            continue
        for name, node in trie.items():
            if name not in item:
                continue
            if node.rule is not None:
                del item[name]
            else:
                _strip_nested(item[name], node.children)


def _only_redactions(trie: dict[str, PathNode]) -> bool:
    for node in trie.values():
        if node.rule is not None and node.rule.method != "redact":
            return False
        if not _only_redactions(node.children):
            return False
    return True


def _generalize(options: dict[str, Any], value: Any) -> Any:
    if "precision" in options and isinstance(value, str):
        return value[:4] if options["precision"] == "year" else value[:7]
    if "prefix" in options and isinstance(value, str):
        return value[: int(options["prefix"])] or None
    if "round" in options and isinstance(value, int | float) and not isinstance(value, bool):
        return round(value, int(options["round"]))
    return None  # nothing sensible to generalize to: leave nothing
