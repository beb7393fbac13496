"""Canonical Polars frames from NumPy columns.

`assemble` is the fast path for background rows (NumPy codes and vocabularies in, one frame out);
`canonical_frame` is the simple path for a campaign's few rows (values in, frame out). Both give exactly
a domain's canonical columns in schema order.

Example
-------
>>> import numpy as np
>>> from finsecure.event.schemas import Domain, conform_batch
>>> frame = canonical_frame(
...     Domain.payment,
...     2,
...     {"ts": np.array([0, 1_000_000]), "amount": np.array([9.5, 12.0]), "currency": "EUR"},
...     source="sim_core_banking",
... )
>>> frame.columns[:4], frame["currency"].to_list()
(['event_id', 'ts', 'domain', 'source'], ['EUR', 'EUR'])
>>> conform_batch(Domain.payment, frame.with_columns(event_id=pl.lit("x")).to_arrow()).num_rows
2
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.event.schemas import ARROW_SCHEMAS, Domain
from finsecure.sim.sampling import stable_order

__all__ = [
    "CAMPAIGN_COLUMN",
    "POLARS_SCHEMAS",
    "WIDE_SCHEMA",
    "Column",
    "Part",
    "assemble",
    "canonical_frame",
]

Column = pl.Series | np.ndarray | list[object] | tuple[object, ...] | str | float | int | bool | None
"""A column given to `canonical_frame`: a series or array of the frame's length, or one value for all rows."""

CAMPAIGN_COLUMN = "_campaign"
"""Internal column: campaign number of a row (null for background); dropped before rows leave the source."""


def _polars_schema(domain: Domain) -> pl.Schema:
    frame = pl.from_arrow(ARROW_SCHEMAS[domain].empty_table())
    assert isinstance(frame, pl.DataFrame)  # noqa: S101 - a table converts to a frame
    return frame.schema


POLARS_SCHEMAS: Mapping[Domain, pl.Schema] = types.MappingProxyType({d: _polars_schema(d) for d in Domain})
"""Each domain's canonical schema as Polars dtypes (same names and order as the Arrow schema)."""


def _wide_schema() -> pl.Schema:
    columns: dict[str, pl.DataType] = {}
    for domain in Domain:
        for name, dtype in POLARS_SCHEMAS[domain].items():
            known = columns.setdefault(name, dtype)
            if known != dtype:  # pragma: no cover - guarded by a test on the canonical schemas
                raise TypeError(f"column {name!r} has type {known} in one domain and {dtype} in {domain}")
    return pl.Schema(columns)


WIDE_SCHEMA: pl.Schema = _wide_schema()
"""Every column of every domain once (header first): how a mixed-domain NDJSON file is read back.

Columns shared by two domains (``action``, ``outcome``, ``service``, ``mfa_used``, ``payee_id``...) have the
same type in both, so one column serves both; a row's ``domain`` says which of its columns apply.
"""


def canonical_frame(
    domain: Domain,
    n: int,
    columns: Mapping[str, Column],
    *,
    source: str,
    tenant: str = "default",
    label: int = 0,
    label_detail: str | None = None,
    campaign: int | None = None,
) -> pl.DataFrame:
    """Build ``n`` rows of ``domain`` with exactly its canonical columns, in order.

    Parameters
    ----------
    domain
        The domain of every row.
    n
        Number of rows.
    columns
        Values by canonical column name: series or arrays of length ``n``, or scalars repeated. ``ts`` is
        microseconds since the epoch (UTC). Columns not given are null (``event_id`` is filled later).
    source, tenant, label, label_detail
        Header values shared by all rows.
    campaign
        Campaign number, kept in the internal `CAMPAIGN_COLUMN` (added only when given).
    """
    schema = POLARS_SCHEMAS[domain]
    given: dict[str, pl.Series] = {}
    scalars: dict[str, object] = {
        "domain": domain.value,
        "source": source,
        "tenant": tenant,
        "label": label,
        "label_detail": label_detail,
    }
    for name, value in columns.items():
        if name not in schema:
            raise KeyError(f"{name!r} is not a column of the {domain} schema")
        if isinstance(value, pl.Series):
            given[name] = value.alias(name)
        elif isinstance(value, np.ndarray):
            given[name] = pl.Series(name, value)
        elif isinstance(value, list | tuple):
            given[name] = pl.Series(name, list(value), strict=False)
        else:
            scalars[name] = value
    for name, series in given.items():
        if len(series) != n:
            raise ValueError(f"column {name!r} has {len(series)} values for {n} rows")
    exprs: list[pl.Expr] = []
    for name, dtype in schema.items():
        if name in given:
            if name == "ts":
                exprs.append(pl.col(name).cast(pl.Int64).cast(pl.Datetime("us", "UTC")))
            else:
                exprs.append(pl.col(name).cast(dtype))
        else:
            exprs.append(pl.lit(scalars.get(name), dtype=dtype).alias(name))
    if campaign is not None:
        exprs.append(pl.lit(campaign, dtype=pl.Int32).alias(CAMPAIGN_COLUMN))
    base = pl.DataFrame(list(given.values())) if given else pl.DataFrame({"_n": np.zeros(n, np.int8)})
    return base.select(exprs)


Part = dict[str, "npt.NDArray[np.generic] | int | float"]
"""Rows of one kind, as NumPy columns coded for `assemble` (see there); scalars repeat."""


