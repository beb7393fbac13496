"""Turn raw chunks into canonical frames, one per domain, with a dead letter for every bad record.

:class:`Normaliser` compiles a :class:`~finsecure.ingest.mapping.Mapping` into Polars expressions:
once per shape of input (a CSV file has one shape; NDJSON chunks may have a few), cached. Each
domain rule is compiled twice: a *fast* reading (numbers and booleans in their plain spelling only,
whole-number times in integer arithmetic) and the *exact* one (trimming, ``5.0`` as an integer,
``YES`` as true...). Per chunk, one query computes the fast values, a second the flags of the
schema's rules (:func:`finsecure.event.schemas.row_rules`, skipping columns that cannot break them);
only the rows flagged, usually none, are read again the exact way, which keeps what it can read and
spells out why it rejects the rest. No Python runs per record, except the keyed hash, which runs
once per *distinct* value in a chunk.

A mapping with ``unknown_fields: reject`` (canonical events) also rejects a record holding a value
in a field its domain does not have, naming the field: ``"dst_port: not a field of payment events"``.

Every rejected record becomes a dead letter naming its source, offset and why (``"amount: not a
number"``, ``"lat: above 90"``) — fields, never values. The rest of the chunk carries on.

Example
-------
>>> from finsecure.ingest.mapping import Mapping
>>> mapping = Mapping.from_dict({
...     "name": "demo", "read": {"format": "csv"}, "domain": "payment",
...     "fields": {
...         "ts": {"column": "t", "timestamp": {"unit": "s"}},
...         "amount": {"column": "amt", "cast": "float"},
...         "lat": {"column": "lat", "cast": "float"},
...     },
... })
>>> raw = pl.DataFrame({"t": ["0", "60", "120"], "amt": ["1.5", "oops", "3"], "lat": ["1", "2", "91.2"]})
>>> result = Normaliser(mapping, "demo.csv").normalise(raw, first_offset=10)
>>> result.frames[Domain.payment].select("amount", "lat").rows()
[(1.5, 1.0)]
>>> result.rejects.select(["offset", "reason"]).to_pylist()
[{'offset': 11, 'reason': 'amount: not a number'}, {'offset': 12, 'reason': 'lat: above 90'}]
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import threading
import types
from collections.abc import Callable
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from finsecure.event.schemas import ARROW_SCHEMAS, Domain, RowRule, row_rules
from finsecure.ingest.deadletter import dead_letters
from finsecure.ingest.mapping import (
    Condition,
    DomainRule,
    FieldSpec,
    Mapping,
    TimestampSpec,
    condition_columns,
    template_columns,
)
from finsecure.ingest.readers import OFFSET_COLUMN
from finsecure.ingest.source_record import RAW_COLUMN, flat_records

__all__ = [
    "DEFAULT_MAX_FUTURE",
    "DEV_HASH_KEY",
    "EARLIEST_TS",
    "NormaliseResult",
    "Normaliser",
    "canonical_polars_schema",
    "time_window_rules",
]

DEV_HASH_KEY = b"finsecure-development-only-token-key"
"""Key of the keyed hash when none is given. Fine for public data sets; pass a secret in production."""

_TRUE = ("true", "t", "yes", "y", "1", "1.0")
_FALSE = ("false", "f", "no", "n", "0", "0.0")
_BOOL_TEXT = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}
_EXACT_IN_FLOAT = 2**53
"""Whole numbers below this are exact in a float64: integer and float arithmetic agree."""
_LITERAL_PATTERN = re.compile(r"(\^?)([A-Za-z0-9_ -]+)(\$?)")
_ROW = "__row"
_DOMAIN = "__domain"
_ALWAYS_SET = frozenset({"event_id", "domain", "source", "tenant"})
"""Canonical columns a normaliser fills even when the mapping does not name them."""
_UNITS_TO_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
_TS = pl.Datetime("us", "UTC")
EARLIEST_TS = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
"""Events dated before this are refused: no feed of this platform predates the Unix epoch, and such a
time (year 1 or 1677, often a zero or a unit mistake) would poison day partitions and windowed features."""
DEFAULT_MAX_FUTURE = dt.timedelta(days=1)
"""How far ahead of this server's clock an event may be dated (clock skew between feeds, time zones)."""
_MAX_PLANS = 64
RAW_DOMAINS = frozenset({Domain.cloud, Domain.auth})
"""Domains whose events keep their source record when the mapping says ``keep_raw``."""
_MAX_CACHED_TOKENS = 1_000_000


def canonical_polars_schema(domain: Domain | str) -> pl.Schema:
    """The Polars schema matching the domain's canonical Arrow schema (what a Batch frame starts with).

    >>> canonical_polars_schema("payment")["ts"]
    Datetime(time_unit='us', time_zone='UTC')
    """
    return _POLARS_SCHEMAS[Domain(domain)]


_POLARS_SCHEMAS: AbcMapping[Domain, pl.Schema] = types.MappingProxyType(
    {
        domain: pl.from_arrow(ARROW_SCHEMAS[domain].empty_table()).schema  # type: ignore[union-attr]
        for domain in Domain
    }
)


_EMPTY: AbcMapping[Domain, pl.DataFrame] = types.MappingProxyType(
    {domain: pl.DataFrame(schema=schema) for domain, schema in _POLARS_SCHEMAS.items()}
)


