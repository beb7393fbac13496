from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from finsecure.detection.conditions import ConditionError, compile_condition

FRAME = pl.DataFrame(
    {"s": ["Login", "logout", None], "n": [1.0, 5.0, None], "b": [True, False, None]},
)


def _eval(spec: dict[str, Any]) -> list[bool]:
    return FRAME.select(compile_condition(spec)).to_series().to_list()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"field": "s", "equals": "Login"}, [True, False, False]),
        ({"field": "s", "equals": "login", "ignore_case": True}, [True, False, False]),
        ({"field": "s", "in": ["logout", "x"]}, [False, True, False]),
        ({"field": "s", "contains": "og"}, [True, True, False]),
        ({"field": "s", "startswith": "log"}, [False, True, False]),
        ({"field": "s", "endswith": "IN", "ignore_case": True}, [True, False, False]),
        ({"field": "s", "regex": "^l.g"}, [False, True, False]),
        ({"field": "n", "gt": 1}, [False, True, False]),
        ({"field": "n", "gte": 1}, [True, True, False]),
        ({"field": "n", "lt": 5}, [True, False, False]),
        ({"field": "n", "lte": 5}, [True, True, False]),
        ({"field": "n", "exists": True}, [True, True, False]),
        ({"field": "n", "exists": False}, [False, False, True]),
        ({"field": "b", "equals": False}, [False, True, False]),
        ({"not": {"field": "b", "equals": True}}, [False, True, True]),
        ({"any": [{"field": "n", "gt": 4}, {"field": "s", "equals": "Login"}]}, [True, True, False]),
        ({"all": [{"field": "n", "gt": 0}, {"field": "s", "contains": "out"}]}, [False, True, False]),
    ],
)
def test_compile_condition__operators_and_nulls(spec: dict[str, Any], expected: list[bool]) -> None:
    assert _eval(spec) == expected


@pytest.mark.parametrize(
    ("spec", "key_path"),
    [
        ({"field": "n", "gt": "x"}, "condition.gt"),
        ({"field": "n"}, "condition"),
        ({"all": [{"field": "s", "regex": "("}]}, "condition.all[0].regex"),
        ({"all": []}, "condition.all"),
        ({"field": "s", "equals": 1, "bogus": 2}, "condition"),
    ],
)
def test_compile_condition__errors_carry_key_path(spec: dict[str, Any], key_path: str) -> None:
    with pytest.raises(ConditionError) as info:
        compile_condition(spec)
    assert info.value.key_path == key_path