def assemble(
    domain: Domain,
    parts: list[Part],
    text: Mapping[str, tuple[pl.Series, ...]],
    *,
    source: str,
    tenant: str = "default",
    label: int = 0,
    label_detail: str | None = None,
    constants: Mapping[str, object] | None = None,
    campaign: int | None = None,
) -> pl.DataFrame:
    """Merge parts (each sorted by time or not) into one canonical frame sorted by ``ts`` (stable).

    Each part maps column names to NumPy arrays (or scalars) coded so that nulls need no masks:

    * ``ts``: int64 microseconds since the epoch (required);
    * a column listed in ``text``: int64 row numbers into its vocabulary, -1 for null; when the column
      has several vocabularies, ``"<name>#"`` (int8) says which one (0 when absent);
    * float columns: NaN for null; integer columns: -1 for null (all canonical counts are >= 0);
    * bool columns: int8 -1 (null), 0 or 1 (or plain bools).

    Columns absent from a part are null in its rows; columns absent from every part are null, or
    take their value from ``constants``.
    """
    schema = POLARS_SCHEMAS[domain]
    sizes = [len(np.asarray(part["ts"])) for part in parts]
    ts = (
        np.concatenate([np.asarray(part["ts"], dtype=np.int64) for part in parts])
        if parts
        else np.zeros(0, np.int64)
    )
    order = None if _is_sorted(ts) else stable_order(ts)
    names = {name for part in parts for name in part if not name.endswith("#")}
    unknown = names - set(schema)
    if unknown:
        raise KeyError(f"not column(s) of the {domain} schema: {', '.join(sorted(unknown))}")
    series: dict[str, pl.Series] = {"ts": pl.Series("ts", ts if order is None else ts[order])}
    exprs: dict[str, pl.Expr] = {"ts": pl.col("ts").cast(pl.Datetime("us", "UTC"))}

    def merged(name: str, fill: float, dtype: type[np.generic]) -> npt.NDArray[np.generic]:
        chunks = []
        for part, size in zip(parts, sizes, strict=True):
            value = part.get(name, fill)
            chunks.append(np.broadcast_to(np.asarray(value, dtype=dtype), (size,)))
        joined = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
        return joined if order is None else joined[order]

    for name in sorted(names - {"ts"}):
        dtype = schema[name]
        if name in text:
            vocabs = text[name]
            index = merged(name, -1, np.int64).astype(np.int64, copy=False)
            if len(vocabs) == 1:
                series[f"{name}#0"] = _gather(vocabs[0], index).alias(f"{name}#0")
                expr = pl.col(f"{name}#0")
            else:
                which = merged(name + "#", 0, np.int8)
                series[f"{name}#"] = pl.Series(f"{name}#", which)
                for k, vocab in enumerate(vocabs):
                    rows = np.where(which == k, index, 0)
                    series[f"{name}#{k}"] = _gather(vocab, rows).alias(f"{name}#{k}")
                expr = pl.col(f"{name}#{len(vocabs) - 1}")
                for k in range(len(vocabs) - 2, -1, -1):
                    expr = pl.when(pl.col(f"{name}#") == k).then(pl.col(f"{name}#{k}")).otherwise(expr)
            if (index < 0).any():
                series[f"{name}#valid"] = pl.Series(f"{name}#valid", index >= 0)
                expr = pl.when(pl.col(f"{name}#valid")).then(expr)
            exprs[name] = expr.cast(dtype)
        elif dtype == pl.Float64:
            values = merged(name, np.nan, np.float64)
            series[name] = pl.Series(name, values, nan_to_null=bool(np.isnan(values).any()))
            exprs[name] = pl.col(name)
        elif dtype == pl.Boolean:
            flags = merged(name, -1, np.int8).astype(np.int8, copy=False)
            series[name] = pl.Series(name, flags)
            expr = pl.col(name) > 0
            exprs[name] = pl.when(pl.col(name) >= 0).then(expr) if (flags < 0).any() else expr
        elif dtype.is_integer():
            ints = merged(name, -1, np.int64).astype(np.int64, copy=False)
            series[name] = pl.Series(name, ints)
            expr = pl.col(name).cast(dtype)
            exprs[name] = pl.when(pl.col(name) >= 0).then(expr) if (ints < 0).any() else expr
        else:
            raise TypeError(f"{domain} column {name!r} ({dtype}) needs a vocabulary in `text`")
    literals: dict[str, object] = {
        "domain": domain.value,
        "source": source,
        "tenant": tenant,
        "label": label,
        "label_detail": label_detail,
        **(constants or {}),
    }
    select = [
        exprs[name].alias(name) if name in exprs else pl.lit(literals.get(name), dtype=dtype).alias(name)
        for name, dtype in schema.items()
    ]
    if campaign is not None:
        select.append(pl.lit(campaign, dtype=pl.Int32).alias(CAMPAIGN_COLUMN))
    base = pl.DataFrame(list(series.values()))
    return base.select(select)


def _gather(vocab: pl.Series, rows: npt.NDArray[np.int64]) -> pl.Series:
    """``vocab[rows]``; rows below 0 (and every row, for an empty vocabulary) give an arbitrary or null value
    that the caller masks."""
    if len(vocab) == 0:
        return pl.repeat(None, len(rows), dtype=vocab.dtype, eager=True)
    return vocab.gather(np.maximum(rows, 0))


def _is_sorted(ts: npt.NDArray[np.int64]) -> bool:
    return bool(len(ts) < 2 or (ts[1:] >= ts[:-1]).all())
