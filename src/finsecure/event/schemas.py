"""The canonical event schema: one Arrow schema and one Pydantic model per domain.

Every feed (Zeek, CloudTrail, Azure AD, card switch, core banking...) is normalised into
one of four domains. All events share a header (id, time, where it came from, who and what
it is about, where it happened, and the evaluation label); each domain adds its own fields.

Two ways in, one set of rules:

* the **model path** (`NetworkEvent`, `CloudEvent`, `AuthEvent`, `PaymentEvent`) validates
  one event at a time, for the API, tests and debugging;
* the **columnar path** (`conform_batch`) takes an Arrow table or batch from a normaliser,
  fixes its column order and types, and checks the same value rules with vectorised compute.
  The value rules are read from the models, so both paths agree. Row by row, `validate_rows`
  (Arrow) and `row_rules` / `row_reasons` (Polars expressions a normaliser folds into its own
  query) say which rows break a rule and why, instead of raising.

Example
-------
>>> import datetime as dt
>>> event = PaymentEvent(
...     event_id="tx-1",
...     ts=dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
...     source="card_switch",
...     card_id="tok_9f2c",
...     amount=12.5,
...     currency="EUR",
...     channel="pos",
... )
>>> event.ts.isoformat()
'2024-05-01T12:00:00+00:00'
>>> batch = events_to_batch(Domain.payment, [event])
>>> batch.num_rows, str(batch.schema.field("amount").type)
(1, 'double')
>>> batch_to_events(batch) == [event]
True
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
import math
import re
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import annotated_types
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo

__all__ = [
    "ARROW_SCHEMAS",
    "ENTITY_KEYS",
    "EVENT_MODELS",
    "HEADER_FIELDS",
    "LABEL_FIELDS",
    "MAX_AMOUNT",
    "SCHEMA_VERSION",
    "AuthAction",
    "AuthEvent",
    "AuthResult",
    "CloudEvent",
    "CloudProvider",
    "Domain",
    "EventHeader",
    "NetworkDirection",
    "NetworkEvent",
    "Outcome",
    "PaymentChannel",
    "PaymentEvent",
    "RowCheck",
    "RowRule",
    "SchemaError",
    "arrow_schema",
    "batch_to_events",
    "conform_batch",
    "events_to_batch",
    "row_reasons",
    "row_rules",
    "validate_rows",
]

SCHEMA_VERSION = "1"
"""Bumped on any change that is not purely additive; stored in every Arrow schema's metadata."""

MAX_AMOUNT = 1e12
"""Largest accepted payment amount, in currency units. Anything above is a feed bug, not a payment."""

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_MAX_DURATION_S = 366 * 24 * 3600.0
_TS_TYPE = pa.timestamp("us", tz="UTC")


class SchemaError(ValueError):
    """Raised when data does not fit the canonical event schema."""


class Domain(enum.StrEnum):
    """The four families of events; an Arrow batch always holds a single domain."""

    network = "network"
    cloud = "cloud"
    auth = "auth"
    payment = "payment"


Outcome = Literal["success", "failure", "unknown"]
NetworkDirection = Literal["inbound", "outbound", "internal", "external", "unknown"]
CloudProvider = Literal["aws", "azure", "gcp", "other"]
AuthAction = Literal[
    "login",
    "logout",
    "mfa_challenge",
    "password_change",
    "password_reset",
    "mfa_change",
    "contact_change",
    "device_add",
    "payee_add",
    "payee_remove",
    "limit_change",
    "other",
]
PaymentChannel = Literal[
    "pos", "ecommerce", "moto", "atm", "transfer", "instant_transfer", "direct_debit", "other"
]
AuthResult = Literal["approved", "declined"]


# --------------------------------------------------------------------------------------------
# Value rules that are not plain bounds or lengths. Each one checks a single value (model path)
# and a whole Arrow column (columnar path), so the two paths cannot drift apart.
# --------------------------------------------------------------------------------------------


class _ValueRule(ABC):
    """A check usable both as a Pydantic ``AfterValidator`` and on an Arrow string column."""

    message: str

    @abstractmethod
    def __call__(self, value: str | None) -> str | None:
        """Validate (and possibly canonicalise) one value; raise ``ValueError`` if it is bad."""

    @abstractmethod
    def violations(self, array: pa.Array) -> pa.Array:
        """Return a boolean mask, true where a non-null value breaks the rule."""

    @abstractmethod
    def flags(self, column: pl.Expr) -> tuple[pl.Expr, pl.Expr | None]:
        """The Polars twin of `violations`: ``(flag, confirm)``.

        ``flag`` is true where a non-null value may break the rule and is cheap enough for every row;
        ``confirm``, when given, is the exact (costlier) test, evaluated only on flagged rows.
        """


class _Matches(_ValueRule):
    """The whole value must match a regular expression (ASCII classes only, so RE2 agrees)."""

    def __init__(self, regex: str, message: str) -> None:
        self.regex = regex
        self.message = message
        self._compiled = re.compile(regex)

    def __call__(self, value: str | None) -> str | None:
        if value is not None and self._compiled.fullmatch(value) is None:
            raise ValueError(self.message)
        return value

    def violations(self, array: pa.Array) -> pa.Array:
        return pc.invert(pc.match_substring_regex(array, f"^(?:{self.regex})$"))

    def flags(self, column: pl.Expr) -> tuple[pl.Expr, pl.Expr | None]:
        return ~column.str.contains(f"^(?:{self.regex})$"), None