@dataclass(frozen=True, slots=True)
class NormaliseResult:
    """What one raw chunk became.

    Attributes
    ----------
    frames
        One canonical frame per domain of the mapping (possibly empty), exactly the domain's schema.
    rejects
        Dead letters (``finsecure.ingest.deadletter`` shape) of every rejected record, with its
        offset, the domain it was meant for (null when no rule matched) and the reason.
    skipped
        Records the mapping leaves out on purpose (``unmatched: skip``).
    """

    frames: AbcMapping[Domain, pl.DataFrame]
    rejects: pa.Table
    skipped: int = 0

    def rejects_for(self, domain: Domain | None) -> pa.Table:
        """The dead letters meant for ``domain`` (``None``: those that matched no domain)."""
        column = self.rejects.column("domain")
        mask = pc.is_null(column) if domain is None else pc.equal(column, domain.value)
        return self.rejects.filter(pc.fill_null(mask, False))


@dataclass
class _Field:
    """A compiled canonical field: its value and the ways it can fail."""

    value: pl.Expr
    failures: list[tuple[pl.Expr, str]] = field(default_factory=list)


@dataclass
class _Plan:
    """Everything compiled for one shape of input."""

    slots: list[pl.Expr]
    stage_vars: list[pl.Expr]
    domain_index: pl.Expr | None
    outputs: list[_Output]


@dataclass
class _Compiled:
    """The expressions of one domain rule: staged layers, canonical values, failure masks."""

    layers: list[list[pl.Expr]]
    values: list[pl.Expr]
    failures: list[pl.Expr]
    problems: list[str]


class _Output:
    """One domain rule compiled twice: a fast version for every row, an exact one for flagged rows.

    The fast version reads only plain spellings of numbers and booleans; a row it cannot read, or that
    any schema rule flags, goes through the exact version, which also spells out the reasons. Each
    is compiled when first needed: a file of one domain never pays for the other rules, and a clean
    file never for the exact version.
    """

    def __init__(
        self,
        compiler: _Compiler,
        rule: DomainRule,
        unknown: list[tuple[str, str]],
        rules: tuple[RowRule, ...],
    ) -> None:
        self.domain = rule.domain
        self.rules = rules
        self._compiler = compiler
        self._rule = rule
        self._unknown = unknown
        self._compiled: dict[bool, _Compiled] = {}

    @property
    def fast(self) -> _Compiled:
        return self._compile(fast=True)

    @property
    def exact(self) -> _Compiled:
        return self._compile(fast=False)

    def _compile(self, *, fast: bool) -> _Compiled:
        compiled = self._compiled.get(fast)
        if compiled is None:
            with self._compiler.lock:  # the compiler's names and types are shared by its outputs
                compiled = self._compiled.get(fast)
                if compiled is None:
                    compiled = self._compiled[fast] = self._compiler.output(
                        self._rule, self._unknown, fast=fast
                    )
        return compiled


class _Track:
    """Materialises intermediate values of one field as columns, so no expression is computed twice.

    A failure mask compares a step's input with its output; with both kept as columns the mask costs
    two column reads instead of a second run of the step (Polars does not share work across
    expressions that call Python, such as the keyed hash).
    """

    def __init__(self, compiler: _Compiler, layers: list[list[pl.Expr]] | None) -> None:
        self.compiler = compiler
        self.layers = layers
        self.level = 0

    def keep(self, expr: pl.Expr) -> pl.Expr:
        if self.layers is None:
            return expr
        name = f"__t{self.compiler.counter}"
        self.compiler.counter += 1
        self.compiler.stage_schema[name] = self.compiler.dtype(expr)
        while len(self.layers) <= self.level:
            self.layers.append([])
        self.layers[self.level].append(expr.alias(name))
        self.level += 1
        return pl.col(name)

    def checked(
        self, expr: pl.Expr, convert: Callable[[pl.Expr], tuple[pl.Expr, list[tuple[pl.Expr, str]]]]
    ) -> tuple[pl.Expr, list[tuple[pl.Expr, str]]]:
        """Run a step that can fail; its failure is "there before, null after"."""
        before = self.keep(expr) if self.layers is not None else expr
        after, fails = convert(before)
        if not fails or self.layers is None:
            return after, fails
        after = self.keep(after)
        return after, [(before.is_not_null() & after.is_null(), fails[-1][1])]


def time_window_rules(
    now: dt.datetime, max_future: dt.timedelta | None, earliest: dt.datetime | None = EARLIEST_TS
) -> tuple[RowRule, ...]:
    """The plausibility window of ``ts``: not before ``earliest``, not more than ``max_future`` after
    ``now`` (``None``: no bound on that side).

    >>> times = [dt.datetime(1677, 9, 22), dt.datetime(2024, 5, 1), dt.datetime(9999, 1, 1)]
    >>> frame = pl.DataFrame({"ts": times}).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    >>> rules = time_window_rules(dt.datetime(2024, 5, 1, tzinfo=dt.UTC), dt.timedelta(days=1))
    >>> [frame.select(rule.exact).to_series().to_list() for rule in rules]
    [[True, False, False], [False, False, True]]
    >>> rules[1].reason
    "ts: more than 24 hours ahead of this server's clock (a feed or clock error?)"
    """
    ts = pl.col("ts")
    rules = []
    if earliest is not None:
        problem = f"before {earliest:%Y-%m-%d}, not a plausible event time"
        rules.append(RowRule("ts", problem, (ts < earliest).fill_null(False)))
    if max_future is not None:
        hours = max_future.total_seconds() / 3600
        ahead = f"{hours:g} hours" if hours != 1 else "1 hour"
        latest = now.astimezone(dt.UTC) + max_future
        problem = f"more than {ahead} ahead of this server's clock (a feed or clock error?)"
        rules.append(RowRule("ts", problem, (ts > latest).fill_null(False)))
    return tuple(rules)


