"""validate_rows: the row-level twin of conform_batch, with the same rules."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finsecure.event.schemas import (
    SchemaError,
    _luhn_ok,
    conform_batch,
    row_reasons,
    row_rules,
    validate_rows,
)

TS = pa.array([0, 0, 0, 0], pa.timestamp("s", tz="UTC"))


def _table(**columns: object) -> pa.Table:
    base = {"event_id": ["a", "b", "c", "d"], "ts": TS, "source": ["s"] * 4}
    base.update(columns)  # type: ignore[arg-type]
    return pa.table(base)


def test_validate_rows__all_good_rows_kept() -> None:
    check = validate_rows("payment", _table(amount=[1.0, 2.0, None, 0.0]))
    assert check.keep.to_pylist() == [True] * 4
    assert check.reasons.null_count == 4
    assert check.rejected == 0


def test_validate_rows__each_bad_row_named_with_every_problem() -> None:
    table = _table(
        amount=[1.0, float("nan"), -1.0, 2.0],
        lat=[0.0, 91.2, 0.0, None],
        card_id=["tok_1", None, "4111111111111111", None],
        currency=["EUR", "eur", None, None],
    )
    check = validate_rows("payment", table)
    assert check.keep.to_pylist() == [True, False, False, True]
    assert check.reasons.to_pylist() == [
        None,
        "lat: above 90; amount: not a finite number; "
        "currency: must be an ISO 4217 currency code in upper case, e.g. 'EUR'",
        "card_id: looks like a raw card number (PAN); send a token or keyed hash instead; amount: below 0",
        None,
    ]
    assert check.rejected == 2


def test_validate_rows__reasons_never_echo_values() -> None:
    check = validate_rows("payment", _table(card_id=["4111111111111111", None, None, None]))
    assert "4111" not in (check.reasons[0].as_py() or "")


def test_validate_rows__null_in_required_column_is_missing() -> None:
    check = validate_rows("network", _table(event_id=["a", None, "c", ""]))
    assert check.reasons.to_pylist() == [
        None,
        "event_id: missing",
        None,
        "event_id: shorter than 1 character(s)",
    ]


def test_validate_rows__large_string_accepted_like_string() -> None:
    table = _table(country=pa.array(["GB", "gb", None, "FR"], pa.large_string()))
    check = validate_rows("auth", table)
    assert check.keep.to_pylist() == [True, False, True, True]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (_table(colour=["r"] * 4), "unknown column"),
        (pa.table({"event_id": ["a"], "source": ["s"]}), "missing required column"),
        (_table(ts=pa.array([0, 0, 0, 0], pa.timestamp("s"))), "has no time zone"),
        (_table(dst_port=["x", "y", "z", "w"]), "cannot be cast safely"),
    ],
)
def test_validate_rows__batch_problems_raise_like_conform_batch(table: pa.Table, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        validate_rows("network", table)
    with pytest.raises(SchemaError, match=message):
        conform_batch("network", table)


def test_validate_rows__agrees_with_conform_batch() -> None:
    table = _table(dst_port=[1, 70000, 3, 4])
    assert validate_rows("network", table).reasons.to_pylist()[1] == "dst_port: above 65535"
    with pytest.raises(SchemaError, match="'dst_port': 1 value\\(s\\) above 65535 \\(first at row 1\\)"):
        conform_batch("network", table)
    good = table.filter(validate_rows("network", table).keep)
    assert conform_batch("network", good).num_rows == 3


def test_validate_rows__empty_table() -> None:
    check = validate_rows("cloud", _table().slice(0, 0))
    assert len(check.keep) == 0
    assert check.rejected == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789", min_size=13, max_size=19), min_size=1, max_size=30))
def test_row_reasons__card_number_check_matches_the_model(numbers: list[str]) -> None:
    # the vectorised Luhn check and the model's per-value one must agree on every digit string
    reasons = row_reasons("payment", pl.DataFrame({"card_id": numbers})).to_list()
    assert [reason is not None for reason in reasons] == [_luhn_ok(number) for number in numbers]


def test_row_rules__flags_fold_into_one_pass_and_reasons_follow() -> None:
    frame = pl.DataFrame(
        {
            "lat": [10.0, float("nan"), 95.0, None],
            "country": ["GB", "gb", None, "FR"],
            "event_id": ["a", "x" * 200, "c", ""],
        }
    )
    rules = [rule for rule in row_rules("auth") if rule.column in frame.columns]
    flagged = frame.select(pl.any_horizontal(rule.flag for rule in rules)).to_series().to_list()
    assert flagged == [False, True, True, True]
    assert row_reasons("auth", frame).to_list() == [
        None,
        "event_id: longer than 128 characters; lat: not a finite number; "
        "country: must be an ISO 3166-1 alpha-2 country code in upper case, e.g. 'GB'",
        "lat: above 90",
        "event_id: shorter than 1 character(s)",
    ]


def test_row_rules__applies_only_where_a_column_can_break_them() -> None:
    missing = next(rule for rule in row_rules("network") if rule.problem == "missing")
    above = next(
        rule for rule in row_rules("network") if rule.column == "dst_port" and "above" in rule.problem
    )
    assert (missing.applies(0, 10), missing.applies(3, 10)) == (False, True)
    assert (above.applies(10, 10), above.applies(9, 10)) == (False, True)
    per_value = {rule.column for rule in row_rules("payment") if rule.per_value}
    assert {"currency", "channel", "mcc", "country"} <= per_value
    assert "card_id" not in per_value


def test_validate_rows__long_text_counted_in_characters_not_bytes() -> None:
    table = _table(event_id=["é" * 128, "é" * 129, "c", "d"])
    assert validate_rows("auth", table).reasons.to_pylist() == [
        None,
        "event_id: longer than 128 characters",
        None,
        None,
    ]
