"""The memoized validator gives exactly the issues of the validator before the speed work
(tests/profiles_reference_validator.py), in the same order, on valid and broken resources,
whatever it validated before: every case runs on one long-lived validator whose caches
already hold the verdicts of similar resources, so a stale memo would show."""

from __future__ import annotations

import copy
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.mappers_csv import generate_libre_export
from fhir_server.model.jsonio import FhirDecimal
from fhir_server.synthetic import generate
from mappers.device_csv import to_bundle
from profiles import CGM_SENSOR_READING, ProfileValidator
from profiles import memo as memo_module
from profiles.fhirpath_fast import context_members, member_keys, reads_only_context
from profiles.memo import BoundedMemo, ProfileMemo, content_key
from terminology import TerminologyService
from tests.json_paths import paths
from tests.profile_examples import (
    cgm_reading,
    diabetes_condition,
    french_patient,
    glucose,
    hba1c,
    medication_statement,
)
from tests.profiles_reference_validator import ReferenceProfileValidator
from tests.test_profiles_validator import BROKEN, CUSTOM

TERMINOLOGY = TerminologyService()
VALIDATOR = ProfileValidator(TERMINOLOGY)  # shared on purpose: its memos fill up
REFERENCE = ReferenceProfileValidator(TERMINOLOGY)
EXAMPLES = [glucose, cgm_reading, hba1c, diabetes_condition, medication_statement,
            french_patient]