class Normaliser:
    """Applies one mapping to raw chunks of one source.

    Parameters
    ----------
    mapping
        The mapping to apply.
    source_name
        Names the source in dead letters and seeds generated event ids (``<mapping>-<hash>-<offset>``),
        so the same file read twice gives the same ids. Use a stable name (the file name, a feed id).
    tenant
        Value of ``tenant`` when the mapping does not set it (default ``default``).
    hash_key
        Secret key of the keyed hash used by ``hash`` fields (card numbers). Defaults to
        :data:`DEV_HASH_KEY`, which is only fit for public data.
    max_future
        Events dated more than this after ``clock()`` are rejected (``None``: no upper bound).
    earliest
        Events dated before this are rejected (``None``: no lower bound). See :func:`time_window_rules`.
    clock
        The current time (tests pass a fixed one).
    """

    def __init__(
        self,
        mapping: Mapping,
        source_name: str,
        *,
        tenant: str | None = None,
        hash_key: bytes | None = None,
        max_future: dt.timedelta | None = DEFAULT_MAX_FUTURE,
        earliest: dt.datetime | None = EARLIEST_TS,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.mapping = mapping
        self.max_future = max_future
        self.earliest = earliest
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.source_name = source_name
        self.tenant = tenant
        self.hash_key = hash_key or DEV_HASH_KEY
        digest = hashlib.blake2b(source_name.encode(), digest_size=6).hexdigest()
        self._id_prefix = f"{mapping.name}-{digest}-"
        self._plans: dict[tuple[tuple[str, pl.DataType], ...], _Plan] = {}
        self._tokens: dict[str, str] = {}

    # -- public -------------------------------------------------------------------------------------

    def normalise(self, raw: pl.DataFrame, first_offset: int = 0) -> NormaliseResult:
        """Normalise one raw chunk.

        Parameters
        ----------
        raw
            Raw records. Their offsets come from :data:`~finsecure.ingest.readers.OFFSET_COLUMN` when
            present, else ``first_offset`` + row number.
        first_offset
            Offset of the first row when ``raw`` has no offset column.

        Returns
        -------
        NormaliseResult
            Canonical frames per domain and dead letters; never raises for bad records.
        """
        if OFFSET_COLUMN not in raw.columns:
            raw = raw.with_columns(
                pl.int_range(first_offset, first_offset + raw.height, dtype=pl.Int64).alias(OFFSET_COLUMN)
            )
        elif raw.schema[OFFSET_COLUMN] != pl.Int64:
            raw = raw.with_columns(pl.col(OFFSET_COLUMN).cast(pl.Int64))
        plan = self._plan(raw.schema)
        stage = raw.lazy().select(
            pl.col(OFFSET_COLUMN), pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW), *plan.slots
        )
        if plan.stage_vars:
            stage = stage.with_columns(plan.stage_vars)

        frames: dict[Domain, pl.DataFrame] = {}
        rejected: list[tuple[pl.DataFrame, Domain | None]] = []
        skipped = 0
        records: list[pl.Series] = []  # the source records (``keep_raw``), made once per chunk when needed
        routed: list[tuple[_Output, pl.LazyFrame | None]]
        if plan.domain_index is None:
            # one rule: staging and building run as one query, nothing is materialised in between
            routed = [(plan.outputs[0], stage)]
        else:
            staged = stage.with_columns(plan.domain_index.alias(_DOMAIN)).collect()
            index = staged[_DOMAIN]
            if index.null_count():
                unmatched = staged.filter(pl.col(_DOMAIN).is_null())
                if self.mapping.unmatched == "skip":
                    skipped = unmatched.height
                else:
                    reasons = pl.Series("reason", [self.mapping.unmatched_reason] * unmatched.height)
                    rejected.append((unmatched.select(_ROW, OFFSET_COLUMN).with_columns(reasons), None))
            present = set(index.drop_nulls().unique().to_list())
            whole = len(present) == 1 and not index.null_count()
            routed = [
                (
                    output,
                    None
                    if position not in present
                    else staged.lazy()
                    if whole
                    else staged.lazy().filter(pl.col(_DOMAIN) == position),
                )
                for position, output in enumerate(plan.outputs)
            ]
        for output, rows in routed:
            domain = output.domain
            if rows is None:
                good = frames.get(domain, self._empty_of(domain))
            else:
                good, bad = self._build(rows, output)
                if bad is not None:
                    rejected.append((bad, domain))
                if self._keeps_raw(domain):
                    good = good.with_columns(self._records_of(raw, rows, bad, records))
            frames[domain] = frames[domain].vstack(good) if domain in frames and rows is not None else good
        return NormaliseResult(frames=frames, rejects=self._dead_letters(raw, rejected), skipped=skipped)

    def empty(self, domain: Domain) -> pl.DataFrame:
        """A canonical frame of ``domain`` with no rows."""
        return _EMPTY[domain]

    def _keeps_raw(self, domain: Domain) -> bool:
        return self.mapping.keep_raw and domain in RAW_DOMAINS

    def _empty_of(self, domain: Domain) -> pl.DataFrame:
        empty = self.empty(domain)
        if self._keeps_raw(domain):
            return empty.with_columns(pl.lit(None, pl.String).alias(RAW_COLUMN))
        return empty

    def _records_of(
        self, raw: pl.DataFrame, rows: pl.LazyFrame, bad: pl.DataFrame | None, records: list[pl.Series]
    ) -> pl.Series:
        """The source record (:mod:`finsecure.ingest.source_record`) of each kept row of ``rows``."""
        if not records:
            records.append(flat_records(raw.drop(OFFSET_COLUMN)))
        kept = rows.select(_ROW).collect().to_series()
        if bad is not None:
            kept = kept.filter(~kept.is_in(bad.get_column(_ROW).implode()))
        return records[0].gather(kept)

    # -- per chunk ----------------------------------------------------------------------------------

    def _build(self, rows: pl.LazyFrame, output: _Output) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """Canonical rows of one domain rule, and the rejected ones (``_ROW``, offset, reason) if any.

        One query computes the fast values and their failures, a second the flags of every schema
        rule that can flag anything. Only the rows flagged (usually none) go through the exact
        conversion, which keeps what it can read and spells out why it rejects the rest.
        """
        names = list(_POLARS_SCHEMAS[output.domain])
        fast = output.fast
        out = _values(rows, fast)
        rules = (*output.rules, *time_window_rules(self.clock(), self.max_future, self.earliest))
        # rules of columns that are null on every row (or "missing" of columns with no null) cannot
        # flag anything: skip them, it halves the checks of sparse canonical data
        nulls = dict(zip(out.columns, out.null_count().row(0), strict=True))
        masks = [pl.col(name) for name in _fail_names(fast)]
        distinct: dict[str, pl.DataFrame] = {}
        for rule in rules:
            if not rule.applies(nulls[rule.column], out.height):
                continue
            if not rule.per_value:
                masks.append(rule.flag)
                continue
            # codes and enumerations: test each distinct value once, then flag only the rows holding
            # a bad one (none, almost always)
            if rule.column not in distinct:
                distinct[rule.column] = out.select(pl.col(rule.column).unique())
            breaking = distinct[rule.column].filter(rule.flag)[rule.column]
            if breaking.len():
                masks.append(pl.col(rule.column).is_in(breaking.implode()))
        if not masks:
            return out.select(names), None
        flags = out.select(pl.any_horizontal(masks)).to_series()
        if not flags.any():
            return out.select(names), None
        flagged = out.filter(flags)[_ROW].implode()
        exact = output.exact
        redo = _values(rows.filter(pl.col(_ROW).is_in(flagged)), exact)
        reasons: list[pl.Expr] = [
            pl.when(pl.col(name)).then(pl.lit(problem))
            for name, problem in zip(_fail_names(exact), exact.problems, strict=True)
        ]
        reasons.extend(pl.when(rule.exact).then(pl.lit(rule.reason)) for rule in rules)
        joined = pl.concat_str(reasons, separator="; ", ignore_nulls=True)
        redo = redo.with_columns(pl.when(joined != "").then(joined).alias("reason"))
        rejected = redo["reason"].is_not_null()
        bad = redo.filter(rejected).select(_ROW, OFFSET_COLUMN, "reason")
        good = out.filter(~flags).select(_ROW, *names)
        if bad.height < redo.height:  # flagged by the fast pass, fine by the exact one: back in order
            good = pl.concat([good, redo.filter(~rejected).select(_ROW, *names)]).sort(_ROW)
        return good.select(names), bad if bad.height else None

    def _dead_letters(
        self, raw: pl.DataFrame, rejected: list[tuple[pl.DataFrame, Domain | None]]
    ) -> pa.Table:
        if not rejected:
            return dead_letters(source=self.source_name, reasons=[], offsets=[], raws=[])
        tables = []
        body = raw.drop(OFFSET_COLUMN)
        sensitive = [name for name in self.mapping.sensitive if name in body.columns]
        if sensitive:
            # the inputs of keyed hashes (card numbers) never reach the dead-letter store
            body = body.with_columns(pl.lit("[redacted]").alias(name) for name in sensitive)
        for bad, domain in rejected:
            raws = (
                body[bad[_ROW].to_list()].write_ndjson().split("\n")[:-1]
                if body.width
                else [None] * bad.height
            )
            tables.append(
                dead_letters(
                    source=self.source_name,
                    reasons=bad["reason"].to_list(),
                    offsets=bad[OFFSET_COLUMN].to_list(),
                    raws=raws,
                    domain=domain.value if domain is not None else None,
                )
            )
        if not tables:
            return dead_letters(source=self.source_name, reasons=[], offsets=[], raws=[])
        return pa.concat_tables(tables)

    # -- compiling ----------------------------------------------------------------------------------

    def _plan(self, schema: pl.Schema) -> _Plan:
        key = tuple(schema.items())
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[key] = _Compiler(self, schema).plan()
        return plan

    def keyed_hash(self, series: pl.Series, prefix: str = "") -> pl.Series:
        """HMAC-SHA256 tokens (``prefix`` + 32 hex characters) of text values, once per distinct value."""
        text = series.cast(pl.String)
        uniques = text.drop_nulls().unique()
        key, cache = self.hash_key, self._tokens
        if len(cache) > _MAX_CACHED_TOKENS:
            cache.clear()
        tokens = []
        for value in uniques.to_list():
            token = cache.get(value)
            if token is None:
                token = cache[value] = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]
            tokens.append(prefix + token)
        return text.replace_strict(
            uniques, pl.Series(tokens, dtype=pl.String), default=None, return_dtype=pl.String
        )


