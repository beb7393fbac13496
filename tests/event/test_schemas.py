"""Tests for the canonical event schema (finsecure.event.schemas)."""

from __future__ import annotations

import datetime as dt
import doctest
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import BaseModel, ValidationError

from finsecure.event import schemas
from finsecure.event.schemas import (
    ARROW_SCHEMAS,
    ENTITY_KEYS,
    EVENT_MODELS,
    HEADER_FIELDS,
    LABEL_FIELDS,
    MAX_AMOUNT,
    SCHEMA_VERSION,
    AuthEvent,
    CloudEvent,
    Domain,
    EventHeader,
    NetworkEvent,
    PaymentEvent,
    SchemaError,
    arrow_schema,
    batch_to_events,
    conform_batch,
    events_to_batch,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"
TS = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
PAN = "4111111111111111"  # the classic Visa test number; passes the Luhn check

REQUIRED: dict[str, Any] = {"event_id": "e-1", "ts": TS, "source": "test"}

# One fully populated, valid event per domain (every field set, so the round trip covers all columns).
FULL_HEADER: dict[str, Any] = {
    **REQUIRED,
    "tenant": "bank-a",
    "user_id": "u-1",
    "account_id": "acc-1",
    "card_id": "tok-1",
    "device_id": "dev-1",
    "src_ip": "192.0.2.10",
    "dst_ip": "2001:db8::1",
    "merchant_id": "m-1",
    "lat": 51.5,
    "lon": -0.12,
    "country": "GB",
    "label": 1,
    "label_detail": "neptune",
}
FULL_DOMAIN: dict[Domain, dict[str, Any]] = {
    Domain.network: {
        "src_port": 50000,
        "dst_port": 443,
        "protocol": "tcp",
        "service": "http",
        "direction": "outbound",
        "duration_s": 1.5,
        "bytes_out": 2**40,
        "bytes_in": 0,
        "packets_out": 10,
        "packets_in": 12,
        "conn_state": "SF",
        "wrong_fragments": 0,
        "urgent_packets": 1,
        "failed_logins": 3,
        "logged_in": True,
    },
    Domain.cloud: {
        "cloud_provider": "aws",
        "cloud_region": "eu-west-1",
        "cloud_account_id": "123456789012",
        "service": "s3.amazonaws.com",
        "action": "GetObject",
        "outcome": "failure",
        "read_only": True,
        "principal_id": "arn:aws:iam::123456789012:user/alice",
        "principal_type": "IAMUser",
        "access_key_id": "AKIAEXAMPLE",
        "mfa_used": False,
        "user_agent": "aws-cli/2.15.0",
        "resource": "my-bucket",
        "error_code": "AccessDenied",
    },
    Domain.auth: {
        "action": "login",
        "outcome": "success",
        "auth_method": "password",
        "mfa_used": True,
        "app": "web_banking",
        "user_agent": "Mozilla/5.0",
        "failure_reason": "wrong_password",
        "payee_id": "payee-1",
    },
    Domain.payment: {
        "transaction_id": "tx-1",
        "amount": 99.95,
        "currency": "USD",
        "channel": "pos",
        "merchant_category": "grocery_pos",
        "mcc": "5411",
        "terminal_id": "term-1",
        "payee_id": "payee-1",
        "card_present": True,
        "entry_mode": "chip",
        "auth_result": "declined",
        "decline_reason": "insufficient_funds",
        "home_lat": 40.7,
        "home_lon": -74.0,
    },
}


def full_event(domain: Domain) -> EventHeader:
    return EVENT_MODELS[domain](**FULL_HEADER, **FULL_DOMAIN[domain])


def minimal_event(domain: Domain, **extra: Any) -> EventHeader:
    return EVENT_MODELS[domain](**{**REQUIRED, **extra})


def raw_table(**columns: Any) -> pa.Table:
    """A normaliser-style table: the required columns plus the given ones."""
    base: dict[str, Any] = {
        "event_id": ["e-1"],
        "ts": pa.array([TS], pa.timestamp("us", tz="UTC")),
        "source": ["test"],
    }
    base.update(columns)
    return pa.table(base)


# ------------------------------------------------------------------------------------------------
# Arrow schemas and models agree
# ------------------------------------------------------------------------------------------------

_PY_TO_ARROW: dict[type, typing.Callable[[pa.DataType], bool]] = {
    str: lambda t: pa.types.is_string(t),
    float: lambda t: pa.types.is_float64(t),
    int: lambda t: pa.types.is_integer(t),
    bool: lambda t: pa.types.is_boolean(t),
    dt.datetime: lambda t: pa.types.is_timestamp(t) and t.tz == "UTC" and t.unit == "us",
}


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(python type, optional?) of a field annotation such as ``int | None`` or ``Literal[...] | None``."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        (annotation,) = args
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        assert all(isinstance(v, str) for v in values)
        return str, optional
    if isinstance(annotation, type) and issubclass(annotation, Domain):
        return str, optional
    return annotation, optional


@pytest.mark.parametrize("domain", list(Domain))
def test_arrow_schema__field_names_match_model_in_order(domain: Domain) -> None:
    assert arrow_schema(domain).names == list(EVENT_MODELS[domain].model_fields)


@pytest.mark.parametrize("domain", list(Domain))
def test_arrow_schema__types_and_nullability_match_model(domain: Domain) -> None:
    model = EVENT_MODELS[domain]
    for field in arrow_schema(domain):
        info = model.model_fields[field.name]
        py_type, optional = _base_type(info.annotation)
        assert _PY_TO_ARROW[py_type](field.type), f"{domain}.{field.name}: {py_type} vs {field.type}"
        assert field.nullable == optional, f"{domain}.{field.name} nullability"
        if optional:
            assert info.default is None, f"{domain}.{field.name} optional fields default to None"


@pytest.mark.parametrize("domain", list(Domain))
def test_arrow_schema__only_header_basics_are_required(domain: Domain) -> None:
    required = [f.name for f in arrow_schema(domain) if not f.nullable]
    assert required == ["event_id", "ts", "domain", "source", "tenant"]


@pytest.mark.parametrize("domain", list(Domain))
def test_arrow_schema__starts_with_header_and_carries_metadata(domain: Domain) -> None:
    schema = arrow_schema(domain)
    assert tuple(schema.names[: len(HEADER_FIELDS)]) == HEADER_FIELDS
    assert len(set(schema.names)) == len(schema.names)
    assert schema.metadata[b"finsecure.domain"] == domain.value.encode()
    assert schema.metadata[b"finsecure.schema_version"] == SCHEMA_VERSION.encode()
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")


def test_arrow_schema__registry_constants_are_consistent() -> None:
    assert set(ARROW_SCHEMAS) == set(EVENT_MODELS) == set(Domain)
    assert set(ENTITY_KEYS) <= set(HEADER_FIELDS)
    assert set(LABEL_FIELDS) <= set(HEADER_FIELDS)
    assert not set(ENTITY_KEYS) & set(LABEL_FIELDS)
    assert all(arrow_schema(d).field(k).type == pa.string() for d in Domain for k in ENTITY_KEYS)
    with pytest.raises(TypeError):
        ARROW_SCHEMAS[Domain.auth] = pa.schema([])  # type: ignore[index]


def test_arrow_schema__accepts_name_and_rejects_unknown_domain() -> None:
    assert arrow_schema("cloud") is ARROW_SCHEMAS[Domain.cloud]
    with pytest.raises(SchemaError, match=r"unknown domain 'dns'.*network, cloud, auth, payment"):
        arrow_schema("dns")


# ------------------------------------------------------------------------------------------------
# Model validation
# ------------------------------------------------------------------------------------------------


def _single_error(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, Any]:
    errors = exc.value.errors()
    assert len(errors) == 1, errors
    return dict(errors[0])


# (model, bad fields, field the error must name, words the message must contain)
BAD_INPUTS: list[tuple[type[EventHeader], dict[str, Any], str, str]] = [
    (NetworkEvent, {"ts": dt.datetime(2024, 5, 1, 12, 0)}, "ts", "time zone"),
    (NetworkEvent, {"ts": "2024-05-01T12:00:00"}, "ts", "time zone"),
    (NetworkEvent, {"lat": 91.0}, "lat", "less than or equal to 90"),
    (NetworkEvent, {"lat": -90.5}, "lat", "greater than or equal to -90"),
    (NetworkEvent, {"lon": 180.01}, "lon", "less than or equal to 180"),
    (PaymentEvent, {"amount": math.nan}, "amount", "finite"),
    (PaymentEvent, {"amount": math.inf}, "amount", "finite"),
    (PaymentEvent, {"amount": -0.01}, "amount", "greater than or equal to 0"),
    (PaymentEvent, {"amount": MAX_AMOUNT * 10}, "amount", "less than or equal to"),
    (PaymentEvent, {"home_lat": 95.0}, "home_lat", "less than or equal to 90"),
    (PaymentEvent, {"domain": "network"}, "domain", "must be 'payment'"),
    (AuthEvent, {"domain": "auth2"}, "domain", "must be 'auth'"),
    (CloudEvent, {"colour": "red"}, "colour", "Extra inputs are not permitted"),
    (NetworkEvent, {"country": "gb"}, "country", "ISO 3166-1 alpha-2"),
    (NetworkEvent, {"country": "GBR"}, "country", "ISO 3166-1 alpha-2"),
    (NetworkEvent, {"dst_port": 70000}, "dst_port", "less than or equal to 65535"),
    (NetworkEvent, {"src_port": -1}, "src_port", "greater than or equal to 0"),
    (NetworkEvent, {"bytes_in": -5}, "bytes_in", "greater than or equal to 0"),
    (NetworkEvent, {"bytes_out": 2**63}, "bytes_out", "less than or equal to"),
    (NetworkEvent, {"duration_s": -1.0}, "duration_s", "greater than or equal to 0"),
    (NetworkEvent, {"protocol": "TCP"}, "protocol", "lower case"),
    (NetworkEvent, {"direction": "sideways"}, "direction", "inbound"),
    (NetworkEvent, {"src_ip": "AWS Internal"}, "src_ip", "IPv4 or IPv6"),
    (NetworkEvent, {"dst_ip": "300.1.1.1"}, "dst_ip", "IPv4 or IPv6"),
    (PaymentEvent, {"card_id": PAN}, "card_id", "raw card number"),
    (PaymentEvent, {"currency": "eur"}, "currency", "ISO 4217"),
    (PaymentEvent, {"mcc": "54a1"}, "mcc", "4-digit"),
    (PaymentEvent, {"channel": "card_present"}, "channel", "pos"),
    (PaymentEvent, {"auth_result": "maybe"}, "auth_result", "approved"),
    (AuthEvent, {"action": "hack"}, "action", "login"),
    (CloudEvent, {"outcome": "ok"}, "outcome", "success"),
    (CloudEvent, {"cloud_provider": "AWS"}, "cloud_provider", "aws"),
    (NetworkEvent, {"label": 2}, "label", "less than or equal to 1"),
    (NetworkEvent, {"event_id": ""}, "event_id", "at least 1 character"),
    (NetworkEvent, {"event_id": "x" * 129}, "event_id", "at most 128 characters"),
    (NetworkEvent, {"user_id": ""}, "user_id", "at least 1 character"),
    (CloudEvent, {"user_agent": "x" * 1025}, "user_agent", "at most 1024 characters"),
    (NetworkEvent, {"source": "s" * 65}, "source", "at most 64 characters"),
]


@pytest.mark.parametrize(
    ("model", "bad", "field", "words"),
    BAD_INPUTS,
    ids=[f"{m.__name__}-{f}-{i}" for i, (m, _, f, _) in enumerate(BAD_INPUTS)],
)
def test_event_model__rejects_bad_value_naming_field(
    model: type[EventHeader], bad: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        model(**{**REQUIRED, **bad})
    error = _single_error(exc)
    assert error["loc"] == (field,)
    assert words in error["msg"]
    assert field in str(exc.value)


@pytest.mark.parametrize("missing", ["event_id", "ts", "source"])
def test_event_model__rejects_missing_required(missing: str) -> None:
    fields = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(ValidationError) as exc:
        NetworkEvent(**fields)
    assert _single_error(exc)["loc"] == (missing,)


def test_event_model__ts_converted_to_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    event = AuthEvent(**{**REQUIRED, "ts": dt.datetime(2024, 5, 1, 14, 0, tzinfo=paris)})
    assert event.ts.utcoffset() == dt.timedelta(0)
    assert event.ts == dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    parsed = AuthEvent(**{**REQUIRED, "ts": "2024-05-01T14:00:00+02:00"})
    assert parsed.ts == event.ts
    assert parsed.ts.tzinfo is dt.UTC


def test_event_model__error_messages_hide_input() -> None:
    with pytest.raises(ValidationError) as exc:
        PaymentEvent(**REQUIRED, card_id=PAN)
    assert PAN not in str(exc.value)
    assert "card_id" in str(exc.value)


# Public test card numbers (Visa, Mastercard, Amex, Visa): all pass the Luhn check.
TEST_PANS = ["4111111111111111", "5555555555554444", "378282246310005", "4012888888881881"]


@pytest.mark.parametrize("pan", TEST_PANS)
def test_event_model__rejects_raw_card_numbers(pan: str) -> None:
    with pytest.raises(ValidationError, match="raw card number"):
        PaymentEvent(**REQUIRED, card_id=pan)
    with pytest.raises(SchemaError, match=r"'card_id': 1 value\(s\) looks like a raw card number"):
        conform_batch("payment", raw_table(card_id=[pan]))


@pytest.mark.parametrize(
    "token", ["4111111111111112", "5555555555554445", "378282246310006", "123", "tok_4111"]
)
def test_event_model__card_tokens_failing_luhn_are_accepted(token: str) -> None:
    assert PaymentEvent(**REQUIRED, card_id=token).card_id == token
    assert conform_batch("payment", raw_table(card_id=[token])).column("card_id").to_pylist() == [token]


def test_event_model__ip_addresses_are_canonicalised() -> None:
    event = NetworkEvent(**REQUIRED, src_ip="2001:DB8:0:0::1", dst_ip="10.0.0.1")
    assert (event.src_ip, event.dst_ip) == ("2001:db8::1", "10.0.0.1")


def test_event_model__defaults_domain_and_tenant() -> None:
    for domain in Domain:
        event = minimal_event(domain)
        assert event.domain == domain
        assert event.tenant == "default"
        assert event.label is None


def test_event_model__is_frozen() -> None:
    event = minimal_event(Domain.network)
    with pytest.raises(ValidationError):
        event.user_id = "someone"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# events_to_batch / batch_to_events
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", list(Domain))
def test_events_to_batch__round_trip_full_and_minimal(domain: Domain) -> None:
    events = [full_event(domain), minimal_event(domain, event_id="e-2")]
    batch = events_to_batch(domain, events)
    assert batch.schema.equals(arrow_schema(domain), check_metadata=True)
    assert batch.num_rows == 2
    assert batch_to_events(batch) == events
    # every column of the full event is populated, the minimal one only has the defaults
    row_full, row_min = batch.to_pylist()
    assert all(value is not None for value in row_full.values())
    assert row_min["tenant"] == "default"
    assert row_min["domain"] == domain.value


def test_events_to_batch__values_are_stored_in_utc_microseconds() -> None:
    batch = events_to_batch("payment", [full_event(Domain.payment)])
    ts = batch.column("ts")
    assert ts.type == pa.timestamp("us", tz="UTC")
    assert ts.cast(pa.int64())[0].as_py() == int(TS.timestamp()) * 1_000_000 + 123456
    assert batch.column("amount")[0].as_py() == 99.95


def test_events_to_batch__empty_gives_empty_batch_with_schema() -> None:
    batch = events_to_batch(Domain.cloud, [])
    assert batch.num_rows == 0
    assert batch.schema.equals(arrow_schema(Domain.cloud))
    assert batch_to_events(batch) == []


def test_events_to_batch__rejects_event_of_other_domain() -> None:
    events = [minimal_event(Domain.network), minimal_event(Domain.cloud)]
    with pytest.raises(SchemaError, match=r"events\[1\] is a CloudEvent, expected NetworkEvent"):
        events_to_batch(Domain.network, events)


def test_batch_to_events__infers_domain_without_metadata() -> None:
    batch = events_to_batch(Domain.auth, [full_event(Domain.auth)])
    bare = batch.replace_schema_metadata(None)
    events = batch_to_events(bare)
    assert events == [full_event(Domain.auth)]
    assert type(events[0]) is AuthEvent


def test_batch_to_events__explicit_domain_and_errors() -> None:
    table = raw_table(dst_port=[22])
    (event,) = batch_to_events(table, domain="network")
    assert isinstance(event, NetworkEvent)
    assert event.dst_port == 22
    with pytest.raises(SchemaError, match="cannot tell the domain"):
        batch_to_events(table)
    assert batch_to_events(pa.table({"event_id": pa.array([], pa.string())})) == []


# ------------------------------------------------------------------------------------------------
# conform_batch
# ------------------------------------------------------------------------------------------------


def test_conform_batch__fills_missing_columns_with_nulls_and_defaults() -> None:
    batch = conform_batch("payment", raw_table(amount=[10.0]))
    assert batch.schema.equals(arrow_schema(Domain.payment), check_metadata=True)
    row = batch.to_pylist()[0]
    assert row["domain"] == "payment"
    assert row["tenant"] == "default"
    assert row["amount"] == 10.0
    assert row["currency"] is None
    assert row["card_present"] is None
    assert batch.column("home_lat").null_count == 1


def test_conform_batch__reorders_columns() -> None:
    table = raw_table(dst_port=[80], protocol=["tcp"]).select(
        ["protocol", "source", "dst_port", "ts", "event_id"]
    )
    batch = conform_batch(Domain.network, table)
    assert batch.schema.names == arrow_schema(Domain.network).names
    assert batch.column("dst_port").to_pylist() == [80]
    assert batch.column("protocol").to_pylist() == ["tcp"]


def test_conform_batch__casts_safely() -> None:
    paris = pa.array([TS], pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("ms", tz="Europe/Paris"))
    table = pa.table(
        {
            "event_id": pa.array(["e-1"], pa.large_string()),
            "ts": paris,
            "source": pa.array(["polars"]).dictionary_encode(),
            "dst_port": pa.array([443], pa.int64()),
            "bytes_in": pa.array([7], pa.int8()),
            "duration_s": pa.array([2], pa.int32()),
            "logged_in": pa.array(["true"]),
            "label": pa.array([True]),
            "lat": pa.array([None], pa.null()),
        }
    )
    batch = conform_batch(Domain.network, table)
    assert batch.schema.equals(arrow_schema(Domain.network))
    row = batch.to_pylist()[0]
    assert row["ts"] == TS.replace(microsecond=123000)
    assert (row["event_id"], row["source"], row["dst_port"], row["bytes_in"]) == ("e-1", "polars", 443, 7)
    assert (row["duration_s"], row["logged_in"], row["label"], row["lat"]) == (2.0, True, 1, None)


def test_conform_batch__parses_iso_text_timestamps_with_offset() -> None:
    batch = conform_batch("auth", raw_table(ts=["2024-05-01T14:00:00+02:00"]))
    assert batch.column("ts")[0].as_py() == dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    with pytest.raises(SchemaError, match=r"'ts' cannot be cast safely"):
        conform_batch("auth", raw_table(ts=["2024-05-01T14:00:00"]))


@pytest.mark.parametrize(
    ("column", "array"),
    [
        ("dst_port", pa.array([2**40], pa.int64())),
        ("src_port", pa.array([1.5])),
        ("bytes_in", pa.array(["lots"])),
        ("amount", pa.array([[1.0]])),
        ("ts", pa.array([1], pa.timestamp("ns", tz="UTC"))),
    ],
)
def test_conform_batch__rejects_unsafe_cast_naming_column(column: str, array: pa.Array) -> None:
    domain = Domain.payment if column == "amount" else Domain.network
    with pytest.raises(SchemaError, match=rf"column '{column}' cannot be cast safely from"):
        conform_batch(domain, raw_table(**{column: array}))


def test_conform_batch__rejects_naive_and_numeric_timestamps() -> None:
    with pytest.raises(SchemaError, match=r"column 'ts' has no time zone"):
        conform_batch("network", raw_table(ts=pa.array([TS.replace(tzinfo=None)], pa.timestamp("us"))))
    with pytest.raises(SchemaError, match=r"column 'ts' must be a time-zone-aware timestamp"):
        conform_batch("network", raw_table(ts=pa.array([1_714_564_800], pa.int64())))


def test_conform_batch__rejects_unknown_columns_naming_all() -> None:
    table = raw_table(colour=["red"], amount=[1.0], weight=[3])
    with pytest.raises(SchemaError, match=r"^network batch has unknown column\(s\): amount, colour, weight$"):
        conform_batch("network", table)


def test_conform_batch__rejects_missing_required_naming_them() -> None:
    table = pa.table({"event_id": ["e-1"], "dst_port": [1]})
    with pytest.raises(SchemaError, match=r"missing required column\(s\): ts, source$"):
        conform_batch("network", table)


def test_conform_batch__rejects_nulls_in_required_columns() -> None:
    table = raw_table(event_id=pa.array([None], pa.string()))
    with pytest.raises(SchemaError, match=r"column 'event_id' is required but has 1 null"):
        conform_batch("cloud", table)
    with pytest.raises(SchemaError, match=r"column 'tenant' is required"):
        conform_batch("cloud", raw_table(tenant=pa.array([None], pa.string())))


def test_conform_batch__rejects_duplicate_columns() -> None:
    table = raw_table().append_column("source", pa.array(["again"]))
    with pytest.raises(SchemaError, match=r"duplicate column\(s\): source"):
        conform_batch("network", table)


def test_conform_batch__rejects_rows_of_another_domain() -> None:
    with pytest.raises(SchemaError, match=r"network column 'domain': 1 value\(s\) not one of network"):
        conform_batch("network", raw_table(domain=["cloud"]))


def test_conform_batch__reports_count_and_first_row_without_values() -> None:
    table = pa.table(
        {
            "event_id": ["a", "b", "c", "d"],
            "ts": pa.array([TS] * 4, pa.timestamp("us", tz="UTC")),
            "source": ["t"] * 4,
            "lat": [10.0, 95.0, None, 91.5],
        }
    )
    with pytest.raises(SchemaError, match=r"^auth column 'lat': 2 value\(s\) above 90 \(first at row 1\)$"):
        conform_batch("auth", table)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_conform_batch__rejects_non_finite_floats(value: float) -> None:
    with pytest.raises(SchemaError, match=r"'amount': 1 value\(s\) not a finite number \(first at row 0\)"):
        conform_batch("payment", raw_table(amount=[value]))


def test_conform_batch__accepts_multi_chunk_table() -> None:
    one = raw_table(dst_port=[1])
    table = pa.concat_tables([one, one.set_column(0, "event_id", pa.array(["e-2"]))])
    assert table.column("event_id").num_chunks == 2
    batch = conform_batch("network", table)
    assert batch.num_rows == 2
    assert batch.column("event_id").to_pylist() == ["e-1", "e-2"]


# Every model rule must also hold on the columnar path: (domain, column, bad value, good value).
RULE_CASES: list[tuple[Domain, str, Any, Any]] = [
    (Domain.network, "lat", 91.0, 90.0),
    (Domain.network, "lon", -180.5, -180.0),
    (Domain.network, "lat", math.nan, 0.0),
    (Domain.payment, "home_lon", 181.0, 179.9),
    (Domain.payment, "amount", -1.0, 0.0),
    (Domain.payment, "amount", math.inf, MAX_AMOUNT),
    (Domain.payment, "amount", MAX_AMOUNT * 2, 1e9),
    (Domain.network, "dst_port", 70000, 65535),
    (Domain.network, "src_port", -1, 0),
    (Domain.network, "bytes_out", -1, 0),
    (Domain.network, "failed_logins", -2, 2),
    (Domain.network, "duration_s", -0.5, 0.5),
    (Domain.network, "country", "gb", "GB"),
    (Domain.network, "country", "GBR", "GB"),
    (Domain.payment, "currency", "eur", "EUR"),
    (Domain.payment, "mcc", "541", "5411"),
    (Domain.network, "protocol", "TCP", "tcp"),
    (Domain.network, "direction", "sideways", "inbound"),
    (Domain.cloud, "outcome", "ok", "success"),
    (Domain.cloud, "cloud_provider", "AWS", "aws"),
    (Domain.auth, "action", "hack", "payee_add"),
    (Domain.payment, "channel", "card_present", "pos"),
    (Domain.payment, "auth_result", "maybe", "approved"),
    (Domain.network, "src_ip", "AWS Internal", "192.0.2.1"),
    (Domain.network, "dst_ip", "not-an-ip", "fe80::1"),
    (Domain.payment, "card_id", PAN, "tok_4111"),
    (Domain.network, "label", 2, 0),
    (Domain.network, "event_id", "", "e"),
    (Domain.network, "user_id", "", "u"),
    (Domain.network, "event_id", "x" * 129, "x" * 128),
    (Domain.network, "source", "s" * 65, "s" * 64),
    (Domain.cloud, "resource", "r" * 1025, "r" * 1024),
    (Domain.auth, "failure_reason", "f" * 257, "f" * 256),
]


@pytest.mark.parametrize(
    ("domain", "column", "bad", "good"),
    RULE_CASES,
    ids=[f"{d}-{c}-{i}" for i, (d, c, _, _) in enumerate(RULE_CASES)],
)
def test_conform_batch__agrees_with_model(domain: Domain, column: str, bad: Any, good: Any) -> None:
    model = EVENT_MODELS[domain]
    arrow_type = arrow_schema(domain).field(column).type
    fields = {**REQUIRED, column: good}
    model(**fields)
    conform_batch(domain, raw_table(**{column: pa.array([good], arrow_type)}))

    with pytest.raises(ValidationError):
        model(**{**REQUIRED, column: bad})
    bad_table = pa.table(
        {
            "event_id": ["e-1", "e-2"],
            "ts": pa.array([TS, TS], pa.timestamp("us", tz="UTC")),
            "source": ["test", "test"],
            column: pa.array([good, bad], arrow_type),
        }
    )
    with pytest.raises(SchemaError, match=rf"{domain} column '{column}': 1 value\(s\) .*\(first at row 1\)$"):
        conform_batch(domain, bad_table)


# ------------------------------------------------------------------------------------------------
# Documentation and doctests
# ------------------------------------------------------------------------------------------------


def _doc_tables() -> dict[str, list[tuple[str, str, str]]]:
    """Rows (field, arrow type, nullable) of each table in docs/events.md, keyed by section."""
    tables: dict[str, list[tuple[str, str, str]]] = {}
    section = ""
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            named = re.search(r"\(`(\w+)`\)", line)
            section = "header" if line.startswith("## Header") else named.group(1) if named else ""
        elif line.startswith("| `") and section:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            tables.setdefault(section, []).append((cells[0].strip("`"), cells[1].strip("`"), cells[2]))
    return tables


def test_docs__tables_match_arrow_schemas() -> None:
    tables = _doc_tables()
    header = tables["header"]
    assert tuple(name for name, _, _ in header) == HEADER_FIELDS
    for domain in Domain:
        rows = header + tables[domain.value]
        schema = arrow_schema(domain)
        assert [name for name, _, _ in rows] == schema.names, domain
        for name, arrow_type, nullable in rows:
            field = schema.field(name)
            assert arrow_type == str(field.type), f"{domain}.{name}"
            assert nullable == ("yes" if field.nullable else "no"), f"{domain}.{name}"


def test_docs__json_examples_are_valid_events() -> None:
    text = DOCS.read_text(encoding="utf-8")
    examples = re.findall(r"^### (\w+)\n\n```json\n(.*?)\n```", text, flags=re.MULTILINE | re.DOTALL)
    assert sorted(name for name, _ in examples) == sorted(d.value for d in Domain)
    for name, body in examples:
        data = json.loads(body)
        event = EVENT_MODELS[Domain(name)].model_validate(data)
        assert isinstance(event, BaseModel)
        assert batch_to_events(events_to_batch(name, [event])) == [event]


def test_module__doctests_pass() -> None:
    result = doctest.testmod(schemas, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5
    assert result.failed == 0
