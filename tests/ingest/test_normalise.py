"""Normaliser: every mapping feature on small inline data, per-row rejects, and a property test."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_series_equal

from finsecure.event.schemas import Domain
from finsecure.ingest.mapping import Mapping
from finsecure.ingest.normalise import (
    Normaliser,
    NormaliseResult,
    _convert,
    _matches,
    canonical_polars_schema,
)
from finsecure.ingest.readers import OFFSET_COLUMN, parse_records
from finsecure.ingest.sources import canonical_mapping

UTC = dt.UTC


def _run(fields: dict[str, Any], raw: dict[str, list[Any]] | pl.DataFrame, **extra: Any) -> NormaliseResult:
    data: dict[str, Any] = {"name": "t", "read": {"format": "ndjson"}, "domain": "payment", "fields": fields}
    data.update(extra)
    frame = raw if isinstance(raw, pl.DataFrame) else pl.DataFrame(raw)
    # conversion tests: no plausibility window for ts (tests/security covers it)
    normaliser = Normaliser(Mapping.from_dict(data), "unit", earliest=None, max_future=None)
    return normaliser.normalise(frame, first_offset=100)


TS = {"column": "t", "timestamp": {"unit": "s"}}


def _reasons(result: NormaliseResult) -> list[tuple[int, str]]:
    return list(
        zip(
            result.rejects.column("offset").to_pylist(),
            result.rejects.column("reason").to_pylist(),
            strict=True,
        )
    )


def test_normalise__output_has_exact_canonical_schema() -> None:
    result = _run({"ts": TS}, {"t": [0, 1]})
    frame = result.frames[Domain.payment]
    assert frame.schema == canonical_polars_schema("payment")
    assert frame["source"].to_list() == ["t", "t"]
    assert frame["tenant"].to_list() == ["default", "default"]
    assert frame["domain"].to_list() == ["payment", "payment"]


def test_normalise__event_id_stable_from_source_and_offset() -> None:
    mapping = Mapping.from_dict(
        {"name": "t", "read": {"format": "csv"}, "domain": "auth", "fields": {"ts": TS}}
    )
    first = Normaliser(mapping, "a.csv").normalise(pl.DataFrame({"t": [0, 1]}), 5).frames[Domain.auth]
    again = Normaliser(mapping, "a.csv").normalise(pl.DataFrame({"t": [0, 1]}), 5).frames[Domain.auth]
    other = Normaliser(mapping, "b.csv").normalise(pl.DataFrame({"t": [0, 1]}), 5).frames[Domain.auth]
    assert first["event_id"].to_list() == again["event_id"].to_list()
    assert first["event_id"][0].startswith("t-")
    assert first["event_id"][0].endswith("-5")
    assert set(first["event_id"]).isdisjoint(set(other["event_id"]))


def test_normalise__nested_paths_lists_and_json_text() -> None:
    raw = pl.DataFrame(
        {
            "t": [0, 1],
            "who": [{"key": "AKIA1", "inner": {"id": "u1"}}, {"key": None, "inner": {"id": None}}],
            "items": [[{"arn": "r1"}], []],
            "blob": ['{"user": {"upn": "a@b"}}', "not json"],
        }
    )
    result = _run(
        {
            "ts": TS,
            "device_id": "who.key",
            "user_id": "who.inner.id",
            "merchant_id": "items.0.arn",
            "account_id": "blob.user.upn",
            "payee_id": "who.missing",
        },
        raw,
    )
    frame = result.frames[Domain.payment]
    assert frame.select("device_id", "user_id", "merchant_id", "account_id", "payee_id").rows() == [
        ("AKIA1", "u1", "r1", "a@b", None),
        (None, None, None, None, None),
    ]


def test_normalise__missing_columns_are_null_not_errors() -> None:
    result = _run({"ts": TS, "amount": {"column": "absent", "cast": "float"}}, {"t": [0]})
    assert result.frames[Domain.payment]["amount"].to_list() == [None]


def test_normalise__const_template_map_cases_and_regex() -> None:
    raw = {"t": [0, 1, 2], "term": [7, 8, None], "cat": ["food_pos", "shop_net", "travel"]}
    result = _run(
        {
            "ts": TS,
            "currency": {"const": "EUR"},
            "terminal_id": {"template": "T{term}-{$offset}"},
            "channel": {
                "column": "cat",
                "regex": "_(pos|net)$",
                "map": {"pos": "pos", "net": "ecommerce"},
                "default": None,
            },
            "merchant_category": {"column": "cat", "map": {"travel": "trips"}},
            "card_present": {
                "cases": [{"when": {"column": "cat", "matches": "_pos$"}, "value": True}],
                "default": False,
            },
            "entry_mode": {"column": "cat", "upper": True, "null_if": ["TRAVEL"]},
        },
        raw,
    )
    frame = result.frames[Domain.payment]
    assert frame.select(
        "currency", "terminal_id", "channel", "merchant_category", "card_present", "entry_mode"
    ).rows() == [
        ("EUR", "T7-100", "pos", "food_pos", True, "FOOD_POS"),
        ("EUR", "T8-101", "ecommerce", "shop_net", False, "SHOP_NET"),
        ("EUR", None, None, "trips", False, None),
    ]


def test_normalise__casts_and_their_failures() -> None:
    raw = {
        "t": ["0", "1", "2", "3"],
        "amt": ["1.5", " 2 ", "abc", "1e999"],
        "present": ["yes", "0", "maybe", None],
        "port": ["5411", "5999.0", "1.5", "x"],
    }
    result = _run(
        {
            "ts": TS,
            "amount": {"column": "amt", "cast": "float"},
            "card_present": {"column": "present", "cast": "bool"},
            "mcc": {"column": "port", "cast": "int"},
        },
        raw,
    )
    frame = result.frames[Domain.payment]
    assert frame.select("amount", "card_present", "mcc").rows() == [(1.5, True, "5411"), (2.0, False, "5999")]
    assert _reasons(result) == [
        (102, "amount: not a number; mcc: not a whole number in range; card_present: not true/false"),
        (103, "mcc: not a whole number in range; amount: not a finite number; amount: above 1000000000000"),
    ]


def test_normalise__mcc_from_int_cast_back_to_text() -> None:
    result = _run({"ts": TS, "mcc": {"column": "m", "cast": "int"}}, {"t": [0], "m": ["5411"]})
    assert result.frames[Domain.payment]["mcc"].to_list() == ["5411"]


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ({"unit": "s"}, 1_700_000_000, dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ({"unit": "ms"}, 1_700_000_000_123, dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        ({"unit": "s", "start": "2018-04-01T00:00:00Z"}, "90", dt.datetime(2018, 4, 1, 0, 1, 30, tzinfo=UTC)),
        (
            {"format": "%Y-%m-%d %H:%M:%S", "timezone": "Europe/Paris"},
            "2024-07-01 14:00:00",
            dt.datetime(2024, 7, 1, 12, tzinfo=UTC),
        ),
        ({"format": "iso8601"}, "2024-05-01T10:02:11+02:00", dt.datetime(2024, 5, 1, 8, 2, 11, tzinfo=UTC)),
        (
            {"format": "iso8601"},
            "2021-08-02T13:11:39.7724491Z",
            dt.datetime(2021, 8, 2, 13, 11, 39, 772449, tzinfo=UTC),
        ),
        (
            {"format": "iso8601", "timezone": "UTC"},
            "2024-05-01T10:02:11",
            dt.datetime(2024, 5, 1, 10, 2, 11, tzinfo=UTC),
        ),
    ],
)
def test_normalise__timestamp_styles(spec: dict[str, Any], value: Any, expected: dt.datetime) -> None:
    result = _run({"ts": {"column": "v", "timestamp": spec}}, {"v": [value]})
    assert result.rejects.num_rows == 0, _reasons(result)
    assert result.frames[Domain.payment]["ts"].to_list() == [expected]


def test_normalise__day_offset_plus_seconds() -> None:
    spec = {"unit": "s", "start": "2018-04-01T00:00:00Z", "days_column": "d"}
    result = _run({"ts": {"column": "s", "timestamp": spec}}, {"s": ["31", "130"], "d": ["0", "2"]})
    assert result.frames[Domain.payment]["ts"].to_list() == [
        dt.datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC),
        dt.datetime(2018, 4, 3, 0, 2, 10, tzinfo=UTC),
    ]


def test_normalise__naive_or_bad_times_rejected() -> None:
    result = _run({"ts": "v"}, {"v": ["2024-05-01T10:02:11", "yesterday", "2024-05-01T10:02:11Z", None]})
    assert result.frames[Domain.payment].height == 1
    assert _reasons(result) == [
        (100, "ts: not a valid time (expected ISO 8601 with a time zone); ts: missing"),
        (101, "ts: not a valid time (expected ISO 8601 with a time zone); ts: missing"),
        (103, "ts: missing"),
    ]


def test_normalise__keyed_hash_turns_card_numbers_into_tokens() -> None:
    raw = {"t": [0, 1, 2], "pan": ["4111111111111111", "4111111111111111", "5500005555555559"]}
    result = _run({"ts": TS, "card_id": {"column": "pan", "hash": "tok_"}}, raw)
    cards = result.frames[Domain.payment]["card_id"].to_list()
    assert cards[0] == cards[1] != cards[2]
    assert all(card.startswith("tok_") and len(card) == 36 for card in cards)
    other_key = Normaliser(
        Mapping.from_dict(
            {
                "name": "t",
                "read": {"format": "csv"},
                "domain": "payment",
                "fields": {"ts": TS, "card_id": {"column": "pan", "hash": True}},
            }
        ),
        "unit",
        hash_key=b"another-key",
    ).normalise(pl.DataFrame(raw))
    assert other_key.frames[Domain.payment]["card_id"][0] != cards[0].removeprefix("tok_")


def test_normalise__raw_card_number_rejected_and_redacted_when_hashed_elsewhere() -> None:
    raw = {"t": [0, 1], "pan": ["4111111111111111", "4111111111111111"], "amt": ["1", "-5"]}
    result = _run(
        {"ts": TS, "card_id": {"column": "pan", "hash": True}, "amount": {"column": "amt", "cast": "float"}},
        raw,
    )
    assert _reasons(result) == [(101, "amount: below 0")]
    raw_text = result.rejects.column("raw")[0].as_py()
    assert "4111" not in raw_text
    assert "[redacted]" in raw_text
    plain = _run({"ts": TS, "card_id": "pan"}, raw)
    assert plain.frames[Domain.payment].height == 0
    assert (
        _reasons(plain)[0][1]
        == "card_id: looks like a raw card number (PAN); send a token or keyed hash instead"
    )


def test_normalise__labels_from_conditions() -> None:
    raw = {"t": [0, 1, 2], "attack": ["normal", "neptune", None]}
    result = _run(
        {
            "ts": TS,
            "label": {"when": {"column": "attack", "ne": "normal"}},
            "label_detail": {"column": "attack", "null_if": ["normal"]},
        },
        raw,
    )
    frame = result.frames[Domain.payment]
    assert frame.select("label", "label_detail").rows() == [(0, None), (1, "neptune"), (None, None)]
    assert frame.schema["label"] == pl.Int8


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"column": "n", "gt": 2}, [False, False, True]),
        ({"column": "n", "in": [1, 3]}, [True, False, True]),
        ({"column": "s", "not_in": ["a"]}, [False, True, True]),
        ({"column": "s", "is_null": True}, [False, False, False]),
        ({"all": [{"column": "n", "ge": 2}, {"column": "s", "equals": "c"}]}, [False, False, True]),
        ({"any": [{"column": "n", "le": 1}, {"column": "s", "equals": "c"}]}, [True, False, True]),
        ({"not": {"column": "s", "matches": "^[ab]$"}}, [False, False, True]),
    ],
)
def test_normalise__conditions(condition: dict[str, Any], expected: list[bool]) -> None:
    raw = {"t": [0, 1, 2], "n": [1, 2, 3], "s": ["a", "b", "c"]}
    result = _run({"ts": TS, "card_present": {"when": condition}}, raw)
    assert result.frames[Domain.payment]["card_present"].to_list() == expected


def test_normalise__vars_and_domain_routing_with_unmatched() -> None:
    data = {
        "name": "mixed",
        "read": {"format": "ndjson"},
        "vars": {"kind": {"column": "Type", "lower": True}},
        "fields": {"ts": TS},
        "domains": [
            {
                "domain": "auth",
                "when": {"column": "$kind", "equals": "signin"},
                "fields": {"action": {"const": "login"}},
            },
            {"domain": "cloud", "when": {"column": "$kind", "equals": "audit"}, "fields": {"action": "Op"}},
        ],
    }
    raw = pl.DataFrame({"t": [0, 1, 2], "Type": ["SignIn", "Audit", "Other"], "Op": ["x", "Add user", "y"]})
    result = Normaliser(Mapping.from_dict(data), "unit").normalise(raw)
    assert result.frames[Domain.auth]["action"].to_list() == ["login"]
    assert result.frames[Domain.cloud]["action"].to_list() == ["Add user"]
    assert _reasons(result) == [(2, "matches none of the mapping's domain rules")]
    assert result.rejects_for(None).num_rows == 1
    data["unmatched"] = "skip"
    skipped = Normaliser(Mapping.from_dict(data), "unit").normalise(raw)
    assert (skipped.rejects.num_rows, skipped.skipped) == (0, 1)


def test_normalise__absurd_values_rejected_one_by_one() -> None:
    raw = {"t": [0, 1, 2, 3], "lat": [10.0, 91.2, float("nan"), 0.0], "amt": [1.0, 1.0, 1.0, float("inf")]}
    result = _run({"ts": TS, "lat": "lat", "amount": "amt"}, raw)
    assert result.frames[Domain.payment]["lat"].to_list() == [10.0]
    assert _reasons(result) == [
        (101, "lat: above 90"),
        (102, "lat: not a finite number"),
        (103, "amount: not a finite number; amount: above 1000000000000"),
    ]
    assert result.rejects.column("domain").to_pylist() == ["payment"] * 3
    assert result.rejects.column("source").to_pylist() == ["unit"] * 3


def test_normalise__truncate_strip_scale_and_default() -> None:
    raw = {"t": [0, 1], "ua": ["x" * 2000, None], "cents": ["150", "7"], "tenant": [None, "bank-b"]}
    result = _run(
        {
            "ts": TS,
            "decline_reason": {"column": "ua", "strip": True, "truncate": 256},
            "amount": {"column": "cents", "scale": 0.01},
            "tenant": {"column": "tenant", "default": "bank-a"},
        },
        raw,
    )
    frame = result.frames[Domain.payment]
    assert [len(v) if v else None for v in frame["decline_reason"]] == [256, None]
    assert frame["amount"].to_list() == [1.5, 0.07]
    assert frame["tenant"].to_list() == ["bank-a", "bank-b"]


def test_normalise__offsets_from_reader_column() -> None:
    raw = pl.DataFrame({"t": [0, 1], "amt": ["x", "1"], OFFSET_COLUMN: [7, 42]})
    result = _run({"ts": TS, "amount": {"column": "amt", "cast": "float"}}, raw)
    assert _reasons(result) == [(7, "amount: not a number")]


def test_normalise__empty_chunk() -> None:
    result = _run({"ts": TS}, pl.DataFrame({"t": []}, schema={"t": pl.Int64}))
    assert result.frames[Domain.payment].height == 0
    assert result.rejects.num_rows == 0


CANONICAL = Normaliser(canonical_mapping("ndjson"), "prop")

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(
        ["payment", "auth", "network", "cloud", "2024-05-01T12:00:00Z", "4111111111111111", "GB", "1e999"]
    ),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_keys = st.sampled_from(
    [
        "event_id",
        "ts",
        "domain",
        "source",
        "lat",
        "lon",
        "amount",
        "card_id",
        "country",
        "dst_port",
        "label",
        "action",
        "extra",
    ]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(_keys | st.text(max_size=8), _values, max_size=8), min_size=1, max_size=5))
def test_normalise__any_json_object_is_kept_or_rejected_with_a_reason(records: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(record) for record in records).encode()
    frame, parse_rejects = parse_records(body)
    result = CANONICAL.normalise(frame)
    kept = sum(f.height for f in result.frames.values())
    assert kept + result.rejects.num_rows + parse_rejects.num_rows == len(records)
    assert all(reason for reason in result.rejects.column("reason").to_pylist())
    for domain, canonical in result.frames.items():
        assert canonical.schema == canonical_polars_schema(domain)
        assert all(math.isfinite(v) for v in canonical["lat"].drop_nulls())


_spellings = st.one_of(
    st.text(alphabet=st.sampled_from("0123456789 .+-eE_xXtrufalsyn"), max_size=8),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["1", "0", "true", "False", " yes ", "1.0", "5.0", "1e999", "-0", "+7", "0x10"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_spellings, min_size=1, max_size=20))
def test_convert__fast_reading_agrees_with_exact_where_it_reads(values: list[str]) -> None:
    # The normaliser reads every row the fast way and re-reads only failures the exact way, so a
    # value the fast way accepts must come out exactly as the exact way reads it.
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    for target in (pl.Float64(), pl.Int64(), pl.Int32(), pl.Int8(), pl.Boolean()):
        fast, _ = _convert(pl.col("v"), pl.String(), target, fast=True)
        exact, _ = _convert(pl.col("v"), pl.String(), target)
        both = frame.select(fast.alias("fast"), exact.alias("exact"))
        accepted = both.filter(pl.col("fast").is_not_null())
        assert_series_equal(accepted["fast"], accepted["exact"], check_names=False)  # NaN equals NaN here


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_normalise__whole_number_times_read_exactly(unit: str) -> None:
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1}[unit]
    limit = 2**53 // scale  # beyond it the fast integer reading steps aside for the float one
    values = [0, 1_714_564_800, -86_400, limit - 1, limit + 1, 2**62]
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    for raw in ({"v": [str(v) for v in values]}, {"v": values}):
        result = _run({"ts": {"column": "v", "timestamp": {"unit": unit}}}, raw)
        times = result.frames[Domain.payment]["ts"].to_list()
        assert times[:4] == [epoch + dt.timedelta(microseconds=v * scale) for v in values[:4]]
        # past 2**53 microseconds a float reads it, to the nearest representable microsecond
        assert abs(times[4] - (epoch + dt.timedelta(microseconds=values[4] * scale))) <= dt.timedelta(
            microseconds=1
        )
        problem = f"not a valid time (expected a number of {unit} since the Unix epoch)"
        assert _reasons(result) == [(105, f"ts: {problem}; ts: missing")]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("_pos$", [True, False, False, False, None]),
        ("^food", [True, False, False, False, None]),
        ("^food_pos$", [True, False, False, False, None]),
        ("pos", [True, False, True, False, None]),
        ("o+d", [True, False, False, True, None]),  # a real regex
        ("^f.od_", [True, False, False, False, None]),  # "." is a regex, not a literal
    ],
)
def test_matches__plain_patterns_read_like_regexes(pattern: str, expected: list[bool | None]) -> None:
    frame = pl.DataFrame({"s": ["food_pos", "shop_net", "pos_x", "good", None]})
    assert frame.select(_matches(pl.col("s"), pattern)).to_series().to_list() == expected
    assert frame.select(pl.col("s").str.contains(pattern)).to_series().to_list() == expected


def test_normalise__unknown_fields_rejected_only_when_asked() -> None:
    raw = {"t": [0, 1], "amt": ["1", "2"], "colour": [None, "red"], "*": [None, None]}
    fields = {"ts": TS, "amount": {"column": "amt", "cast": "float"}}
    assert _run(fields, raw).rejects.num_rows == 0
    strict = _run(fields, raw, unknown_fields="reject")
    assert strict.frames[Domain.payment]["amount"].to_list() == [1.0]
    assert _reasons(strict) == [(101, "colour: not a field of payment events")]


def test_normalise__flagged_row_read_the_exact_way_keeps_its_place() -> None:
    # " 2 " fails the fast reading (no trimming there) but the exact one reads it: kept, in order
    raw = {"t": [0, 1, 2, 3], "amt": ["1", " 2 ", "x", "4"]}
    result = _run({"ts": TS, "amount": {"column": "amt", "cast": "float"}}, raw)
    assert result.frames[Domain.payment]["amount"].to_list() == [1.0, 2.0, 4.0]
    assert _reasons(result) == [(102, "amount: not a number")]


def test_normalise__card_token_of_sixteen_digits_failing_luhn_kept() -> None:
    raw = {"t": [0, 1], "card": ["4111111111111112", "4111111111111111"]}
    result = _run({"ts": TS, "card_id": "card"}, raw)
    assert result.frames[Domain.payment]["card_id"].to_list() == ["4111111111111112"]
    assert len(_reasons(result)) == 1