@pytest.fixture(autouse=True, params=["default windows", "tiny windows"])
def windows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: as shipped, and with windows of 2-5 resources, so that the memos
    switch between plain walks, separate and combined keys, rest and learn again all the
    time."""
    if request.param == "tiny windows":
        monkeypatch.setattr(memo_module, "WINDOW", 3)
        monkeypatch.setattr(memo_module, "FIRST_WINDOW", 2)
        monkeypatch.setattr(memo_module, "LEARN_WINDOW", 3)
        monkeypatch.setattr(memo_module, "REST", 5)
        monkeypatch.setattr(memo_module, "RELEARN", 2)
    return request.param


def agree(resource: Any, profiles: list[str] | None = None,
          validator: ProfileValidator = VALIDATOR,
          reference: ReferenceProfileValidator = REFERENCE) -> list[tuple]:
    """The issues of both validators, asserted equal (as tuples, in order)."""
    expected = [(i.severity, i.code, i.expression, i.message)
                for i in reference.validate(copy.deepcopy(resource), profiles)]
    got = [(i.severity, i.code, i.expression, i.message)
           for i in validator.validate(resource, profiles)]
    assert got == expected
    return got


def errors(issues: list[tuple]) -> set[tuple[str, str]]:
    return {(code, expression) for severity, code, expression, _ in issues
            if severity == "error"}


def test_valid_examples_agree_cold_and_warm() -> None:
    validator = ProfileValidator(TERMINOLOGY)
    for make in EXAMPLES:
        assert agree(make(), validator=validator) == []
        assert agree(make(), validator=validator) == []  # now from the memos


def test_every_broken_rule_agrees_between_valid_neighbours() -> None:
    """valid, broken, valid, broken: each verdict is the reference's, and a broken resource
    that looks like a memoized valid one still gets its errors (and back)."""
    for name, make, change, expected, _ in BROKEN:
        broken = make()
        change(broken)
        for _ in range(2):
            agree(make())
            issues = agree(broken)
            assert expected <= {(code, where) for _, code, where, _ in issues}, name


def _set(resource: dict, path: str, value: Any) -> dict:
    target: Any = resource
    *parents, last = path.split(".")
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    target[int(last) if last.isdigit() else last] = value
    return resource


CGM_CHANGES = {
    "wrong unit for the code": lambda r: _set(r, "valueQuantity.code", "mmol/L"),
    "unit spelling": lambda r: _set(r, "valueQuantity.code", "mg/dl"),
    "missing subject": lambda r: r.pop("subject"),
    "subject is a group": lambda r: _set(r, "subject", {"reference": "Group/g1"}),
    "wrong code": lambda r: _set(r, "code.coding.0.code", "2339-0"),
    "implausible value": lambda r: _set(r, "valueQuantity.value", 5000),
    "string value": lambda r: _set(r, "valueQuantity.value", "142"),
    "boolean value": lambda r: _set(r, "valueQuantity.value", True),
    "float value equal to the int": lambda r: _set(r, "valueQuantity.value", 142.0),
    "extra slice": lambda r: r["code"]["coding"].append(dict(r["code"]["coding"][0])),
    "both CGM slices": lambda r: r["code"]["coding"].append(
        {"system": "http://loinc.org", "code": "105272-9"}),
    "comparator <=": lambda r: _set(r, "valueQuantity.comparator", "<="),
    "comparator <": lambda r: _set(r, "valueQuantity.comparator", "<"),
    "minutes only": lambda r: _set(r, "effectiveDateTime", "2024-03-05T08:45"),
    "string value[x]": lambda r: r.update(valueString=str(r.pop("valueQuantity"))),
    "two value[x]": lambda r: r.update(valueString="high"),
    "data absent": lambda r: r.update(dataAbsentReason={"text": "x"})
    or r.pop("valueQuantity"),
    "no device": lambda r: r.pop("device"),
    "device is a patient": lambda r: _set(r, "device.reference", "Patient/p1"),
    "null device": lambda r: _set(r, "device", None),
    "NaN value": lambda r: _set(r, "valueQuantity.value", math.nan),
    "null value": lambda r: _set(r, "valueQuantity.value", None),
    "keys reordered": lambda r: _set(r, "valueQuantity", dict(
        reversed(list(r["valueQuantity"].items())))),
    "choice keys reordered": lambda r: r.update(
        valueString="x", valueQuantity=r.pop("valueQuantity")),
    "exact decimal": lambda r: _set(r, "valueQuantity.value", FhirDecimal("142.0")),
    "code is a list": lambda r: _set(r, "code", [r["code"]]),
    "coding system missing": lambda r: r["code"]["coding"][0].pop("system"),
}


def test_cgm_changes_agree_in_every_order() -> None:
    names = list(CGM_CHANGES)
    for offset in range(len(names)):
        for name in names[offset:] + names[:offset]:
            changed = cgm_reading()
            CGM_CHANGES[name](changed)
            agree(changed)
        agree(cgm_reading())


def test_a_changed_subtree_after_a_memoized_identical_one() -> None:
    validator = ProfileValidator(TERMINOLOGY)
    reading = cgm_reading()
    assert agree(reading, validator=validator) == []
    # The same dict objects, changed in place: the memo must look at the content.
    reading["code"]["coding"][0]["code"] = "105272-9"
    assert ("invariant", "Observation") in errors(agree(reading, validator=validator))
    reading["valueQuantity"]["code"] = reading["valueQuantity"]["unit"] = "mmol/L"
    reading["valueQuantity"]["value"] = 7.9
    assert agree(reading, validator=validator) == []
    reading["valueQuantity"]["value"] = 700
    assert errors(agree(reading, validator=validator)) == {
        ("business-rule", "Observation.valueQuantity.value")}
    reading["valueQuantity"]["value"] = 7.9
    assert agree(reading, validator=validator) == []


def test_a_contained_reference_is_typed_each_time() -> None:
    """`#id` is typed by the root's contained resources: the same `device` element is an
    error or not depending on what is contained."""
    validator = ProfileValidator(TERMINOLOGY)
    reading = cgm_reading()
    reading["device"] = {"reference": "#sensor"}
    reading["contained"] = [{"resourceType": "Device", "id": "sensor"}]
    assert agree(reading, validator=validator) == []
    reading["contained"] = [{"resourceType": "Patient", "id": "sensor"}]
    assert errors(agree(reading, validator=validator)) == {("value", "Observation.device")}
    reading["contained"] = [{"resourceType": "Device", "id": "sensor"}]
    assert agree(reading, validator=validator) == []


def _profile_with(elements: list[dict]) -> dict:
    definition = copy.deepcopy(CUSTOM)
    definition["differential"]["element"] = elements
    return definition


def test_an_invariant_reading_the_resource_is_never_memoized() -> None:
    definition = _profile_with([
        {"id": "Device.type", "path": "Device.type", "constraint": [
            {"key": "dev-r", "severity": "error", "human": "an active device's type",
             "expression": "%resource.status = 'active' implies coding.exists()"}]},
        {"id": "Device", "path": "Device", "constraint": [
            {"key": "dev-t", "severity": "error", "human": "whole context",
             "expression": "$this.status.exists()"},
            {"key": "dev-o", "severity": "error", "human": "type name first",
             "expression": "Device.status = 'active' or Device.status = 'inactive'"}]},
    ])
    validator = ProfileValidator(TERMINOLOGY, [copy.deepcopy(definition)])
    reference = ReferenceProfileValidator(TERMINOLOGY, [copy.deepcopy(definition)])
    memo = ProfileMemo(validator._profiles[CUSTOM["url"]])
    assert "type" not in memo.child_index
    assert memo.groups == []
    device = {"resourceType": "Device", "meta": {"profile": [CUSTOM["url"]]},
              "status": "inactive", "type": {"text": "no coding"}}
    assert agree(device, validator=validator, reference=reference) == []
    device["status"] = "active"
    assert errors(agree(device, validator=validator, reference=reference)) == {
        ("invariant", "Device.type")}
    device["status"] = "entered-in-error"
    assert ("invariant", "Device") in errors(
        agree(device, validator=validator, reference=reference))


def test_root_invariants_read_their_members_under_every_spelling() -> None:
    """`value.exists()` matches valueQuantity and valueString; `_status` (the extension of
    a primitive) is part of what `status` reads for fhirpathpy."""
    definition = _profile_with([
        {"id": "Device", "path": "Device", "constraint": [
            {"key": "dev-v", "severity": "error", "human": "a value",
             "expression": "value.exists() or status = 'active'"}]},
    ])
    validator = ProfileValidator(TERMINOLOGY, [copy.deepcopy(definition)])
    reference = ReferenceProfileValidator(TERMINOLOGY, [copy.deepcopy(definition)])
    device = {"resourceType": "Device", "meta": {"profile": [CUSTOM["url"]]},
              "status": "inactive"}
    for change in ({}, {"valueQuantity": {"value": 1}}, {"valueString": "x"},
                   {"valueFoo": 1}, {"status": "active"}, {"status": "inactive"}):
        device.update(change)
        agree(device, validator=validator, reference=reference)
        device.pop("valueQuantity", None)
        agree(device, validator=validator, reference=reference)


def test_content_keys_are_exact() -> None:
    keys = [content_key(v) for v in (1, 1.0, True, "1", [1], {"a": 1, "b": 2},
                                     {"b": 2, "a": 1})]
    assert None not in keys
    assert len(set(keys)) == len(keys)
    for unusable in (math.nan, math.inf, None, {"a": None}, FhirDecimal("5.40"), date.today(),
                     2**70, {1: "a"}):
        assert content_key(unusable) is None


def test_bounded_memo_forgets_the_oldest() -> None:
    memo = BoundedMemo(2)
    for key in (b"a", b"b", b"c"):
        memo.put(key, key.upper())
    assert (memo.get(b"a"), memo.get(b"b"), memo.get(b"c")) == (None, b"B", b"C")


def test_context_members() -> None:
    assert context_members("valueQuantity.exists() or dataAbsentReason.exists()") == {
        "valueQuantity", "dataAbsentReason"}
    assert context_members(
        "code.coding.where(system = 'x' and code = '%').exists() implies "
        "valueQuantity.code.substring(0, length()) = 'mg/dL'") == {"code", "valueQuantity"}
    for wider in ("exists()", "$this.code.exists()", "%resource.code.exists()",
                  "code.where(%context.x.exists()).exists()", "Observation.code.exists()",
                  "iif(code.exists(), true, false)", "code is CodeableConcept"):
        assert context_members(wider) is None, wider
    assert reads_only_context("coding.where(code = '%').exists()")
    assert reads_only_context("coding.where($this = %context.coding.first()).exists()")
    assert not reads_only_context("%resource.status.exists()")
    assert not reads_only_context("%rootResource.status.exists()")
    assert member_keys(frozenset({"value", "code"}),
                       ["resourceType", "valueQuantity", "_valueString", "code", "_code",
                        "codeX", "valueFoo", "id"]) == [
        "resourceType", "valueQuantity", "_valueString", "code", "_code"]


def _libre_observations(days: int) -> list[dict]:
    bundle = to_bundle(generate_libre_export(days, 5), patient="Patient/p1").bundle
    return [e["resource"] for e in bundle["entry"]]


def test_imported_and_synthetic_resources_agree() -> None:
    resources = _libre_observations(1)[:120]
    resources += [r for r in generate(2, 2, seed=3, end_date=date(2025, 6, 30))
                  if ProfileValidator.claimed_profiles(r)][:300]
    for resource in resources:
        agree(resource)
        agree(resource, [CGM_SENSOR_READING]) if resource["resourceType"] == "Observation" \
            else None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True)
    | st.sampled_from([142, 142.0, 7.9, "mg/dL", "mmol/L", "<", "Patient/1", "Device/d",
                       "#x", "99504-3", "105272-9", "http://loinc.org",
                       "http://unitsofmeasure.org", "2024-03-05T08:45:00Z"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["value", "code", "system", "reference", "coding",
                                       "comparator", "unit", "type"]), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(EXAMPLES))), st.data(), st.lists(json_values, min_size=1,
                                                                  max_size=3))
def test_random_replacements_agree(which: int, data, replacements: list) -> None:
    """Several replacements in a row on one resource, each validated by the shared
    validator: the later ones often meet memoized neighbours."""
    resource = EXAMPLES[which]()
    for replacement in replacements:
        path = data.draw(st.sampled_from(paths(resource)))
        target = resource
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = copy.deepcopy(replacement)
        try:
            agree(resource)
        except (AttributeError, TypeError) as exc:  # both must fail alike, if at all
            try:
                REFERENCE.validate(copy.deepcopy(resource))
            except type(exc):
                continue
            raise
        if not isinstance(resource, dict) or not paths(resource):
            break


def test_combined_keys_after_a_window_then_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memo_module, "WINDOW", 8)
    monkeypatch.setattr(memo_module, "FIRST_WINDOW", 8)
    monkeypatch.setattr(memo_module, "LEARN_WINDOW", 8)
    monkeypatch.setattr(memo_module, "RELEARN", 1000)
    monkeypatch.setattr(memo_module, "TIMED", False)  # decide on hit rates alone
    validator = ProfileValidator(TERMINOLOGY)
    memo = validator._memos[CGM_SENSOR_READING]
    assert memo.combination.idle  # a profile starts plain: 8 resources, then it learns
    for minute in range(16):  # same code, subject, device, value: stable; the time is not
        reading = cgm_reading()
        reading["effectiveDateTime"] = f"2024-03-05T08:{minute:02d}:00Z"
        assert agree(reading, validator=validator) == []
    assert memo.combined
    stable = {memo.components[i].child.name for i in memo.stable if memo.components[i].child}
    assert {"code", "subject", "device", "value[x]"} <= stable
    assert not any(memo.components[i].members == {"effectiveDateTime"} for i in memo.stable)
    # from the combined memo now: each change still gets its own verdict
    reading = cgm_reading()
    reading["effectiveDateTime"] = "2024-03-05"  # not memoized: checked every time
    assert errors(agree(reading, validator=validator)) == {("invariant", "Observation")}
    for name, change in CGM_CHANGES.items():
        reading = cgm_reading()
        change(reading)
        agree(reading, validator=validator)
        assert agree(cgm_reading(), validator=validator) == [], name
    # every value different: the combined memo hardly hits, the memo learns again, and
    # what it combines next leaves the value out
    for value in range(40, 200):
        agree(cgm_reading(value), validator=validator)
        if value > 80 and memo.combined:
            break
    assert memo.combined
    stable = {memo.components[i].child.name for i in memo.stable if memo.components[i].child}
    assert stable == {"code", "subject", "device"}


def test_threads_sharing_a_validator_get_the_reference_verdicts() -> None:
    """The server validates from several threads: lookups and stores of a profile take its
    lock, and each uses the way of looking up it started with (tiny windows: it changes all
    the time)."""
    variants = []
    for value in (142, 143, 5000, 142.0):
        for name in ("wrong code", "missing subject", "minutes only", "keys reordered"):
            reading = cgm_reading(value)
            CGM_CHANGES[name](reading)
            variants.append(reading)
        variants.append(cgm_reading(value))
    expected = [agree(v) for v in variants]  # the reference's, checked against VALIDATOR
    validator = ProfileValidator(TERMINOLOGY)

    def run(offset: int) -> list[bool]:
        return [
            [(i.severity, i.code, i.expression, i.message) for i in validator.validate(v)]
            == expected[(offset + n) % len(variants)]
            for n, v in enumerate((variants[offset:] + variants[:offset]) * 15)
        ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, range(0, 20, 5)))
    assert all(all(outcome) for outcome in outcomes)
