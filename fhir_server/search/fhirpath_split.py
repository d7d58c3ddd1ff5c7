"""Split a FHIRPath expression on its top-level union operator `|`.

The R4 definitions share one SearchParameter between many resource types with an expression
such as `AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | ...`.
The registry splits it per base type and the compiled evaluator compiles each branch, so both
need a splitter that ignores `|` inside strings (`'a|b'`) and parentheses.
"""

from __future__ import annotations


def split_union(expression: str) -> list[str]:
    """Return the top-level `|` branches of `expression`, stripped, without empty ones."""
    branches: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    index = 0
    length = len(expression)
    while index < length:
        char = expression[index]
        if quote:
            if char == "\\":
                index += 1  # skip the escaped character
            elif char == quote:
                quote = None
        elif char in "'`\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "|" and depth == 0:
            branches.append(expression[start:index])
            start = index + 1
        index += 1
    branches.append(expression[start:])
    return [branch.strip() for branch in branches if branch.strip()]


def strip_outer_parens(expression: str) -> str:
    """`(Observation.value as Quantity)` -> `Observation.value as Quantity`, repeatedly, but only
    when the opening parenthesis closes at the very end."""
    text = expression.strip()
    while text.startswith("(") and _matching_paren(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    return text


def root_name(expression: str) -> str:
    """The leading identifier of a branch (its resource type for a definition's expression):
    `(Observation.value as Quantity).text` -> `Observation`."""
    text = expression.strip()
    while text.startswith("("):
        text = text[1:].lstrip()
    end = 0
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return text[:end]


def _matching_paren(text: str, open_index: int) -> int:
    depth = 0
    quote: str | None = None
    index = open_index
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "'`\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return -1
