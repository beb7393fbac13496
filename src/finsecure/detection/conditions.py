"""The match-condition language of rules, compiled once to one vectorised Polars expression.

A condition is a leaf ``{field: <column>, <operator>: <value>}`` or a combinator ``all: [...]``,
``any: [...]``, ``not: {...}``. Operators: ``equals``, ``in``, ``contains``, ``startswith``,
``endswith``, ``regex``, ``gt``, ``gte``, ``lt``, ``lte``, ``exists``. String operators take
``ignore_case: true``. A leaf never yields null: a missing value simply does not match, so ``not``
of a leaf on an empty field matches (as in Sigma).

>>> import polars as pl
>>> expr = compile_condition(
...     {"all": [{"field": "action", "equals": "login"}, {"field": "amount", "gte": 10}]}
... )
>>> frame = pl.DataFrame({"action": ["login", "login", None], "amount": [5.0, 12.0, 50.0]})
>>> frame.select(expr).to_series().to_list()
[False, True, False]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

__all__ = ["OPERATORS", "ConditionError", "compile_condition", "condition_fields"]

OPERATORS: tuple[str, ...] = (
    "equals",
    "in",
    "contains",
    "startswith",
    "endswith",
    "regex",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
)
_STRING_OPERATORS = frozenset({"contains", "startswith", "endswith", "regex"})
_LEAF_KEYS = frozenset({"field", "ignore_case", *OPERATORS})


class ConditionError(ValueError):
    """A condition that cannot be compiled; ``key_path`` says where (``condition.all[1].gte``)."""

    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(f"{key_path}: {message}")
        self.key_path = key_path
        self.message = message


def _scalar(value: object, path: str) -> object:
    if isinstance(value, (str, int, float, bool)):
        return value
    raise ConditionError(path, f"expected a single text, number or true/false, got {type(value).__name__}")


def _leaf(spec: Mapping[str, Any], path: str) -> pl.Expr:
    unknown = sorted(set(spec) - _LEAF_KEYS)
    if unknown:
        raise ConditionError(path, f"unknown key(s) {', '.join(unknown)}")
    field = spec["field"]
    if not isinstance(field, str) or not field:
        raise ConditionError(f"{path}.field", "must be a column name")
    operators = [key for key in OPERATORS if key in spec]
    if len(operators) != 1:
        raise ConditionError(path, f"needs exactly one operator (one of {', '.join(OPERATORS)})")
    op = operators[0]
    value = spec[op]
    where = f"{path}.{op}"
    ignore_case = bool(spec.get("ignore_case", False))
    column = pl.col(field)
    if op == "exists":
        if not isinstance(value, bool):
            raise ConditionError(where, "must be true or false")
        return column.is_not_null() if value else column.is_null()
    if op == "in":
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            raise ConditionError(where, "must be a non-empty list")
        values = [_scalar(item, f"{where}[{index}]") for index, item in enumerate(value)]
        if ignore_case:
            lowered = [str(item).lower() for item in values]
            return column.str.to_lowercase().is_in(lowered).fill_null(False)
        return column.is_in(values).fill_null(False)
    scalar = _scalar(value, where)
    if op in _STRING_OPERATORS:
        if not isinstance(scalar, str):
            raise ConditionError(where, "must be text")
        text = column.str.to_lowercase() if ignore_case else column
        needle = scalar.lower() if ignore_case and op != "regex" else scalar
        if op == "contains":
            out = text.str.contains(needle, literal=True)
        elif op == "startswith":
            out = text.str.starts_with(needle)
        elif op == "endswith":
            out = text.str.ends_with(needle)
        else:
            try:
                re.compile(scalar)
            except re.error as exc:
                raise ConditionError(where, f"not a valid regular expression: {exc}") from None
            out = column.str.contains(f"(?i){scalar}" if ignore_case else scalar)
        return out.fill_null(False)
    if op == "equals":
        if ignore_case and isinstance(scalar, str):
            return (column.str.to_lowercase() == scalar.lower()).fill_null(False)
        return column.eq(scalar).fill_null(False)
    if isinstance(scalar, bool) or not isinstance(scalar, (int, float)):
        raise ConditionError(where, "must be a number")
    compare = {"gt": column.__gt__, "gte": column.__ge__, "lt": column.__lt__, "lte": column.__le__}[op]
    return compare(scalar).fill_null(False)


def compile_condition(spec: object, path: str = "condition") -> pl.Expr:
    """Compile a condition (parsed YAML) to one Boolean Polars expression that is never null.

    Raises
    ------
    ConditionError
        With the key path of the first problem.
    """
    if not isinstance(spec, Mapping):
        raise ConditionError(path, "expected a mapping (a leaf with 'field', or all/any/not)")
    combinators = [key for key in ("all", "any", "not") if key in spec]
    if combinators:
        if len(spec) != 1:
            raise ConditionError(path, f"'{combinators[0]}' must be the only key of its mapping")
        key = combinators[0]
        inner = spec[key]
        if key == "not":
            return ~compile_condition(inner, f"{path}.not")
        if not isinstance(inner, Sequence) or isinstance(inner, str) or not inner:
            raise ConditionError(f"{path}.{key}", "must be a non-empty list of conditions")
        parts = [compile_condition(item, f"{path}.{key}[{index}]") for index, item in enumerate(inner)]
        return pl.all_horizontal(parts) if key == "all" else pl.any_horizontal(parts)
    if "field" not in spec:
        raise ConditionError(path, "expected 'field' with an operator, or all/any/not")
    return _leaf(spec, path)


def condition_fields(spec: object) -> set[str]:
    """Every column a (valid) condition reads.

    >>> sorted(condition_fields({"any": [{"field": "b", "exists": True}, {"not": {"field": "a", "gt": 1}}]}))
    ['a', 'b']
    """
    if not isinstance(spec, Mapping):
        return set()
    if "field" in spec:
        return {str(spec["field"])}
    out: set[str] = set()
    for key in ("all", "any"):
        for item in spec.get(key, ()) or ():
            out |= condition_fields(item)
    if "not" in spec:
        out |= condition_fields(spec["not"])
    return out
