"""The compiled FHIRPath subset must agree with fhirpathpy on every shipped invariant, and
refuse (Unsupported) what it does not implement rather than guess."""

from __future__ import annotations

import copy

import fhirpathpy
import pytest
from fhirpathpy.models import models

from profiles import load_structure_definitions
from profiles.fhirpath_fast import Unsupported, compile_fhirpath
from tests.profile_examples import (
    VALID_CORSICAN_INS,
    VALID_INS,
    cgm_reading,
    f001_glucose,
    glucose,
    hba1c,
)

R4 = models["r4"]


def shipped_invariants() -> list[tuple[str, str, str]]:
    """(key, element path, expression) of every invariant in the shipped profiles."""
    found = []
    for definition in load_structure_definitions():
        for element in definition["differential"]["element"]:
            for constraint in element.get("constraint", ()):
                found.append((constraint["key"], element["path"], constraint["expression"]))
    return found


def observations() -> list[dict]:
    base = [glucose(), glucose(180, "mg/dL", "2339-0"), cgm_reading(), hba1c(),
            hba1c(53, "mmol/mol", "59261-8"), f001_glucose()]
    variants = []
    for resource in base:
        variants.append(resource)
        absent = copy.deepcopy(resource)
        del absent["valueQuantity"]
        variants.append(absent)
        for comparator in ("<", ">", "<=", "ad"):
            changed = copy.deepcopy(resource)
            changed["valueQuantity"]["comparator"] = comparator
            variants.append(changed)
        for unit in ("mg/dL", "mmol/L", "%", "mmol/mol"):
            changed = copy.deepcopy(resource)
            changed["valueQuantity"]["code"] = unit
            variants.append(changed)
        for code in ("99504-3", "105272-9", "4548-4", "17856-6", "59261-8", "2339-0"):
            changed = copy.deepcopy(resource)
            changed["code"]["coding"][0]["code"] = code
            variants.append(changed)
        dated = copy.deepcopy(resource)
        dated.pop("effectivePeriod", None)
        dated["effectiveDateTime"] = "2024-03-05"
        variants.append(dated)
        two = copy.deepcopy(resource)
        two["code"]["coding"].append({"system": "http://loinc.org", "code": "99504-3"})
        variants.append(two)
    return variants


INS_VALUES = [VALID_INS, VALID_CORSICAN_INS, VALID_INS[:-2] + "41", "18412751234",
              "2840519123456xx", "284052B12345632", "99999999999999999"]


@pytest.mark.parametrize(("key", "path", "expression"), shipped_invariants(),
                         ids=[k for k, _, _ in shipped_invariants()])
def test_compiled_invariant_agrees_with_fhirpathpy(key: str, path: str, expression: str) -> None:
    fast = compile_fhirpath(expression)  # every shipped invariant must compile
    slow = fhirpathpy.compile(expression, R4)
    if path.count(".") == 0:
        contexts = [(r, r) for r in observations()]
    else:
        contexts = [(value, {"resourceType": "Patient"}) for value in INS_VALUES]
        if path.endswith(".code"):
            contexts = [(r["code"], r) for r in observations()]
    assert len(contexts) > 5
    for context, root in contexts:
        expected = slow(context, {"resource": root})
        assert fast(context, root) == expected, (key, context)