class _Compiler:
    """Builds the expressions of one plan; knows the dtype of every staged column."""

    def __init__(self, normaliser: Normaliser, raw_schema: pl.Schema) -> None:
        self.normaliser = normaliser
        self.mapping = normaliser.mapping
        self.raw_schema = raw_schema
        self.columns: dict[str, str] = {}  # reference -> staged column name
        self.stage_schema: dict[str, pl.DataType] = {OFFSET_COLUMN: pl.Int64(), _ROW: pl.Int64()}
        self.counter = 0
        self.fast = False
        self.lock = threading.Lock()
        self.absent: set[str] = set()  # references to columns this input does not have

    def plan(self) -> _Plan:
        slots: list[pl.Expr] = []
        refs = sorted(ref for ref in self.mapping.references() if not ref.startswith("$"))
        for index, ref in enumerate(refs):
            name = f"__c{index}"
            expr, dtype = self.resolve(ref)
            slots.append(expr.alias(name))
            self.columns[ref] = name
            self.stage_schema[name] = dtype
        self.columns["$offset"] = OFFSET_COLUMN
        stage_vars: list[pl.Expr] = []
        for var_name, spec in self.mapping.vars:
            name = f"__v_{var_name}"
            expr = self.value(spec, _Track(self, None))[0]
            dtype = self.dtype(expr)
            stage_vars.append(expr.alias(name))
            self.columns[f"${var_name}"] = name
            self.stage_schema[name] = dtype
        rules = self.mapping.rules
        domain_index: pl.Expr | None = None
        if len(rules) > 1 or rules[0].when is not None:
            chain: Any = None
            for index, rule in enumerate(rules):
                test = self.condition(rule.when) if rule.when is not None else pl.lit(True)
                chain = (
                    pl.when(test).then(pl.lit(index))
                    if chain is None
                    else chain.when(test).then(pl.lit(index))
                )
            domain_index = chain.otherwise(pl.lit(None)).cast(pl.Int32)
        unknown = self.unknown_columns(slots)
        outputs = []
        for rule in rules:
            # columns that are null whatever the row need no checks (their "missing" checks are kept)
            unset = {
                name
                for name in _POLARS_SCHEMAS[rule.domain]
                if name not in _ALWAYS_SET and (name not in rule.fields or self.unset(rule.fields[name]))
            }
            checks = tuple(
                check
                for check in row_rules(rule.domain)
                if check.column not in unset or check.problem == "missing"
            )
            outputs.append(_Output(self, rule, unknown.get(id(rule), []), checks))
        return _Plan(slots=slots, stage_vars=stage_vars, domain_index=domain_index, outputs=outputs)

    def output(self, rule: DomainRule, unknown: list[tuple[str, str]], *, fast: bool) -> _Compiled:
        """The expressions of one domain rule, the fast or the exact version."""
        self.fast = fast
        try:
            return self._output(rule, unknown)
        finally:
            self.fast = False

    def _output(self, rule: DomainRule, unknown: list[tuple[str, str]]) -> _Compiled:
        output = _Compiled([], [], [], [])
        for column, slot in unknown:
            output.failures.append(pl.col(slot).alias(f"__fail{len(output.failures)}"))
            output.problems.append(f"{_short(column)}: not a field of {rule.domain} events")
        for name, dtype in _POLARS_SCHEMAS[rule.domain].items():
            track = _Track(self, output.layers)
            compiled = self.canonical(rule.domain, name, dtype, rule.fields.get(name), track)
            output.values.append(compiled.value.alias(name))
            for mask, problem in compiled.failures:
                output.failures.append(mask.fill_null(False).alias(f"__fail{len(output.failures)}"))
                output.problems.append(f"{name}: {problem}")
        return output

    def unset(self, spec: FieldSpec) -> bool:
        """Whether a field is null on every row of this input: it reads only absent columns."""
        return bool(spec.columns) and spec.fill is None and all(ref in self.absent for ref in spec.columns)

    def unknown_columns(self, slots: list[pl.Expr]) -> dict[int, list[tuple[str, str]]]:
        """Per rule (by ``id``), the raw columns it does not read with the staged "has a value" mask.

        Only for mappings with ``unknown_fields: reject``; appends the masks to ``slots``.
        """
        if self.mapping.unknown_fields != "reject":
            return {}
        shared = {ref for _, spec in self.mapping.vars for ref in spec.references()}
        masks: dict[str, str] = {}
        found: dict[int, list[tuple[str, str]]] = {}
        for rule in self.mapping.rules:
            refs = shared | (condition_columns(rule.when) if rule.when is not None else set())
            for spec in rule.fields.values():
                refs |= spec.references()
            allowed = refs | {ref.split(".", 1)[0] for ref in refs}
            for position, column in enumerate(self.raw_schema):
                if column == OFFSET_COLUMN or column in allowed:
                    continue
                if column not in masks:
                    masks[column] = f"__u{len(masks)}"
                    # by position: senders choose names, and pl.col reads "*" or "^...$" as patterns
                    slots.append(pl.nth(position).is_not_null().alias(masks[column]))
                    self.stage_schema[masks[column]] = pl.Boolean()
                found.setdefault(id(rule), []).append((column, masks[column]))
        return found

    # -- raw column paths ---------------------------------------------------------------------------

    def resolve(self, ref: str) -> tuple[pl.Expr, pl.DataType]:
        """A raw column, or a path into nested structs, lists and JSON text; null when absent."""
        if ref in self.raw_schema:
            return _scalar(pl.col(ref), self.raw_schema[ref])
        head, *rest = ref.split(".")
        if head not in self.raw_schema or not rest:
            self.absent.add(ref)
            return pl.lit(None, pl.String), pl.String()
        expr: pl.Expr = pl.col(head)
        dtype: pl.DataType = self.raw_schema[head]
        for position, part in enumerate(rest):
            if isinstance(dtype, pl.Struct):
                fields = {f.name: _instance(f.dtype) for f in dtype.fields}
                if part not in fields:
                    return pl.lit(None, pl.String), pl.String()
                expr, dtype = expr.struct.field(part), fields[part]
            elif isinstance(dtype, pl.List) and part.isdigit():
                expr, dtype = expr.list.get(int(part), null_on_oob=True), _instance(dtype.inner)
            elif dtype == pl.String:
                path = "$" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest[position:])
                return expr.str.json_path_match(path), pl.String()
            else:
                return pl.lit(None, pl.String), pl.String()
        return _scalar(expr, dtype)

    def ref(self, name: str) -> tuple[pl.Expr, pl.DataType]:
        if name == "$source":
            return pl.lit(self.normaliser.source_name, pl.String), pl.String()
        column = self.columns[name]
        return pl.col(column), self.stage_schema[column]

    def dtype(self, expr: pl.Expr) -> pl.DataType:
        # only the columns the expression reads: building a frame of the whole stage costs far more
        roots = {
            name: self.stage_schema[name] for name in expr.meta.root_names() if name in self.stage_schema
        }
        return pl.LazyFrame(schema=roots).select(expr.alias("x")).collect_schema()["x"]

    # -- conditions ---------------------------------------------------------------------------------

    def condition(self, condition: Condition) -> pl.Expr:
        if condition.op == "all":
            return pl.all_horizontal([self.condition(c) for c in condition.children])
        if condition.op == "any":
            return pl.any_horizontal([self.condition(c) for c in condition.children])
        if condition.op == "not":
            return ~self.condition(condition.children[0])
        assert condition.column is not None  # noqa: S101 - the parser guarantees it
        expr, dtype = self.ref(condition.column)
        op, value = condition.op, condition.value
        if op == "is_null":
            return expr.is_null()
        if op == "not_null":
            return expr.is_not_null()
        if op in ("gt", "ge", "lt", "le"):
            number = expr.cast(pl.Float64, strict=False)
            tests: dict[str, pl.Expr] = {
                "gt": number > value,
                "ge": number >= value,
                "lt": number < value,
                "le": number <= value,
            }
            return tests[op]
        if op == "matches":
            return _matches(_text(expr, dtype), value)
        values = list(value) if op in ("in", "not_in") else [value]
        numeric = dtype.is_numeric() and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        )
        if numeric:
            test = expr.is_in(pl.Series(values, dtype=pl.Float64).cast(dtype, strict=False).drop_nulls())
        else:
            test = _text(expr, dtype).is_in([_as_text(v) for v in values if v is not None])
        if op == "equals" and value is None:
            return expr.is_null()
        if op in ("ne", "not_in"):
            return ~test
        return test

    # -- values -------------------------------------------------------------------------------------

    def value(self, spec: FieldSpec, track: _Track) -> tuple[pl.Expr, list[tuple[pl.Expr, str]]]:
        """The expression of a field or var before its conversion to the canonical type."""
        failures: list[tuple[pl.Expr, str]] = []
        if spec.columns:
            refs = [self.ref(column) for column in spec.columns]
            if len(refs) == 1:
                expr, dtype = refs[0]
            else:
                same = all(d == refs[0][1] for _, d in refs)
                expr = pl.coalesce([e if same else _text(e, d) for e, d in refs])
        elif spec.has_const:
            expr = pl.lit(spec.const)
        elif spec.template is not None:
            names = template_columns(spec.template)
            fmt = spec.template
            for column in names:
                fmt = fmt.replace("{" + column + "}", "{}", 1)
            expr = pl.format(fmt, *[_text(*self.ref(column)) for column in names])
        elif spec.when is not None:
            expr = self.condition(spec.when)
        else:
            chain: Any = None
            for test, literal in spec.cases:
                then = pl.lit(literal)
                chain = (
                    pl.when(self.condition(test)).then(then)
                    if chain is None
                    else chain.when(self.condition(test)).then(then)
                )
            expr = chain.otherwise(pl.lit(spec.cases_default))
        dtype = self.dtype(expr)
        if spec.regex is not None:
            text = _text(expr, dtype)
            groups = _group_count(spec.regex)
            expr = (
                pl.coalesce([text.str.extract(spec.regex, i) for i in range(1, groups + 1)])
                if groups > 1
                else text.str.extract(spec.regex, 1)
            )
            dtype = pl.String()
        if spec.strip:
            expr, dtype = _text(expr, dtype).str.strip_chars(), pl.String()
        if spec.lower:
            expr, dtype = _text(expr, dtype).str.to_lowercase(), pl.String()
        if spec.upper:
            expr, dtype = _text(expr, dtype).str.to_uppercase(), pl.String()
        if spec.null_if:
            text = _text(expr, dtype)
            expr = pl.when(text.is_in(list(spec.null_if))).then(None).otherwise(expr)
        if spec.null_unless is not None:
            expr = pl.when(_matches(_text(expr, dtype), spec.null_unless)).then(expr).otherwise(None)
        if spec.map is not None:
            keys = [k for k, _ in spec.map]
            mapped = [v for _, v in spec.map]
            text = _text(expr, dtype)
            if spec.map_default == "keep":
                expr = text.replace(keys, [_as_text(v) for v in mapped])
            else:
                default = pl.lit(spec.map_default)
                expr = text.replace_strict(keys, mapped, default=default)
            dtype = self.dtype(expr)
        if spec.cast is not None:
            target = _CAST_TYPES[spec.cast]
            expr, fails = track.checked(
                expr, functools.partial(_convert, dtype=dtype, target=target, fast=self.fast)
            )
            failures.extend(fails)
            dtype = target
        if spec.scale is not None:
            expr, fails = track.checked(
                expr, functools.partial(_convert, dtype=dtype, target=pl.Float64(), fast=self.fast)
            )
            failures.extend(fails)
            expr, dtype = expr * spec.scale, pl.Float64()
        if spec.timestamp is not None:
            parse = functools.partial(self.timestamp, dtype=dtype, spec=spec.timestamp)
            expr, fails = track.checked(expr, parse)
            failures.extend(fails)
        if spec.hash:
            # the prefix is added per distinct value, inside the hash, not to every row afterwards
            tokens = functools.partial(self.normaliser.keyed_hash, prefix=spec.hash_prefix)
            expr = track.keep(_text(expr, dtype).map_batches(tokens, return_dtype=pl.String))
        if spec.truncate is not None:
            expr = _text(expr, self.dtype(expr)).str.slice(0, spec.truncate)
        if spec.fill is not None:
            expr = expr.fill_null(pl.lit(spec.fill))
        return expr, failures

    def timestamp(
        self, expr: pl.Expr, dtype: pl.DataType, spec: TimestampSpec
    ) -> tuple[pl.Expr, list[tuple[pl.Expr, str]]]:
        if spec.unit is not None:
            problem = (
                f"not a valid time (expected a number of {spec.unit} since {spec.start or 'the Unix epoch'})"
            )
            whole = self.whole_time(expr, dtype, spec) if self.fast else None
            if whole is not None:
                return whole, [(expr.is_not_null() & whole.is_null(), problem)]
            number, _ = _convert(expr, dtype, pl.Float64(), fast=self.fast)
            micros = number * _UNITS_TO_US[spec.unit]
            if spec.days_column is not None:
                days, _ = _convert(*self.ref(spec.days_column), pl.Float64(), fast=self.fast)
                micros = micros + days * 86_400_000_000
            base = 0
            if spec.start is not None:
                base = int(spec.start.timestamp() * 1_000_000)
            # stay inside what a microsecond timestamp can hold; beyond is a parse failure
            ok = micros.is_finite() & (micros.abs() < 2**62)
            as_int = pl.when(ok).then(micros.round(0)).otherwise(None).cast(pl.Int64, strict=False) + base
            result = pl.from_epoch(as_int, time_unit="us").dt.replace_time_zone("UTC")
            return result, [(expr.is_not_null() & result.is_null(), problem)]
        if isinstance(dtype, pl.Datetime):
            return self.datetime(expr, dtype, spec.timezone)
        text = _text(expr, dtype)
        if spec.format in (None, "iso8601"):
            parsed = text.str.strptime(_TS, "%+", strict=False, cache=False)
            if spec.timezone is not None:
                naive = text.str.to_datetime(
                    time_unit="us", strict=False, format="%Y-%m-%dT%H:%M:%S%.f", cache=False
                )
                spaced = text.str.to_datetime(
                    time_unit="us", strict=False, format="%Y-%m-%d %H:%M:%S%.f", cache=False
                )
                local = pl.coalesce(naive, spaced).dt.replace_time_zone(
                    spec.timezone, ambiguous="earliest", non_existent="null"
                )
                parsed = pl.coalesce(parsed, local.dt.convert_time_zone("UTC"))
            problem = "not a valid time (expected ISO 8601" + (")" if spec.timezone else " with a time zone)")
        else:
            fmt = spec.format
            if "%z" in fmt or "%#z" in fmt or "%:z" in fmt:
                parsed = text.str.strptime(_TS, fmt, strict=False, cache=False)
            else:
                tz = spec.timezone or "UTC"
                parsed = (
                    text.str.strptime(pl.Datetime("us"), fmt, strict=False, cache=False)
                    .dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
                    .dt.convert_time_zone("UTC")
                )
            problem = f"not a valid time (expected {fmt})"
        return parsed, [(text.is_not_null() & parsed.is_null(), problem)]

    def whole_time(self, expr: pl.Expr, dtype: pl.DataType, spec: TimestampSpec) -> pl.Expr | None:
        """The fast reading of whole numbers of s/ms/us: integer arithmetic, no float detour.

        Only for values whose microseconds stay below 2**53, where the exact (float) reading is
        exact too, so both agree; anything else is null here and goes the exact way.
        """
        assert spec.unit is not None  # noqa: S101 - checked by the caller
        scale = _UNITS_TO_US[spec.unit]
        if not isinstance(scale, int) or not (dtype == pl.String or dtype.is_integer()):
            return None
        micros = _scaled(expr.cast(pl.Int64, strict=False), scale)
        if spec.days_column is not None:
            days, days_dtype = self.ref(spec.days_column)
            if not (days_dtype == pl.String or days_dtype.is_integer()):
                return None
            micros = micros + _scaled(days.cast(pl.Int64, strict=False), 86_400_000_000)
        base = int(spec.start.timestamp() * 1_000_000) if spec.start is not None else 0
        micros = pl.when(micros.abs() < _EXACT_IN_FLOAT).then(micros) + base
        return pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC")

    def datetime(
        self, expr: pl.Expr, dtype: pl.DataType, timezone: str | None
    ) -> tuple[pl.Expr, list[tuple[pl.Expr, str]]]:
        assert isinstance(dtype, pl.Datetime)  # noqa: S101 - checked by the caller
        if dtype.time_zone is None:
            if timezone is None:
                return pl.lit(None, _TS), [(expr.is_not_null(), "has no time zone")]
            expr = expr.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
        return expr.dt.convert_time_zone("UTC").cast(_TS), []

    def canonical(
        self, domain: Domain, name: str, target: pl.DataType, spec: FieldSpec | None, track: _Track
    ) -> _Field:
        """A canonical column: the mapped value converted to the schema's type, or its default."""
        if spec is not None and self.unset(spec):
            return _Field(pl.lit(None, target))
        if spec is None:
            if name == "event_id":
                return _Field(pl.format(self.normaliser._id_prefix + "{}", pl.col(OFFSET_COLUMN)))
            if name == "source":
                return _Field(pl.lit(self.mapping.source, pl.String))
            if name == "domain":
                return _Field(pl.lit(domain.value, pl.String))
            if name == "tenant":
                return _Field(pl.lit(self.normaliser.tenant or "default", pl.String))
            return _Field(pl.lit(None, target))
        expr, failures = self.value(spec, track)
        dtype = self.dtype(expr)
        if isinstance(target, pl.Datetime):
            if spec.timestamp is None:
                iso = TimestampSpec(format="iso8601")
                expr, fails = track.checked(expr, lambda x: self.timestamp(x, dtype, iso))
                failures = failures + fails
            return _Field(expr.cast(target), failures)
        converted, fails = track.checked(expr, lambda x: _convert(x, dtype, target, fast=self.fast))
        return _Field(converted, failures + fails)


