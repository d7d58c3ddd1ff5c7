"""De-identification rules: load a configuration file and compile it per resource type.

The format follows Microsoft's FHIR Tools for Anonymization (`fhirPathRules`, each a
`path` and a `method`, then `parameters`), restricted to the FHIRPath forms that can be
compiled into a plain walk over the JSON (fast enough for bulk export; a general FHIRPath
engine costs ~100x more per resource):

- `Type.element.element...` (or `Resource.element...` for every type): the element at that
  path; lists are traversed. Methods: `redact`, `keep`, `generalize` (`precision`:
  `year`|`month` for dates, `prefix`: N for strings, `round`: N for numbers),
  `pseudonymize` (keyed one-way token of a string), `perturb` (`range`: relative noise,
  e.g. 0.05 for +/-5%, keyed and deterministic), `dateShift`.
- `nodesByName('name')`, method `redact`: the element of that name wherever it occurs.
- `nodesByType('Extension')`, method `redact` with an `allow` list of extension URLs.
- `nodesByType('dateTime')`, method `dateShift`: every date, dateTime and instant value.
- `nodesByType('Reference')`, method `pseudonymize`.
- `nodesByType('T')` for any other R4 type `T` (a primitive such as `string`, `uri`,
  `code`, `oid`, `time`, or a datatype such as `Identifier`, `HumanName`): `redact`,
  `keep`, `uid` or `pseudonymize`, for every element of that type.
- `Datatype.element` (`Coding.display`, `Quantity.unit`: a datatype's own element,
  wherever the datatype occurs; `Quantity` includes Age, Count, Distance and Duration).

Methods beyond the MS tool's: `uid` (a DICOM UID or OID becomes a keyed pseudo-UID
`2.25.<decimal>`; an Identifier is kept only when it is a DICOM UID), and `keep` with a
condition `when` saying when a free-text value counts as coded: `code` (its object has a
code), `knownDisplay` (it is what the code system, held by the server's terminology, calls
its object's code: a Coding's display), `equalsCode` (it equals its object's code: a
Quantity's unit),
`equalsCodingDisplay` (it equals the known display of one of the object's codings: a
CodeableConcept's text), `prefix` (it starts with one of `prefixes`: a profile
of HL7's or of this server), `pattern` (the whole value matches the regex `pattern`: an
ISO country code). A value that is not coded is removed.

Which rule decides an element, first match: a path rule on it (or on an ancestor: a path
rule claims its element, so a birth date generalized to the year is not also shifted), a
datatype rule, a `nodesByName` rule, a `nodesByType` rule for its type. An element of a
type that can carry text, an identifier, a date or a URI that no rule names is removed
(closed by default; a test checks that the default profile names every one of them).
Whatever the rules say, resource ids and references are always pseudonymized and
displays of references dropped: a rule cannot turn that off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from fhir_server.deid.elements import PRIMITIVES, QUANTITY_TYPES, is_datatype
from fhir_server.deid.keys import DeidConfigError

METHODS = ("keep", "redact", "pseudonymize", "dateShift", "generalize", "perturb", "uid")
TYPE_METHODS = ("keep", "redact", "pseudonymize", "uid")
KEEP_CONDITIONS = ("code", "knownDisplay", "equalsCode", "equalsCodingDisplay", "prefix", "pattern")
DATE_TYPES = ("date", "dateTime", "instant")
_PATH = re.compile(r"[A-Z][A-Za-z]+(\.[a-z_][A-Za-z0-9_]*)+")
_NODES = re.compile(r"nodesBy(Name|Type)\('([A-Za-z_][A-Za-z0-9_]*)'\)")
DEFAULT_RULES = "diabetes-research.json"
DEFAULT_PARAMETERS: dict[str, Any] = {
    "dateShiftDays": 365,
    "watermark": True,
    "pseudonymousIdentifier": True,
    "kAnonymity": {"k": 5, "quasiIdentifiers": ["birthYear", "gender", "postalPrefix"]},
    "lDiversity": {"attribute": "diagnosis", "codePrefix": 3},
    "valueWatermark": None,
}
QUASI_IDENTIFIERS = ("birthYear", "gender", "postalPrefix")


@dataclass(frozen=True)
class PathRule:
    path: tuple[str, ...]  # element names after the type
    resource_type: str  # or "Resource"
    method: str
    options: dict[str, Any]


@dataclass
class PathNode:
    """A node of the compiled path trie of one resource type."""

    rule: PathRule | None = None
    children: dict[str, PathNode] = field(default_factory=dict)


@dataclass(frozen=True)
class Rules:
    name: str
    path_rules: tuple[PathRule, ...]
    redact_names: frozenset[str]
    extension_allow: frozenset[str] | None  # None: extensions are kept
    shift_dates: bool
    date_shift_days: int
    watermark: bool
    pseudonymous_identifier: bool
    k: int
    quasi_identifiers: tuple[str, ...]
    source: bytes  # the configuration as loaded (its hash goes into export manifests)
    # `Datatype.element` rules, by (datatype, element); `nodesByType` rules, by type.
    datatype_rules: dict[tuple[str, str], PathRule] = field(default_factory=dict)
    type_rules: dict[str, PathRule] = field(default_factory=dict)
    value_watermark: dict[str, Any] | None = None  # see value_mark.py
    diversity_prefix: int = 3  # l-diversity of diagnoses: ICD-10 codes cut to this

    def trie(self, resource_type: str) -> dict[str, PathNode]:
        """The path rules of one type, first rule first (a later rule cannot override)."""
        root: dict[str, PathNode] = {}
        for rule in self.path_rules:
            if rule.resource_type not in (resource_type, "Resource"):
                continue
            level, node = root, None
            for name in rule.path:
                node = level.setdefault(name, PathNode())
                if node.rule is not None:
                    break  # an earlier rule already claims an ancestor
                level = node.children
            else:
                if node is not None and node.rule is None:
                    node.rule = rule
        return root


def load_rules(source: str | Path | dict[str, Any] | None = None) -> Rules:
    """Rules from a JSON or YAML file, a parsed dict, or (None) the default profile."""
    if source is None:
        raw = resources.files("fhir_server.deid").joinpath("data", DEFAULT_RULES).read_bytes()
        return parse_rules(orjson.loads(raw), raw)
    if isinstance(source, dict):
        return parse_rules(source, orjson.dumps(source, option=orjson.OPT_SORT_KEYS))
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DeidConfigError(f"cannot read the rules file {path}: {exc}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise DeidConfigError("YAML rules need PyYAML installed; or write JSON") from None
        config = yaml.safe_load(raw)
    else:
        try:
            config = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise DeidConfigError(f"{path} is not valid JSON: {exc}") from None
    return parse_rules(config, raw)


def parse_rules(config: Any, source: bytes) -> Rules:
    if not isinstance(config, dict) or not isinstance(config.get("fhirPathRules"), list):
        raise DeidConfigError("a rules file is an object with a list `fhirPathRules`")
    parameters = {**DEFAULT_PARAMETERS, **(config.get("parameters") or {})}
    path_rules: list[PathRule] = []
    redact_names: set[str] = set()
    extension_allow: frozenset[str] | None = None
    shift_dates = False
    datatype_rules: dict[tuple[str, str], PathRule] = {}
    type_rules: dict[str, PathRule] = {}
    for number, item in enumerate(config["fhirPathRules"], 1):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise DeidConfigError(f"rule {number}: needs a `path`")
        path, method = item["path"].strip(), item.get("method")
        if method not in METHODS:
            raise DeidConfigError(f"rule {number} ({path}): method must be one of {METHODS}")
        options = {k: v for k, v in item.items() if k not in ("path", "method", "comment")}
        nodes = _NODES.fullmatch(path)
        if nodes is not None:
            kind, name = nodes.groups()
            if kind == "Name" and method == "redact":
                redact_names.add(name)
            elif kind == "Type" and name == "Extension" and method in ("redact", "keep"):
                if method == "redact":
                    extension_allow = frozenset(options.get("allow", ()))
            elif kind == "Type" and name in DATE_TYPES:
                if method == "dateShift":
                    shift_dates = True
                elif method != "keep":
                    raise DeidConfigError(f"rule {number}: {path} takes dateShift or keep")
                # `dateTime` speaks for every date type that has no rule of its own.
                for date_type in DATE_TYPES if name == "dateTime" else (name,):
                    rule = PathRule((), date_type, method, options)
                    if date_type == name or date_type not in type_rules:
                        type_rules[date_type] = rule
            elif kind == "Type" and name == "Reference":
                if method != "pseudonymize":
                    raise DeidConfigError(f"rule {number}: references are always pseudonymized")
            elif kind == "Type" and (name in PRIMITIVES or is_datatype(name)):
                if method not in TYPE_METHODS:
                    raise DeidConfigError(f"rule {number}: {path} takes one of {TYPE_METHODS}")
                _check_options(number, method, options)
                type_rules[name] = PathRule((), name, method, options)
            else:
                raise DeidConfigError(f"rule {number}: {path} with {method} is not supported")
            continue
        if _PATH.fullmatch(path) is None:
            raise DeidConfigError(
                f"rule {number}: {path!r} is not a supported path (Type.element... or "
                "nodesByName('x') / nodesByType('X'))"
            )
        _check_options(number, method, options)
        head, *rest = path.split(".")
        if head != "Resource" and (is_datatype(head) or head in QUANTITY_TYPES):
            if len(rest) != 1:
                raise DeidConfigError(f"rule {number}: a datatype rule names one element")
            for datatype in QUANTITY_TYPES if head == "Quantity" else (head,):
                rule = PathRule(tuple(rest), datatype, method, options)
                datatype_rules.setdefault((datatype, rest[0]), rule)
            continue
        path_rules.append(PathRule(tuple(rest), head, method, options))
    kanon = {**DEFAULT_PARAMETERS["kAnonymity"], **(parameters.get("kAnonymity") or {})}
    quasi = tuple(kanon.get("quasiIdentifiers", QUASI_IDENTIFIERS))
    unknown = set(quasi) - set(QUASI_IDENTIFIERS)
    if unknown:
        raise DeidConfigError(f"unknown quasi-identifiers {sorted(unknown)}")
    days = int(parameters.get("dateShiftDays", 0))
    if days < 0:
        raise DeidConfigError("dateShiftDays must be >= 0")
    return Rules(
        name=str(config.get("name", "custom")),
        path_rules=tuple(path_rules),
        redact_names=frozenset(redact_names),
        extension_allow=extension_allow,
        shift_dates=shift_dates and days > 0,
        date_shift_days=days,
        watermark=bool(parameters.get("watermark", True)),
        pseudonymous_identifier=bool(parameters.get("pseudonymousIdentifier", True)),
        k=int(kanon.get("k", 5)),
        quasi_identifiers=quasi,
        source=source,
        datatype_rules=datatype_rules,
        type_rules=type_rules,
        value_watermark=_value_watermark(parameters.get("valueWatermark")),
        diversity_prefix=int((parameters.get("lDiversity") or {}).get("codePrefix", 3)),
    )


def _value_watermark(config: Any) -> dict[str, Any] | None:
    """`{"codes": ["system|code", ...], "units": {"mg/dL": 0, "mmol/L": 1}}`: the glucose
    readings whose value carries the second watermark, and the decimals of each unit."""
    if not config:
        return None
    if not isinstance(config, dict) or not isinstance(config.get("codes"), list):
        raise DeidConfigError("valueWatermark needs a list of `codes` (system|code)")
    units = config.get("units")
    if not isinstance(units, dict) or not all(
        isinstance(v, int) and 0 <= v <= 6 for v in units.values()
    ):
        raise DeidConfigError("valueWatermark needs `units`: unit code -> decimals marked")
    return {"codes": frozenset(config["codes"]), "units": dict(units)}


def _check_options(number: int, method: str, options: dict[str, Any]) -> None:
    if method == "generalize":
        if not any(k in options for k in ("precision", "prefix", "round")):
            raise DeidConfigError(f"rule {number}: generalize needs precision, prefix or round")
        if options.get("precision", "year") not in ("year", "month"):
            raise DeidConfigError(f"rule {number}: precision is year or month")
    if method == "perturb" and not isinstance(options.get("range"), int | float):
        raise DeidConfigError(f"rule {number}: perturb needs a numeric `range`")
    if "when" in options and (method != "keep" or options["when"] not in KEEP_CONDITIONS):
        raise DeidConfigError(f"rule {number}: `when` is for keep, one of {KEEP_CONDITIONS}")
    if options.get("when") == "prefix" and not (
        isinstance(options.get("prefixes"), list)
        and all(isinstance(p, str) and p for p in options["prefixes"])
    ):
        raise DeidConfigError(f"rule {number}: `when: prefix` needs a list of `prefixes`")
    if options.get("when") == "pattern":
        try:
            re.compile(options.get("pattern"))  # type: ignore[arg-type]
        except (re.error, TypeError):
            raise DeidConfigError(
                f"rule {number}: `when: pattern` needs a regex `pattern`"
            ) from None


def with_parameters(rules_config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A rules configuration with some parameters replaced (per-recipient overrides)."""
    merged = dict(rules_config)
    merged["parameters"] = {**(rules_config.get("parameters") or {}), **overrides}
    return merged


def default_config() -> dict[str, Any]:
    raw = resources.files("fhir_server.deid").joinpath("data", DEFAULT_RULES).read_bytes()
    return orjson.loads(raw)