class _IpAddress(_ValueRule):
    """An IPv4 or IPv6 address. The model path also rewrites it to its canonical text form."""

    message = "must be an IPv4 or IPv6 address; map non-IP sources (e.g. 'AWS Internal') to null"
    _charset = r"[0-9A-Fa-f:.]+(%[0-9A-Za-z_.-]+)?"

    def __call__(self, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(self.message) from None

    def violations(self, array: pa.Array) -> pa.Array:
        return pc.invert(pc.match_substring_regex(array, f"^(?:{self._charset})$"))

    def flags(self, column: pl.Expr) -> tuple[pl.Expr, pl.Expr | None]:
        # Only the characters are checked on the columnar paths; the model path parses the address.
        return ~column.str.contains(f"^(?:{self._charset})$"), None


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


class _NotCardNumber(_ValueRule):
    """Rejects raw card numbers (PANs): card ids must be tokens or keyed hashes (PCI DSS)."""

    message = "looks like a raw card number (PAN); send a token or keyed hash instead"
    _pan = re.compile(r"[0-9]{13,19}")

    def _is_pan(self, value: str) -> bool:
        return self._pan.fullmatch(value) is not None and _luhn_ok(value)

    def __call__(self, value: str | None) -> str | None:
        if value is not None and self._is_pan(value):
            raise ValueError(self.message)
        return value

    def violations(self, array: pa.Array) -> pa.Array:
        candidates = pc.fill_null(pc.match_substring_regex(array, r"^[0-9]{13,19}$"), False)
        if not pc.any(candidates).as_py():
            return candidates  # all false: the usual case, no Python loop
        flags = [False] * len(array)
        rows = pc.indices_nonzero(candidates)
        for row, value in zip(rows.to_pylist(), pc.take(array, rows).to_pylist(), strict=True):
            flags[row] = self._is_pan(value)
        return pa.array(flags, pa.bool_())

    def flags(self, column: pl.Expr) -> tuple[pl.Expr, pl.Expr | None]:
        return column.str.contains(r"^[0-9]{13,19}$"), _luhn_valid(column)


def _luhn_valid(column: pl.Expr) -> pl.Expr:
    """Vectorised Luhn check of digit strings (up to 19 digits): true where the check digit fits.

    Digits are read from the right; every second one is doubled (minus 9 when above 9).
    """
    reversed_digits = column.str.reverse()
    total: pl.Expr = pl.lit(0, pl.Int32)
    for position in range(19):
        digit = reversed_digits.str.slice(position, 1).cast(pl.Int32, strict=False).fill_null(0)
        if position % 2 == 1:
            digit = pl.when(digit > 4).then(digit * 2 - 9).otherwise(digit * 2)
        total = total + digit
    return total % 10 == 0


# Reusable field types. Bounds and lengths are plain Pydantic constraints, which the columnar
# path reads back from the model (see _column_rules).
ReqId = Annotated[str, Field(min_length=1, max_length=128)]
ReqShort = Annotated[str, Field(min_length=1, max_length=64)]
OptId = Annotated[str | None, Field(min_length=1, max_length=128)]
OptShort = Annotated[str | None, Field(min_length=1, max_length=64)]
OptText = Annotated[str | None, Field(min_length=1, max_length=256)]
OptLongText = Annotated[str | None, Field(min_length=1, max_length=1024)]
OptIp = Annotated[str | None, Field(min_length=2, max_length=64), AfterValidator(_IpAddress())]
OptCardId = Annotated[str | None, Field(min_length=1, max_length=128), AfterValidator(_NotCardNumber())]
OptCountry = Annotated[
    str | None,
    AfterValidator(
        _Matches("[A-Z]{2}", "must be an ISO 3166-1 alpha-2 country code in upper case, e.g. 'GB'")
    ),
]
OptCurrency = Annotated[
    str | None,
    AfterValidator(_Matches("[A-Z]{3}", "must be an ISO 4217 currency code in upper case, e.g. 'EUR'")),
]
OptMcc = Annotated[
    str | None, AfterValidator(_Matches("[0-9]{4}", "must be a 4-digit merchant category code"))
]
OptLowerToken = Annotated[
    str | None,
    Field(max_length=16),
    AfterValidator(_Matches("[a-z0-9_.-]+", "must be lower case letters, digits, '_', '.' or '-'")),
]
OptLat = Annotated[float | None, Field(ge=-90.0, le=90.0)]
OptLon = Annotated[float | None, Field(ge=-180.0, le=180.0)]
OptPort = Annotated[int | None, Field(ge=0, le=65535)]
OptCount32 = Annotated[int | None, Field(ge=0, le=_INT32_MAX)]
OptCount64 = Annotated[int | None, Field(ge=0, le=_INT64_MAX)]
OptLabel = Annotated[int | None, Field(ge=0, le=1)]


# --------------------------------------------------------------------------------------------
# Pydantic models
# --------------------------------------------------------------------------------------------


class EventHeader(BaseModel):
    """Fields every event carries, whatever its domain. Use a domain model, not this class."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        # Inputs may hold personal or card data: keep them out of error messages and logs.
        hide_input_in_errors=True,
    )

    event_id: ReqId
    ts: dt.datetime
    domain: Domain
    source: ReqShort
    tenant: ReqShort = "default"
    user_id: OptId = None
    account_id: OptId = None
    card_id: OptCardId = None
    device_id: OptId = None
    src_ip: OptIp = None
    dst_ip: OptIp = None
    merchant_id: OptId = None
    lat: OptLat = None
    lon: OptLon = None
    country: OptCountry = None
    label: OptLabel = None
    label_detail: OptText = None

    @field_validator("ts")
    @classmethod
    def _ts_is_aware_utc(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                "must include a time zone, e.g. '2024-05-01T12:00:00Z'; naive timestamps are ambiguous"
            )
        return value.astimezone(dt.UTC)

    @field_validator("domain", mode="before")
    @classmethod
    def _domain_matches_model(cls, value: object) -> object:
        expected = cls.model_fields["domain"].default
        if isinstance(expected, Domain) and value != expected:
            raise ValueError(f"must be {expected.value!r} for {cls.__name__}")
        return value


class NetworkEvent(EventHeader):
    """One network connection (a flow), as a Zeek ``conn`` record or an NSL-KDD row."""

    domain: Literal[Domain.network] = Domain.network
    src_port: OptPort = None
    dst_port: OptPort = None
    protocol: OptLowerToken = None
    service: OptShort = None
    direction: NetworkDirection | None = None
    duration_s: Annotated[float | None, Field(ge=0.0, le=_MAX_DURATION_S)] = None
    bytes_out: OptCount64 = None
    bytes_in: OptCount64 = None
    packets_out: OptCount64 = None
    packets_in: OptCount64 = None
    conn_state: Annotated[str | None, Field(min_length=1, max_length=16)] = None
    wrong_fragments: OptCount32 = None
    urgent_packets: OptCount32 = None
    failed_logins: OptCount32 = None
    logged_in: bool | None = None


class CloudEvent(EventHeader):
    """One call to a cloud control plane or directory (CloudTrail, Azure AD audit, GCP audit)."""

    domain: Literal[Domain.cloud] = Domain.cloud
    cloud_provider: CloudProvider | None = None
    cloud_region: OptShort = None
    cloud_account_id: OptId = None
    service: OptText = None
    action: OptText = None
    outcome: Outcome | None = None
    read_only: bool | None = None
    principal_id: OptLongText = None
    principal_type: OptShort = None
    access_key_id: OptId = None
    mfa_used: bool | None = None
    user_agent: OptLongText = None
    resource: OptLongText = None
    error_code: OptText = None


class AuthEvent(EventHeader):
    """One sign-in or account-security action by a customer or employee."""

    domain: Literal[Domain.auth] = Domain.auth
    action: AuthAction | None = None
    outcome: Outcome | None = None
    auth_method: OptShort = None
    mfa_used: bool | None = None
    app: OptText = None
    user_agent: OptLongText = None
    failure_reason: OptText = None
    payee_id: OptId = None


class PaymentEvent(EventHeader):
    """One card transaction or money transfer."""

    domain: Literal[Domain.payment] = Domain.payment
    transaction_id: OptId = None
    amount: Annotated[float | None, Field(ge=0.0, le=MAX_AMOUNT)] = None
    currency: OptCurrency = None
    channel: PaymentChannel | None = None
    merchant_category: OptShort = None
    mcc: OptMcc = None
    terminal_id: OptId = None
    payee_id: OptId = None
    card_present: bool | None = None
    entry_mode: OptShort = None
    auth_result: AuthResult | None = None
    decline_reason: OptText = None
    home_lat: OptLat = None
    home_lon: OptLon = None


# --------------------------------------------------------------------------------------------
# Arrow schemas
# --------------------------------------------------------------------------------------------


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _optional(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


_HEADER_ARROW: tuple[pa.Field, ...] = (
    _required("event_id", pa.string()),
    _required("ts", _TS_TYPE),
    _required("domain", pa.string()),
    _required("source", pa.string()),
    _required("tenant", pa.string()),
    _optional("user_id", pa.string()),
    _optional("account_id", pa.string()),
    _optional("card_id", pa.string()),
    _optional("device_id", pa.string()),
    _optional("src_ip", pa.string()),
    _optional("dst_ip", pa.string()),
    _optional("merchant_id", pa.string()),
    _optional("lat", pa.float64()),
    _optional("lon", pa.float64()),
    _optional("country", pa.string()),
    _optional("label", pa.int8()),
    _optional("label_detail", pa.string()),
)

_DOMAIN_ARROW: dict[Domain, tuple[pa.Field, ...]] = {
    Domain.network: (
        _optional("src_port", pa.int32()),
        _optional("dst_port", pa.int32()),
        _optional("protocol", pa.string()),
        _optional("service", pa.string()),
        _optional("direction", pa.string()),
        _optional("duration_s", pa.float64()),
        _optional("bytes_out", pa.int64()),
        _optional("bytes_in", pa.int64()),
        _optional("packets_out", pa.int64()),
        _optional("packets_in", pa.int64()),
        _optional("conn_state", pa.string()),
        _optional("wrong_fragments", pa.int32()),
        _optional("urgent_packets", pa.int32()),
        _optional("failed_logins", pa.int32()),
        _optional("logged_in", pa.bool_()),
    ),
    Domain.cloud: (
        _optional("cloud_provider", pa.string()),
        _optional("cloud_region", pa.string()),
        _optional("cloud_account_id", pa.string()),
        _optional("service", pa.string()),
        _optional("action", pa.string()),
        _optional("outcome", pa.string()),
        _optional("read_only", pa.bool_()),
        _optional("principal_id", pa.string()),
        _optional("principal_type", pa.string()),
        _optional("access_key_id", pa.string()),
        _optional("mfa_used", pa.bool_()),
        _optional("user_agent", pa.string()),
        _optional("resource", pa.string()),
        _optional("error_code", pa.string()),
    ),
    Domain.auth: (
        _optional("action", pa.string()),
        _optional("outcome", pa.string()),
        _optional("auth_method", pa.string()),
        _optional("mfa_used", pa.bool_()),
        _optional("app", pa.string()),
        _optional("user_agent", pa.string()),
        _optional("failure_reason", pa.string()),
        _optional("payee_id", pa.string()),
    ),
    Domain.payment: (
        _optional("transaction_id", pa.string()),
        _optional("amount", pa.float64()),
        _optional("currency", pa.string()),
        _optional("channel", pa.string()),
        _optional("merchant_category", pa.string()),
        _optional("mcc", pa.string()),
        _optional("terminal_id", pa.string()),
        _optional("payee_id", pa.string()),
        _optional("card_present", pa.bool_()),
        _optional("entry_mode", pa.string()),
        _optional("auth_result", pa.string()),
        _optional("decline_reason", pa.string()),
        _optional("home_lat", pa.float64()),
        _optional("home_lon", pa.float64()),
    ),
}

HEADER_FIELDS: tuple[str, ...] = tuple(field.name for field in _HEADER_ARROW)
"""Columns shared by every domain, in schema order."""

ENTITY_KEYS: tuple[str, ...] = (
    "user_id",
    "account_id",
    "card_id",
    "device_id",
    "src_ip",
    "dst_ip",
    "merchant_id",
)
"""Header columns that identify an entity (who or what an event is about)."""

LABEL_FIELDS: tuple[str, ...] = ("label", "label_detail")
"""Ground truth from labelled data sets: for evaluation only, never a model input."""

ARROW_SCHEMAS: Mapping[Domain, pa.Schema] = types.MappingProxyType(
    {
        domain: pa.schema(
            [*_HEADER_ARROW, *_DOMAIN_ARROW[domain]],
            metadata={"finsecure.domain": domain.value, "finsecure.schema_version": SCHEMA_VERSION},
        )
        for domain in Domain
    }
)
"""The Arrow schema of each domain: header columns first, then the domain's own columns."""

EVENT_MODELS: Mapping[Domain, type[EventHeader]] = types.MappingProxyType(
    {
        Domain.network: NetworkEvent,
        Domain.cloud: CloudEvent,
        Domain.auth: AuthEvent,
        Domain.payment: PaymentEvent,
    }
)
"""The Pydantic model of each domain."""


# --------------------------------------------------------------------------------------------
# Column rules for the columnar path, read from the models
# --------------------------------------------------------------------------------------------


class _ColumnRule:
    """Value constraints of one column, as declared on its Pydantic field."""

    __slots__ = ("allowed", "default", "max_length", "max_value", "min_length", "min_value", "value_rules")

    def __init__(self, info: FieldInfo) -> None:
        self.min_value: float | None = None
        self.max_value: float | None = None
        self.min_length: int | None = None
        self.max_length: int | None = None
        self.value_rules: list[_ValueRule] = []
        for item in info.metadata:
            if isinstance(item, annotated_types.Ge):
                self.min_value = float(typing.cast("float", item.ge))
            elif isinstance(item, annotated_types.Le):
                self.max_value = float(typing.cast("float", item.le))
            elif isinstance(item, annotated_types.MinLen):
                self.min_length = item.min_length
            elif isinstance(item, annotated_types.MaxLen):
                self.max_length = item.max_length
            elif isinstance(item, AfterValidator) and isinstance(item.func, _ValueRule):
                self.value_rules.append(item.func)
        self.allowed = _literal_values(info.annotation)
        self.default: object = None if info.is_required() else info.default


def _literal_values(annotation: object) -> tuple[str, ...] | None:
    """The allowed values of a ``Literal[...]`` or ``Literal[...] | None`` annotation."""
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if is_union else (annotation,)
    for option in options:
        if typing.get_origin(option) is Literal:
            return tuple(str(value) for value in typing.get_args(option))
    return None


_COLUMN_RULES: Mapping[Domain, Mapping[str, _ColumnRule]] = types.MappingProxyType(
    {
        domain: types.MappingProxyType({name: _ColumnRule(info) for name, info in model.model_fields.items()})
        for domain, model in EVENT_MODELS.items()
    }
)


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def _as_domain(domain: Domain | str) -> Domain:
    try:
        return Domain(domain)
    except ValueError:
        valid = ", ".join(d.value for d in Domain)
        raise SchemaError(f"unknown domain {domain!r}; expected one of: {valid}") from None


def arrow_schema(domain: Domain | str) -> pa.Schema:
    """Return the canonical Arrow schema of a domain.

    Parameters
    ----------
    domain
        A `Domain` or its name.

    Returns
    -------
    pyarrow.Schema
        Header columns first, then the domain's own columns.

    Examples
    --------
    >>> arrow_schema("network").names[:3]
    ['event_id', 'ts', 'domain']
    """
    return ARROW_SCHEMAS[_as_domain(domain)]


def events_to_batch(domain: Domain | str, events: Sequence[EventHeader]) -> pa.RecordBatch:
    """Turn validated events of one domain into an Arrow record batch.

    Parameters
    ----------
    domain
        The domain all events belong to.
    events
        Instances of that domain's model (see `EVENT_MODELS`).

    Returns
    -------
    pyarrow.RecordBatch
        One row per event, with exactly ``arrow_schema(domain)``.

    Raises
    ------
    SchemaError
        If an event is not an instance of the domain's model.
    """
    domain = _as_domain(domain)
    model = EVENT_MODELS[domain]
    schema = ARROW_SCHEMAS[domain]
    for index, event in enumerate(events):
        if not isinstance(event, model):
            raise SchemaError(
                f"events[{index}] is a {type(event).__name__}, expected {model.__name__} for domain {domain}"
            )
    arrays = [pa.array([getattr(event, field.name) for event in events], type=field.type) for field in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def batch_to_events(
    batch: pa.RecordBatch | pa.Table, domain: Domain | str | None = None
) -> list[EventHeader]:
    """Turn an Arrow batch back into validated event models (for tests and debugging).

    Parameters
    ----------
    batch
        A record batch or table of one domain.
    domain
        The domain; by default read from the schema metadata or, failing that, the ``domain`` column.

    Returns
    -------
    list[EventHeader]
        One model instance per row, of the domain's model class.

    Raises
    ------
    SchemaError
        If the domain cannot be told or the data does not fit the schema.
    pydantic.ValidationError
        If a row breaks a rule that only the model path checks.
    """
    if domain is None:
        domain = _infer_domain(batch)
        if domain is None:
            return []
    domain = _as_domain(domain)
    model = EVENT_MODELS[domain]
    rows: list[dict[str, Any]] = conform_batch(domain, batch).to_pylist()
    return [model.model_validate(row) for row in rows]


def _infer_domain(batch: pa.RecordBatch | pa.Table) -> Domain | str | None:
    metadata: Mapping[bytes, bytes] = batch.schema.metadata or {}
    tagged = metadata.get(b"finsecure.domain")
    if tagged is not None:
        return tagged.decode()
    if "domain" in batch.schema.names and batch.num_rows > 0:
        values: list[object] = pc.unique(batch.column("domain")).to_pylist()
        if len(values) != 1 or not isinstance(values[0], str):
            raise SchemaError(f"cannot tell the domain: its domain column holds {len(values)} values")
        return values[0]
    if batch.num_rows == 0:
        return None
    raise SchemaError("cannot tell the domain: pass domain= or include a domain column")


def conform_batch(domain: Domain | str, data: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """Give a normaliser's output exactly the canonical schema of its domain, and check its values.

    Columns may come in any order and only a subset is needed. Missing nullable columns are
    filled with nulls; missing ``domain`` and ``tenant`` get their defaults. Types are cast
    safely (no overflow, truncation or silent time-zone guess). Values are checked against the
    same rules as the models (bounds, lengths, allowed values, finite floats, formats), except
    that IP addresses are only checked for their characters, not rewritten to canonical form.

    Parameters
    ----------
    domain
        The domain of every row.
    data
        An Arrow record batch or table (e.g. from Polars ``to_arrow()``).

    Returns
    -------
    pyarrow.RecordBatch
        The same rows with exactly ``arrow_schema(domain)``.

    Raises
    ------
    SchemaError
        Naming the offending columns: unknown or duplicate columns, missing required columns
        (``event_id``, ``ts``, ``source``), impossible casts, nulls in required columns, a
        ``ts`` without time zone, or values that break a rule (with the count and first row).

    Examples
    --------
    >>> raw = pa.table({
    ...     "dst_port": [443],
    ...     "event_id": ["c1"],
    ...     "ts": pa.array([1714564800], pa.timestamp("s", tz="UTC")),
    ...     "source": ["zeek"],
    ... })
    >>> batch = conform_batch("network", raw)
    >>> batch.schema.names[:5], str(batch.schema.field("dst_port").type), batch.column("tenant")[0].as_py()
    (['event_id', 'ts', 'domain', 'source', 'tenant'], 'int32', 'default')
    >>> conform_batch("network", raw.append_column("colour", pa.array(["red"])))
    Traceback (most recent call last):
    ...
    finsecure.event.schemas.SchemaError: network batch has unknown column(s): colour
    """
    domain = _as_domain(domain)
    schema = ARROW_SCHEMAS[domain]
    rules = _COLUMN_RULES[domain]
    names: list[str] = list(data.schema.names)

    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SchemaError(f"{domain} batch has duplicate column(s): {', '.join(duplicates)}")
    unknown = sorted(set(names) - set(schema.names))
    if unknown:
        raise SchemaError(f"{domain} batch has unknown column(s): {', '.join(unknown)}")
    missing = [
        field.name
        for field in schema
        if not field.nullable and field.name not in names and rules[field.name].default is None
    ]
    if missing:
        raise SchemaError(f"{domain} batch is missing required column(s): {', '.join(missing)}")

    num_rows: int = data.num_rows
    arrays: list[pa.Array] = []
    for field in schema:
        if field.name in names:
            array = _cast_column(domain, field, _as_array(data.column(field.name)))
        elif (fill := rules[field.name].default) is None:
            array = pa.nulls(num_rows, field.type)
        else:
            array = pa.repeat(pa.scalar(fill, field.type), num_rows)
        if not field.nullable and array.null_count:
            nulls = array.null_count
            raise SchemaError(f"{domain} column {field.name!r} is required but has {nulls} null(s)")
        _check_values(domain, field.name, array, rules[field.name])
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if not isinstance(column, pa.ChunkedArray):
        return column
    if column.num_chunks == 1:
        return column.chunk(0)
    return column.combine_chunks()


def _cast_column(domain: Domain, field: pa.Field, array: pa.Array) -> pa.Array:
    if field.name == "ts" and not pa.types.is_null(array.type):
        if pa.types.is_timestamp(array.type):
            if array.type.tz is None:
                raise SchemaError(
                    f"{domain} column 'ts' has no time zone ({array.type}); "
                    "localise it (e.g. Polars dt.replace_time_zone) before conforming"
                )
        elif not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
            raise SchemaError(
                f"{domain} column 'ts' must be a time-zone-aware timestamp or ISO 8601 text, not {array.type}"
            )
    if array.type == field.type:
        return array
    try:
        return array.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(
            f"{domain} column {field.name!r} cannot be cast safely from {array.type} to {field.type}: {exc}"
        ) from None


def _check_values(domain: Domain, name: str, array: pa.Array, rule: _ColumnRule) -> None:
    for problem, bad in _violations(array, rule):
        count = pc.sum(bad).as_py() or 0
        if count:
            first = pc.index(bad, True).as_py()
            raise SchemaError(f"{domain} column {name!r}: {count} value(s) {problem} (first at row {first})")


def _violations(array: pa.Array, rule: _ColumnRule) -> list[tuple[str, pa.Array]]:
    """Every rule of a column as ``(problem, mask)``: the mask is true (never null) on each breaking row.

    Shared by `conform_batch` (which raises on the first problem) and `validate_rows` (which reports
    every row), so the two cannot drift apart.
    """
    if len(array) == 0 or array.null_count == len(array):
        return []
    checks: list[tuple[str, pa.Array]] = []
    if pa.types.is_floating(array.type):
        checks.append(("not a finite number", pc.invert(pc.is_finite(array))))
    if rule.min_value is not None and (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        checks.append((f"below {_num(rule.min_value)}", pc.less(array, rule.min_value)))
    if rule.max_value is not None and (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        checks.append((f"above {_num(rule.max_value)}", pc.greater(array, rule.max_value)))
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        if rule.min_length is not None or rule.max_length is not None:
            lengths = pc.utf8_length(array)
            if rule.min_length is not None:
                too_short = pc.less(lengths, rule.min_length)
                checks.append((f"shorter than {rule.min_length} character(s)", too_short))
            if rule.max_length is not None:
                too_long = pc.greater(lengths, rule.max_length)
                checks.append((f"longer than {rule.max_length} characters", too_long))
        if rule.allowed is not None:
            allowed = pa.array(rule.allowed, pa.string())
            checks.append(
                (f"not one of {', '.join(rule.allowed)}", pc.invert(pc.is_in(array, value_set=allowed)))
            )
        checks.extend((value_rule.message, value_rule.violations(array)) for value_rule in rule.value_rules)
    valid = pc.is_valid(array)
    return [(problem, pc.fill_null(pc.and_(mask, valid), False)) for problem, mask in checks]


def _num(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value.is_integer() else str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class RowCheck:
    """The verdict of `validate_rows`: which rows to keep and, for the others, why not.

    Attributes
    ----------
    keep
        Boolean array, one entry per row, true where the row passes every rule.
    reasons
        String array, one entry per row: null where kept, otherwise every problem as
        ``"field: problem"`` joined by ``"; "``. Reasons name fields, never values.
    """

    keep: pa.Array
    reasons: pa.Array

    @property
    def rejected(self) -> int:
        """How many rows break a rule."""
        return len(self.keep) - (pc.sum(self.keep).as_py() or 0)


def validate_rows(domain: Domain | str, data: pa.RecordBatch | pa.Table) -> RowCheck:
    """Check every row against the domain's value rules, without raising for bad rows.

    The row-level twin of `conform_batch`: the same rules (required columns, bounds, lengths,
    allowed values, finite numbers, formats, no raw card numbers), but instead of stopping at the
    first problem it says which rows break a rule and why, so a normaliser can reject those rows
    one by one and keep the rest. Text columns may be ``large_string`` (as Polars exports them).

    Parameters
    ----------
    domain
        The domain of every row.
    data
        Canonical columns (any subset, any order), e.g. ``polars.DataFrame.to_arrow()``.

    Returns
    -------
    RowCheck
        The keep mask and the per-row reasons.

    Raises
    ------
    SchemaError
        For problems of the whole batch rather than of rows, as `conform_batch` does: unknown,
        duplicate or missing required columns, impossible casts, a ``ts`` without time zone.

    Examples
    --------
    >>> raw = pa.table({
    ...     "event_id": ["a", "b", None],
    ...     "ts": pa.array([0, 0, 0], pa.timestamp("s", tz="UTC")),
    ...     "source": ["s", "s", "s"],
    ...     "lat": [10.0, 91.2, 0.0],
    ... })
    >>> check = validate_rows("auth", raw)
    >>> check.keep.to_pylist(), check.reasons.to_pylist()
    ([True, False, False], [None, 'lat: above 90', 'event_id: missing'])
    """
    domain = _as_domain(domain)
    schema = ARROW_SCHEMAS[domain]
    rules = _COLUMN_RULES[domain]
    names: list[str] = list(data.schema.names)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SchemaError(f"{domain} batch has duplicate column(s): {', '.join(duplicates)}")
    unknown = sorted(set(names) - set(schema.names))
    if unknown:
        raise SchemaError(f"{domain} batch has unknown column(s): {', '.join(unknown)}")
    missing = [
        field.name
        for field in schema
        if not field.nullable and field.name not in names and rules[field.name].default is None
    ]
    if missing:
        raise SchemaError(f"{domain} batch is missing required column(s): {', '.join(missing)}")

    frame = pl.from_arrow(pa.table(_present_columns(domain, data, names)))
    assert isinstance(frame, pl.DataFrame)  # noqa: S101 - from_arrow of a table is a frame
    num_rows: int = data.num_rows
    checks = [rule for rule in _ROW_RULES[domain] if rule.column in names]
    reasons = pl.Series("reason", [None] * num_rows, pl.String)
    if checks and num_rows:
        flagged = frame.select(pl.any_horizontal(rule.flag for rule in checks)).to_series()
        if flagged.any():
            rows = flagged.arg_true()
            reasons = reasons.scatter(rows, row_reasons(domain, frame[rows], checks))
    text = reasons.to_arrow().cast(pa.string())
    return RowCheck(keep=pc.is_null(text), reasons=text)


def _present_columns(
    domain: Domain, data: pa.RecordBatch | pa.Table, names: list[str]
) -> dict[str, pa.Array]:
    """The canonical columns in ``data``, cast safely to their canonical types (text may stay large)."""
    columns: dict[str, pa.Array] = {}
    for field in ARROW_SCHEMAS[domain]:
        if field.name in names:
            array = _as_array(data.column(field.name))
            if not (pa.types.is_large_string(array.type) and pa.types.is_string(field.type)):
                array = _cast_column(domain, field, array)
            columns[field.name] = array
    return columns


@dataclasses.dataclass(frozen=True, slots=True)
class RowRule:
    """One value rule of one canonical column as Polars expressions: the columnar twin of the models.

    Attributes
    ----------
    column
        The canonical column the rule reads (with its canonical type).
    problem
        What is wrong with a breaking row, e.g. ``"above 90"``; never the value.
    flag
        Boolean expression, true (never null) where a row may break the rule. Cheap enough to run on
        every row of a batch.
    confirm
        ``None`` when ``flag`` is exact; otherwise the exact (costlier) test, only worth running on
        flagged rows (the card-number check: 13-19 digits flags, the Luhn check digit confirms).
    on_null
        True for the rule that flags nulls (a required column's "missing"); every other rule
        passes a null.
    per_value
        True when the rule tests a text value against a set or a pattern and the column usually
        holds few distinct values (codes, enumerations): checking the distinct values once is
        cheaper than checking every row.
    """

    column: str
    problem: str
    flag: pl.Expr
    confirm: pl.Expr | None = None
    on_null: bool = False
    per_value: bool = False

    def applies(self, nulls: int, rows: int) -> bool:
        """Whether the rule can flag anything in a column with ``nulls`` nulls out of ``rows``.

        Only the "missing" rule (``on_null``) looks at nulls; every other rule skips them.
        """
        return nulls > 0 if self.on_null else nulls < rows

    @property
    def reason(self) -> str:
        """``"column: problem"``, as dead letters and `validate_rows` report it."""
        return f"{self.column}: {self.problem}"

    @property
    def exact(self) -> pl.Expr:
        """True (never null) exactly where a row breaks the rule."""
        return self.flag if self.confirm is None else self.flag & self.confirm.fill_null(False)


def _row_rules(domain: Domain) -> tuple[RowRule, ...]:
    """Every rule of every column of a domain, in schema order, in `_violations` order per column."""
    found: list[RowRule] = []
    for field in ARROW_SCHEMAS[domain]:
        rule = _COLUMN_RULES[domain][field.name]
        column = pl.col(field.name)
        checks: list[tuple[str, pl.Expr, pl.Expr | None]] = []
        per_value: set[str] = set()
        if not field.nullable:
            found.append(RowRule(field.name, "missing", column.is_null(), on_null=True))
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
        floating = pa.types.is_floating(field.type)
        if floating:
            checks.append(("not a finite number", ~column.is_finite(), None))
        # Polars orders NaN above every number; Arrow (and the model path) never calls NaN out of range.
        ordered = column.is_not_nan() if floating else pl.lit(True)
        low, high = _type_range(field.type)
        if rule.min_value is not None and numeric and rule.min_value > low:
            checks.append((f"below {_num(rule.min_value)}", (column < rule.min_value) & ordered, None))
        if rule.max_value is not None and numeric and rule.max_value < high:
            checks.append((f"above {_num(rule.max_value)}", (column > rule.max_value) & ordered, None))
        if pa.types.is_string(field.type):
            if rule.min_length is not None:
                # counting bytes is free and equivalent for "at least one character"
                short = (
                    column.str.len_bytes() < 1
                    if rule.min_length == 1
                    else column.str.len_chars() < rule.min_length
                )
                checks.append((f"shorter than {rule.min_length} character(s)", short, None))
            if rule.max_length is not None:
                # more characters than allowed implies more bytes: bytes (free) flag, characters confirm
                checks.append(
                    (
                        f"longer than {rule.max_length} characters",
                        column.str.len_bytes() > rule.max_length,
                        column.str.len_chars() > rule.max_length,
                    )
                )
            if rule.allowed is not None:
                problem = f"not one of {', '.join(rule.allowed)}"
                checks.append((problem, ~column.is_in(rule.allowed), None))
                per_value.add(problem)
            for value_rule in rule.value_rules:
                flag, confirm = value_rule.flags(column)
                checks.append((value_rule.message, flag, confirm))
                if isinstance(value_rule, _Matches):
                    per_value.add(value_rule.message)
        valid = column.is_not_null()
        found.extend(
            RowRule(
                field.name, problem, (valid & flag).fill_null(False), confirm, per_value=problem in per_value
            )
            for problem, flag, confirm in checks
        )
    return tuple(found)


def _type_range(type_: pa.DataType) -> tuple[float, float]:
    """The values an integer type can hold (a bound at or past them needs no check)."""
    if pa.types.is_integer(type_):
        bits = type_.bit_width
        if pa.types.is_signed_integer(type_):
            return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
        return 0.0, 2.0**bits - 1
    return -math.inf, math.inf


_ROW_RULES: Mapping[Domain, tuple[RowRule, ...]] = types.MappingProxyType(
    {domain: _row_rules(domain) for domain in Domain}
)


def row_rules(domain: Domain | str) -> tuple[RowRule, ...]:
    """The value rules of a domain as Polars expressions over its canonical columns, in schema order.

    The same rules as the models, `conform_batch` and `validate_rows` (IP addresses: characters
    only). A normaliser folds every ``flag`` into its own query (one pass over the batch) and calls
    `row_reasons` only for the rows flagged.

    Examples
    --------
    >>> frame = pl.DataFrame({"lat": [10.0, 91.2, None]})
    >>> lat_rules = [rule for rule in row_rules("auth") if rule.column == "lat"]
    >>> [rule.problem for rule in lat_rules]
    ['not a finite number', 'below -90', 'above 90']
    >>> frame.select(pl.any_horizontal(rule.flag for rule in lat_rules)).to_series().to_list()
    [False, True, False]
    """
    return _ROW_RULES[_as_domain(domain)]


def row_reasons(
    domain: Domain | str, frame: pl.DataFrame, rules: Sequence[RowRule] | None = None
) -> pl.Series:
    """Why each row of ``frame`` breaks the domain's rules: null where it does not.

    Every problem is ``"column: problem"``, joined by ``"; "``, in schema order. Meant for the rows
    that `row_rules` flagged (it runs every exact check, some costly, on every row it is given).

    Parameters
    ----------
    domain
        The domain of every row.
    frame
        Canonical columns with their canonical types (any subset).
    rules
        The rules to apply; by default every rule whose column is in ``frame``.

    Examples
    --------
    >>> frame = pl.DataFrame({"card_id": ["4111111111111111", "4111111111111112", "tok_1"]})
    >>> row_reasons("payment", frame).to_list()  # doctest: +NORMALIZE_WHITESPACE
    ['card_id: looks like a raw card number (PAN); send a token or keyed hash instead', None, None]
    """
    if rules is None:
        rules = [rule for rule in _ROW_RULES[_as_domain(domain)] if rule.column in frame.columns]
    if not rules:
        return pl.Series("reason", [None] * frame.height, pl.String)
    joined = pl.concat_str(
        [pl.when(rule.exact).then(pl.lit(rule.reason)) for rule in rules], separator="; ", ignore_nulls=True
    )
    return frame.select(pl.when(joined != "").then(joined).alias("reason")).to_series()