_CAST_TYPES: dict[str, pl.DataType] = {
    "str": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
}


def _scalar(expr: pl.Expr, dtype: pl.DataType) -> tuple[pl.Expr, pl.DataType]:
    """Nested values (structs, lists) as JSON text, so every staged column holds plain values."""
    if isinstance(dtype, pl.Struct):
        return expr.struct.json_encode(), pl.String()
    if isinstance(dtype, pl.List | pl.Array):
        wrapped = (
            pl.struct(expr.alias("v")).struct.json_encode().str.strip_prefix('{"v":').str.strip_suffix("}")
        )
        return pl.when(expr.is_null()).then(None).otherwise(wrapped), pl.String()
    if dtype == pl.Null:
        return expr.cast(pl.String), pl.String()
    return expr, dtype


def _instance(dtype: Any) -> pl.DataType:
    """A dtype instance (Polars reports some nested field types as classes)."""
    instance = dtype if isinstance(dtype, pl.DataType) else dtype()
    if not isinstance(instance, pl.DataType):
        raise TypeError(f"not a Polars data type: {dtype!r}")
    return instance


def _text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return expr
    if dtype == pl.Boolean:
        return pl.when(expr).then(pl.lit("true")).when(~expr).then(pl.lit("false")).otherwise(None)
    return expr.cast(pl.String)