@pytest.mark.parametrize(
    ("expression", "context", "expected"),
    [
        ("a.exists() or b.exists()", {"b": 1}, [True]),
        ("a.empty()", {}, [True]),
        ("a implies b", {"a": True}, []),
        ("a implies b", {"a": False}, [True]),
        ("a and b", {"a": True}, []),
        ("a xor b", {"a": True, "b": False}, [True]),
        ("a.count() <= 1", {"a": [1, 2]}, [False]),
        ("a in ('x' | 'y')", {"a": "y"}, [True]),
        ("('x' | 'y') contains a", {"a": "z"}, [False]),
        ("a.where(s = 'u').all(c != 'k')", {"a": [{"s": "u", "c": "k"}, {"s": "v"}]}, [False]),
        ("a.first().startsWith('ab')", {"a": ["abc", "x"]}, [True]),
        ("a.length() = 3 and a.substring(1) = 'bc'", {"a": "abc"}, [True]),
        ("(7 mod 3) + (7 div 2) * 2 - 1", {}, [6]),
        ("a.toInteger() = 42", {"a": "042"}, [True]),
        ("valueQuantity.value > 5", {"valueQuantity": {"value": 6.3}}, [True]),
        ("value.exists()", {"resourceType": "Observation", "valueQuantity": {"value": 1}},
         [True]),
        ("Observation.status = 'final'",
         {"resourceType": "Observation", "status": "final"}, [True]),
        ("%resource.status.exists()", {"status": "x"}, [True]),
        # added for the R4 core invariants
        ("a.select(b).count()", {"a": [{"b": 1}, {"b": [2, 3]}]}, [3]),
        ("a.b.isDistinct()", {"a": [{"b": 1}, {"b": 1}]}, [False]),
        ("a.intersect(b).count()", {"a": [1, 2, 3], "b": [2, 3, 4]}, [2]),
        ("iif(a.exists(), 'y', 'n')", {"a": 1}, ["y"]),
        ("a & b", {"a": "x", "b": "y"}, ["xy"]),
        ("a.descendants().count()", {"a": {"b": {"c": 1}}}, [2]),
        ("s <= e", {"s": "2024-01-01T10:00:00Z", "e": "2024-01-01T11:00:00+01:00"}, [True]),
        ("contained.is(Patient)", {"contained": {"resourceType": "Patient"}}, [True]),
        ("a.b.trace('x').exists()", {"a": {"b": 1}}, [True]),
        ("%ucum = 'http://unitsofmeasure.org'", {}, [True]),
    ],
)
def test_subset_semantics(expression: str, context: dict, expected: list) -> None:
    assert compile_fhirpath(expression)(context, context) == expected
    assert fhirpathpy.evaluate(context, expression, {"resource": context}, R4) == expected


def test_json_only_semantics() -> None:
    """Functions fhirpathpy does not implement, or types only JSON tells apart."""
    assert compile_fhirpath("a.hasValue()")({"a": "x"}, {}) == [True]
    assert compile_fhirpath("a.hasValue()")({"a": {"b": 1}}, {}) == [False]
    rule = compile_fhirpath("p is decimal implies (p as decimal) <= 100")
    assert rule({"pDecimal": 150}, {}) == [False]
    assert rule({"pRange": {}}, {}) == [True]


@pytest.mark.parametrize(
    "expression",
    ["a.repeat(b)", "a.b.ofType(Quantity).ofType(Quantity)", "a / 2", "a.matches(b)", "%vs-x",
     "a is Quantity", "htmlChecks()"],
)
def test_outside_the_subset_is_refused(expression: str) -> None:
    with pytest.raises(Unsupported):
        compile_fhirpath(expression)


def test_of_type_on_a_choice_element_reads_its_key() -> None:
    """`value.ofType(Quantity)` is the JSON key `valueQuantity`; an element present under its
    own name is no choice element, whose type needs a model: refused at run time."""
    run = compile_fhirpath("value.ofType(Quantity).value")
    assert run({"valueQuantity": {"value": 5}}, {}) == [5]
    assert run({"valueString": "x"}, {}) == []
    assert compile_fhirpath("deceased.ofType(boolean)")({"deceasedBoolean": False}, {}) == [False]
    with pytest.raises(Unsupported):
        run({"value": {"value": 5}}, {})


def test_extensions_add_functions_and_variables() -> None:
    """Callers (SQL on FHIR views) add functions and `%variables` without changing the
    subset for everyone else."""
    from profiles.fhirpath_fast import Extensions

    twice = {("twice", 0): lambda args, params: lambda items, env: items + items}
    run = compile_fhirpath("a.twice()[%i]", Extensions(twice, frozenset({"i"})))
    assert run({"a": "x"}, {}, {"i": [1]}) == ["x"]
    with pytest.raises(Unsupported):
        compile_fhirpath("a.twice()")
    with pytest.raises(Unsupported):
        compile_fhirpath("%i")


def test_runtime_data_outside_the_subset_is_refused() -> None:
    """Decimal arithmetic is left to fhirpathpy rather than done in binary floats."""
    run = compile_fhirpath("a + 1")
    assert run({"a": 2}, {}) == [3]
    with pytest.raises(Unsupported):
        run({"a": 2.5}, {})
