"""CoreValidator: a resource against the R4 core definitions (what every R4 resource must
meet, before any profile).

The walk reads the resource's JSON against its type's model (`core_model.py`) and reports:
cardinality (min, max) of every element; every invariant of the core StructureDefinitions
(error or warning as they say; best-practice ones are skipped) through the compiled
FHIRPath; required bindings against the R4 code systems and value sets (`terminology.r4`)
and those the terminology service holds, extensible and preferred ones as warnings, and
codes from systems not held here (LOINC beyond the shipped subset, SNOMED CT) as "not
checked" information; codes of the R4 code systems and UCUM units; fixed values and
lengths; no empty element (ele-1) and no string over 1 MB; references (format, target
types, contained targets); extensions known to the core (their definition's value types and
contexts; unknown extensions are a warning); Attachment size and hash against `data`;
base64 content; narratives (`xhtml.py`); and the rules of Bundles (`bundle_rules.py`).

Every issue is a `ProfileIssue` whose expression is a FHIRPath to the element
(`Observation.referenceRange[0].low`); messages of invariants start with their key.
Schema-level problems (unknown elements, primitive formats, codes of `code` elements) are
the JSON Schema's (`fhir_server.model.validation`); this walk assumes a resource that
passed it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from typing import Any

from profiles.bundle_rules import bundle_problems
from profiles.core_model import CORE_BASE, CoreModels, Element, TypeModel, default_models
from profiles.definitions import CANONICAL_BASE
from profiles.memo import BoundedMemo, content_key
from profiles.validator import ProfileIssue
from profiles.xhtml import narrative_problems
from terminology import r4, ucum

MAX_STRING = 1024 * 1024  # R4: strings SHALL NOT exceed 1 MB
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # what a browser would read as a tag
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]*={0,2}\s*$")
_RELATIVE = re.compile(
    r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/([A-Za-z0-9\-.]{1,64}))?$"
)
_ABSOLUTE = re.compile(
    r"^(https?|ftp)://.+/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$"
)
_UUID = re.compile(r"^urn:uuid:[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_OID = re.compile(r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$")
_CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]+)\?.+$")
_HOLDERS = frozenset({"Bundle", "Parameters"})  # resources that hold resources


class CoreValidator:
    def __init__(
        self,
        terminology: Any = None,
        models: CoreModels | None = None,
        unknown_extensions: str = "warn",
        html_in_text: str = "allow",
    ) -> None:
        """`terminology`: a TerminologyService (value sets beyond the R4 ones), optional;
        `unknown_extensions`: "warn" (accept an extension whose definition the server does
        not hold, with a warning) or "reject" (an error, as the reference validator does);
        `html_in_text`: "reject" makes an HTML tag in a string or markdown value an error
        (the reference validator's security checks), "allow" (default) accepts it."""
        self.models = models or default_models()
        self.terminology = terminology
        self.unknown_extension_severity = "error" if unknown_extensions == "reject" else "warning"
        self.reject_html = html_in_text == "reject"
        self._value_sets: dict[str, Any] = {}
        # what the walk found below a root element, by resource type, key and exact JSON
        self._memos: dict[tuple[str, str], BoundedMemo] = {}
        self._memo_lock = threading.Lock()

    def knows(self, resource_type: str) -> bool:
        return self.models.is_resource_type(resource_type)

    def validate(self, resource: dict) -> list[ProfileIssue]:
        """Every problem of `resource` against the R4 core definitions."""
        resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
        model = self.models.model(resource_type) if isinstance(resource_type, str) else None
        if model is None or not model.is_resource:
            return []
        issues: list[ProfileIssue] = []
        walk = _Walk(self, resource, issues)
        # Memoized root elements: a device import repeats code, subject, device and a few
        # hundred values. Not for resources holding resources (contained: `#id` references
        # and %rootResource read outside the element; Bundle, Parameters: their entries).
        walk.memoize = "contained" not in resource and resource_type not in _HOLDERS
        walk.resource(resource, model, resource_type)
        return issues

    def memo(self, resource_type: str, key: str) -> BoundedMemo:
        found = self._memos.get((resource_type, key))
        if found is None:
            with self._memo_lock:
                found = self._memos.setdefault((resource_type, key), BoundedMemo())
        return found

    # -- terminology ------------------------------------------------------------------------

    def value_set(self, url: str) -> Any:
        """An R4ValueSet, or one built from the terminology service, or None."""
        if url in self._value_sets:
            return self._value_sets[url]
        found = r4.value_set(url)
        if found is None and self.terminology is not None:
            try:
                pairs = self.terminology.value_set_codes(url)
            except Exception:  # noqa: BLE001 - not held: not checked
                pairs = None
            if pairs is not None:
                found = r4.R4ValueSet(
                    url, frozenset(pairs), frozenset(c for _, c in pairs),
                    frozenset(s for s, _ in pairs), True,
                )
        self._value_sets[url] = found
        return found


class _Walk:
    def __init__(self, validator: CoreValidator, root: dict, issues: list[ProfileIssue]) -> None:
        self.v = validator
        self.models = validator.models
        self.root = root
        self.issues = issues
        self.memoize = False

    def add(self, severity: str, code: str, expression: str, message: str) -> None:
        self.issues.append(ProfileIssue(severity, code, expression, message))

    # -- objects ------------------------------------------------------------------------------

    def resource(self, value: dict, model: TypeModel, path: str, contained: bool = False) -> None:
        """`contained`: a contained resource, whose references (`#id`) and `%rootResource`
        are its container's."""
        outer = self.root
        if not contained:
            self.root = value
        self.object(value, model, path)
        if "contained" in value:
            self.contained_referenced(value, path)
        if model.name == "Bundle":
            for severity, code, where, message in bundle_problems(value, path):
                self.add(severity, code, where, message)
        self.root = outer

    def object(self, value: dict, model: TypeModel, path: str) -> None:
        keys = model.keys
        memoize = self.memoize and value is self.root
        for key, found in value.items():
            if memoize and isinstance(found, dict | list):
                memo = self.v.memo(path, key)
                if memo.in_use():
                    content = content_key(found)
                    if content is not None:
                        with self.v._memo_lock:
                            known = memo.get(content)
                        if known is None:
                            start = len(self.issues)
                            self.key(keys, key, found, model, path)
                            known = tuple(self.issues[start:])
                            with self.v._memo_lock:
                                memo.put(content, known)
                        else:
                            self.issues.extend(known)
                        continue
            self.key(keys, key, found, model, path)
        for element, spellings in model.required:
            if not any(k in value for k in spellings):
                self.add("error", "required", f"{path}.{element.path.rsplit('.', 1)[-1]}",
                         f"{element.path} is required (minimum {element.min})")
        for invariant in model.invariants:
            self.invariant(invariant, value, path)

    def key(
        self, keys: dict[str, Element], key: str, found: Any, model: TypeModel, path: str
    ) -> None:
        """The checks of one JSON key of an object and what is below it."""
        element = keys.get(key)
        if element is None:
            if key != "resourceType":
                self.add("error", "structure", f"{path}.{key}",
                         f"{key} is not allowed here ({model.name})")
            return
        if key[0] == "_":
            self.primitive_extensions(found, f"{path}.{key}", element)
            return
        if isinstance(found, list):
            if not found:
                self.add("error", "invariant", f"{path}.{key}",
                         "ele-1: an array cannot be empty (leave the element out)")
                return
            if element.max is not None and len(found) > element.max:
                self.add("error", "structure", f"{path}.{key}",
                         f"{element.path} allows at most {element.max} (found {len(found)})")
            for index, item in enumerate(found):
                self.item(element, item, f"{path}.{key}[{index}]", model)
        else:
            if element.max == 0:
                self.add("error", "structure", f"{path}.{key}",
                         f"{element.path} is not allowed here (max 0)")
            self.item(element, found, f"{path}.{key}", model)

    def invariant(self, invariant: Any, value: Any, path: str) -> None:
        result = invariant.evaluate(value, self.root)
        if result is None:
            rule = invariant.invariant
            self.add("information", "informational", path,
                     f"{rule.key}: not checked (the rule could not be evaluated here)")
        elif result == [False]:
            rule = invariant.invariant
            self.add(rule.severity, "invariant", path, f"{rule.key}: {rule.human}")

    def item(self, element: Element, value: Any, path: str, holder: TypeModel) -> None:
        if value is None:
            self.add("error", "invariant", path, "ele-1: an element cannot be null")
            return
        if element.primitive:
            self.primitive(element, value, path)
        elif element.type_code == "Resource":
            if isinstance(value, dict):
                model = self.models.model(str(value.get("resourceType")))
                if model is not None and model.is_resource:
                    self.resource(value, model, path, element.path.endswith(".contained"))
            return
        elif isinstance(value, dict):
            if not any(k != "id" for k in value):
                self.add("error", "invariant", path,
                         "ele-1: an element must have a value or children")
                return
            self.complex(element, value, path, holder)
        for invariant in element.invariants:
            self.invariant(invariant, value, path)

    def complex(self, element: Element, value: dict, path: str, holder: TypeModel) -> None:
        type_code = element.type_code
        if element.inline is not None:
            self.object(value, element.inline, path)
            return
        if type_code == "Extension":
            self.extension(value, path, (holder.name, holder.type_name))
            return
        model = self.models.model(element.type_url or type_code)
        if model is None:
            model = self.models.model(type_code)
        if model is not None:
            self.object(value, model, path)
        if element.has_fixed and value != element.fixed:
            self.add("error", "value", path, f"{path} must be {element.fixed!r}")
        if type_code == "Reference":
            self.reference(element, value, path)
        elif type_code == "CodeableConcept":
            self.codeable_concept(element, value, path)
        elif type_code == "Coding":
            self.coding(element, value, path)
        elif type_code in ("Quantity", "Age", "Duration", "Distance", "Count", "MoneyQuantity",
                           "SimpleQuantity"):
            self.quantity(element, value, path)
        elif type_code == "Attachment":
            self.attachment(value, path)
        elif type_code == "Narrative":
            div = value.get("div")
            if isinstance(div, str):
                for key, message in narrative_problems(div):
                    self.add("error", "invariant", f"{path}.div", f"{key}: {message}")

    def primitive_extensions(self, found: Any, path: str, element: Element) -> None:
        items = found if isinstance(found, list) else [found]
        holder = (element.path, element.type_code)
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            where = f"{path}[{index}]" if isinstance(found, list) else path
            for key, value in item.items():
                if key == "extension" and isinstance(value, list):
                    for position, extension in enumerate(value):
                        if isinstance(extension, dict):
                            self.extension(extension, f"{where}.extension[{position}]", holder)

    # -- primitives ---------------------------------------------------------------------------

    def primitive(self, element: Element, value: Any, path: str) -> None:
        if isinstance(value, str):
            if len(value) > MAX_STRING:
                self.add("error", "too-long", path,
                         f"{path} is longer than the 1 MB a FHIR string may hold")
            if element.max_length is not None and len(value) > element.max_length:
                self.add("error", "value", path,
                         f"{path} is {len(value)} characters long (at most {element.max_length})")
            if element.type_code == "base64Binary" and not _valid_base64(value):
                self.add("error", "value", path, f"{path} is not valid base64 content")
            if self.v.reject_html and element.type_code in ("string", "markdown") and (
                _HTML_TAG.search(value)
            ):
                self.add("error", "security", path,
                         f"{path} contains text that looks like an HTML tag, which this "
                         f"server refuses in {element.type_code} values")
        if element.has_fixed and value != element.fixed:
            self.add("error", "value", path,
                     f"{path} must be {element.fixed!r} (found {value!r})")
        if element.binding is not None and isinstance(value, str) and element.type_code in (
            "code", "string", "uri"
        ):
            self.binding(element.binding, [(None, value)], path, value)

    # -- terminology --------------------------------------------------------------------------

    def binding(
        self, binding: tuple[str, str], pairs: list[tuple[str | None, str]], path: str,
        shown: str,
    ) -> None:
        strength, url = binding
        value_set = self.v.value_set(url)
        if value_set is None:
            return  # a value set the server does not hold (only named): not checked
        if any(value_set.contains(system, code) for system, code in pairs):
            return
        unheld = [s for s, _ in pairs if s is not None and not _held(s)]
        if not value_set.complete or unheld:
            if unheld or any(s in value_set.systems for s, _ in pairs):
                self.add("information", "not-supported", path,
                         f"{shown} was not checked against {url}: its code system is not "
                         "held by this server")
            return
        if strength == "required":
            self.add("error", "code-invalid", path,
                     f"{shown} is not in the value set {url} (required binding)")
        else:
            self.add("warning", "code-invalid", path,
                     f"{shown} is not in the value set {url} ({strength} binding)")

    def codeable_concept(self, element: Element, value: dict, path: str) -> None:
        codings = value.get("coding")
        pairs: list[tuple[str, str]] = []
        if isinstance(codings, list):  # each coding's own code was checked by the walk
            pairs = [p for p in map(_pair, codings) if p is not None]
        if element.binding is None:
            return
        if pairs:
            self.binding(element.binding, pairs, path, _describe(pairs))
        elif element.binding[0] == "required" and "text" in value:
            value_set = self.v.value_set(element.binding[1])
            if value_set is not None and value_set.complete:
                self.add("error", "code-invalid", path,
                         f"{path} needs a code from {element.binding[1]} (required binding)")

    def coding(self, element: Element, value: dict, path: str) -> None:
        pair = _pair(value)
        if pair is None:
            return
        system, code = pair
        code_system = r4.code_system(system)
        if code_system is not None and not code_system.has(code):
            self.add("error", "code-invalid", f"{path}.code",
                     f"Unknown code '{code}' in the code system {system}")
        if element.binding is not None:
            self.binding(element.binding, [pair], path, f"{system}#{code}")

    def quantity(self, element: Element, value: dict, path: str) -> None:
        code = value.get("code")
        if value.get("system") == ucum.UCUM_SYSTEM and isinstance(code, str) and not (
            ucum.is_valid_unit(code)
        ):
            self.add("information", "not-supported", f"{path}.code",
                     f"'{code}' is not a UCUM unit this server knows: not checked")
        if element.binding is not None and isinstance(code, str):
            self.binding(element.binding, [(value.get("system"), code)], path, code)

    # -- references ---------------------------------------------------------------------------

    def reference(self, element: Element, value: dict, path: str) -> None:
        reference = value.get("reference")
        declared = value.get("type")
        target: str | None = None
        if isinstance(reference, str):
            if reference.startswith("#"):
                target = self.contained_type(reference[1:])
                if reference != "#" and target is None:
                    self.add("error", "not-found", f"{path}.reference",
                             f"The contained resource {reference} does not exist")
            elif match := _RELATIVE.match(reference) or _CONDITIONAL.match(reference):
                target = match.group(1)
            elif match := _ABSOLUTE.match(reference):
                target = match.group(2)
            elif not (_UUID.match(reference) or _OID.match(reference) or "://" in reference):
                self.add("warning", "value", f"{path}.reference",
                         f"'{reference}' is not a valid reference (Type/id, an absolute URL, "
                         "#id, urn:uuid: or urn:oid:)")
                return
            if target is not None and not self.models.is_resource_type(target):
                self.add("error", "value", f"{path}.reference",
                         f"'{target}' in the reference '{reference}' is not a resource type")
                return
        if isinstance(declared, str):
            if not self.models.is_resource_type(declared):
                self.add("error", "code-invalid", f"{path}.type",
                         f"'{declared}' is not a resource type")
                return
            if target is not None and target != declared:
                self.add("error", "value", path,
                         f"The reference '{reference}' is to a {target}, but its type says "
                         f"{declared}")
            target = target or declared
        targets = element.targets
        if target and targets and "Resource" not in targets and target not in targets:
            self.add("error", "structure", path,
                     f"{element.path} may refer to {', '.join(sorted(targets))}, not to a "
                     f"{target}")

    def contained_type(self, rid: str) -> str | None:
        for contained in self.root.get("contained") or ():
            if isinstance(contained, dict) and contained.get("id") == rid:
                return contained.get("resourceType")
        return None

    def contained_referenced(self, resource: dict, path: str) -> None:
        """dom-3: every contained resource is referenced from elsewhere in the resource, or
        refers to the container (`#`)."""
        contained = resource.get("contained")
        if not isinstance(contained, list):
            return
        outside = {
            s for k, v in resource.items() if k != "contained" for s in _strings(v)
        }
        inside = [set(_strings(c)) for c in contained]
        for index, item in enumerate(contained):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            wanted = "#" + item["id"]
            others = set().union(*(s for i, s in enumerate(inside) if i != index))
            if wanted in outside or wanted in others or "#" in inside[index]:
                continue
            self.add("error", "invariant", f"{path}.contained[{index}]",
                     f"dom-3: the contained resource {wanted} is not referenced from the rest "
                     "of the resource (a contained resource must be)")

    # -- extensions ---------------------------------------------------------------------------

    def extension(self, value: dict, path: str, holder: tuple[str, str]) -> None:
        """`holder`: the path and the type of the element the extension is on."""
        url = value.get("url")
        has_value = any(k.startswith("value") for k in value)
        if ("extension" in value) == has_value:
            self.add("error", "invariant", path,
                     "ext-1: an extension has either a value or extensions, not both or none")
        model = self.models.model("Extension")
        definition = None
        if isinstance(url, str):
            plain = url.split("|")[0]
            if plain.startswith(CORE_BASE):
                definition = self.models.definitions.get(plain)
            if "|" in url and definition is not None:
                self.add("error", "value", f"{path}.url",
                         f"The extension URL must not carry a version ({url})")
            if definition is not None and definition.get("type") == "Extension":
                model = self.models.model(plain) or model
                self.extension_context(definition, path, holder)
            elif not plain.startswith((CORE_BASE, CANONICAL_BASE)) and ":" in plain:
                self.add(self.v.unknown_extension_severity, "structure", f"{path}.url",
                         f"The extension {url} is not known here, so it was not checked")
        if model is not None:
            self.object(value, model, path)

    def extension_context(self, definition: dict, path: str, holder: tuple[str, str]) -> None:
        contexts = [c.get("expression", "") for c in definition.get("context") or ()
                    if c.get("type") == "element"]
        if not contexts or "Element" in contexts:
            return
        where, type_name = holder
        for context in contexts:
            if context in holder or (context in ("Resource", "DomainResource") and
                                     self.models.is_resource_type(type_name)):
                return
            if "." in where and (
                context.startswith(where + ".") or where.startswith(context + ".")
            ):
                return  # an element just above or below the context (not a resource's
                # root): accepted, as the reference validator does for R4
        self.add("error", "structure", path,
                 f"The extension {definition['url']} is not allowed on {where}; its "
                 f"contexts are {', '.join(contexts)}")

    # -- attachments --------------------------------------------------------------------------

    def attachment(self, value: dict, path: str) -> None:
        data = value.get("data")
        if not isinstance(data, str) or not _valid_base64(data):
            return
        try:
            raw = base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError):
            return
        size = value.get("size")
        if isinstance(size, int) and not isinstance(size, bool) and size != len(raw):
            self.add("error", "structure", f"{path}.size",
                     f"The stated attachment size {size} is not the size of the data "
                     f"({len(raw)} bytes)")
        digest = value.get("hash")
        if isinstance(digest, str) and _valid_base64(digest):
            expected = base64.b64encode(hashlib.sha1(raw).digest()).decode()
            if digest.strip() != expected:
                self.add("error", "structure", f"{path}.hash",
                         f"The stated attachment hash is not the SHA-1 of the data "
                         f"(expected {expected})")


# -- helpers --------------------------------------------------------------------------------------


def _held(system: str) -> bool:
    return r4.code_system(system) is not None or system == ucum.UCUM_SYSTEM


def _pair(coding: Any) -> tuple[str, str] | None:
    if not isinstance(coding, dict):
        return None
    system, code = coding.get("system"), coding.get("code")
    return (system, code) if isinstance(system, str) and isinstance(code, str) else None


def _describe(pairs: list[tuple[str | None, str]]) -> str:
    return ", ".join(f"{s}#{c}" if s else c for s, c in pairs)


def _valid_base64(value: str) -> bool:
    if not _BASE64.match(value):
        return False
    compact = "".join(value.split())
    return len(compact) % 4 == 0


def _strings(value: Any) -> list[str]:
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out