def _scaled(number: pl.Expr, scale: int) -> pl.Expr:
    """``number * scale`` where the product stays exact in a float (null otherwise, never overflowing)."""
    return pl.when(number.abs() < _EXACT_IN_FLOAT // scale).then(number * scale)


def _matches(text: pl.Expr, pattern: str) -> pl.Expr:
    """Regex search; patterns that are plain text, maybe anchored (``_pos$``), use cheaper tests."""
    literal = _LITERAL_PATTERN.fullmatch(pattern)
    if literal is None:
        return text.str.contains(pattern)
    start, body, end = literal.groups()
    if start and end:
        return text == body
    if start:
        return text.str.starts_with(body)
    if end:
        return text.str.ends_with(body)
    return text.str.contains(body, literal=True)


def _fail_names(compiled: _Compiled) -> list[str]:
    return [f"__fail{i}" for i in range(len(compiled.failures))]


def _values(rows: pl.LazyFrame, compiled: _Compiled) -> pl.DataFrame:
    """Row number, offset, canonical values and failure masks of ``rows``."""
    lazy = rows
    for layer in compiled.layers:
        lazy = lazy.with_columns(layer)
    return lazy.select(pl.col(_ROW), pl.col(OFFSET_COLUMN), *compiled.values, *compiled.failures).collect()


def _short(name: str, limit: int = 64) -> str:
    """A raw field name as dead-letter reasons show it: senders choose names, so cap their length."""
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _group_count(pattern: str) -> int:
    return re.compile(pattern).groups


def _convert(
    expr: pl.Expr, dtype: pl.DataType, target: pl.DataType, *, fast: bool = False
) -> tuple[pl.Expr, list[tuple[pl.Expr, str]]]:
    """Convert to ``target``; a value that is there but cannot be converted is a failure.

    ``fast`` reads only the plain spellings (``12.5``, ``7``, ``true``/``1``), skipping the trimming,
    lower-casing and float-to-int detours that cost several passes; anything else fails and is sent
    to the exact conversion. Where the fast one succeeds, both give the same value.
    """
    if dtype == target:
        out = expr
        if target == pl.String:
            out = pl.when(expr.str.len_bytes() == 0).then(None).otherwise(expr)
        return out, []
    if target == pl.String:
        text = _text(expr, dtype)
        return pl.when(text.str.len_bytes() == 0).then(None).otherwise(text), []
    if dtype == pl.Null:
        return pl.lit(None, target), []
    if target == pl.Boolean:
        lowered = _text(expr, dtype)
        if not fast:
            lowered = lowered.str.strip_chars().str.to_lowercase()
        out = lowered.replace_strict(_BOOL_TEXT, default=None, return_dtype=pl.Boolean)
        return out, [(expr.is_not_null() & out.is_null(), "not true/false")]
    if target.is_float():
        source = expr.str.strip_chars() if dtype == pl.String and not fast else expr
        out = source.cast(target, strict=False)
        return out, [(expr.is_not_null() & out.is_null(), "not a number")]
    if target.is_integer():
        if dtype == pl.String:
            if fast:
                number = expr.cast(pl.Int64, strict=False)
            else:
                text = expr.str.strip_chars()
                number = pl.coalesce(
                    text.cast(pl.Int64, strict=False), _integral(text.cast(pl.Float64, strict=False))
                )
        elif dtype.is_float():
            number = _integral(expr)
        else:
            number = expr.cast(pl.Int64, strict=False)
        out = number.cast(target, strict=False)
        return out, [(expr.is_not_null() & out.is_null(), "not a whole number in range")]
    out = expr.cast(target, strict=False)
    return out, [(expr.is_not_null() & out.is_null(), f"cannot be read as {target}")]


def _integral(number: pl.Expr) -> pl.Expr:
    ok = number.is_finite() & (number == number.floor()) & (number.abs() < 2**63)
    return pl.when(ok).then(number).otherwise(None).cast(pl.Int64, strict=False)
