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
