"""An empty quantity search is either a true "none" or a question the data cannot answer.

`value-quantity=gt1|http://unitsofmeasure.org|mmol/L` on cholesterol stored in mg/dL is
valid UCUM, but comparing a molar with a mass concentration needs the analyte's molar
mass, which the project knows for glucose only: an empty Bundle would tell the client
"no cholesterol above 1 mmol/L", which is false. So when a search with such a clause finds
nothing on its first page, the clause is asked two more questions, with the same other
criteria (and so the same access restrictions):

1. is there a match with ANY value in the searched unit's kind? Then the empty answer is
   true (the values are out of range);
2. otherwise, is there a match with any value of the parameter at all? Then the stored
   values are in units the searched one cannot be compared with: a 400 naming the unit.

Both are searches of one row: this costs two index look-ups, and only on empty answers.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from fhir_server.search.errors import SearchError
from fhir_server.search.query import Clause, SearchQuery
from fhir_server.search.result_params import ResultParams
from fhir_server.search.values import MissingValue, QuantityValue
from terminology.ucum import UCUM_SYSTEM, UnitConversionError, unit_def

_ANY = Decimal("-Infinity")
_PLAIN = ResultParams(count=1)


def check_empty_quantity_search(storage: Any, query: SearchQuery) -> None:
    """Raise SearchError (400) when `query`, which found nothing, has a quantity clause
    whose unit cannot be compared with the values the other criteria select."""
    for index, clause in enumerate(query.clauses):
        if not _converted_quantity_clause(clause):
            continue
        for value in clause.values:
            kind = _kind(value)
            if kind is None:
                continue
            any_value = QuantityValue("ge", _ANY, _ANY, _ANY, value.system, value.code)
            if _has_match(storage, query, index, dataclasses.replace(clause, values=(any_value,))):
                return  # the unit compares: the values are simply out of range
            present = dataclasses.replace(clause, modifier="missing", values=(MissingValue(False),))
            if _has_match(storage, query, index, present):
                hint = (
                    " without the analyte's molar mass (known for glucose only)"
                    if kind in ("mass-concentration", "substance-concentration")
                    else ""
                )
                raise SearchError(
                    f"{clause.param.code}: the unit '{value.code}' ({kind}) cannot be compared "
                    f"with the units of the stored values{hint}; search in their unit",
                    clause.param.code,
                )


def _converted_quantity_clause(clause: Any) -> bool:
    return (
        isinstance(clause, Clause)
        and clause.param.type == "quantity"
        and clause.modifier is None
        and len(clause.values) == 1  # with several (OR) values, any one may be the good one
    )


def _kind(value: Any) -> str | None:
    """The UCUM kind of a searched unit, None when it is not compared through UCUM."""
    if not isinstance(value, QuantityValue) or not value.code:
        return None
    if value.system not in (UCUM_SYSTEM, None):
        return None
    try:
        return unit_def(value.code).kind
    except UnitConversionError:
        return None


def _has_match(storage: Any, query: SearchQuery, index: int, clause: Clause) -> bool:
    clauses = (*query.clauses[:index], clause, *query.clauses[index + 1 :])
    variant = dataclasses.replace(query, clauses=clauses, result=_PLAIN)
    return bool(storage.search(variant, 1, None, bodies=False).matches)
