"""From canonical event batches to aggregated graph edges, without a Python loop over events.

Each domain links the entities its events name: a card used at a terminal, a customer signing in from a
device and an address, an account paying a payee, a cloud principal calling from an address, one address
talking to another. :data:`RELATIONS` lists these links; :func:`aggregate_edges` turns one batch into one
row per (relation, source entity, target entity) with the number of events, the money moved and the first
and last time the link was seen.

Both IP columns (``src_ip``, ``dst_ip``) name the same kind of entity, ``ip``, so that an address seen
as the source of a sign-in and as the target of a connection is one node.

Example
-------
>>> import datetime as dt
>>> frame = pl.DataFrame({
...     "ts": [dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC), dt.datetime(2026, 1, 1, 11, tzinfo=dt.UTC)],
...     "card_id": ["c1", "c1"],
...     "terminal_id": ["t1", "t1"],
...     "amount": [10.0, 2.5],
... })
>>> edges = aggregate_edges("payment", frame)
>>> edges.select("relation", "src_key", "dst_key", "count", "amount").rows()
[('used_at', 'c1', 't1', 2, 12.5)]
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from finsecure.event.schemas import Domain

__all__ = [
    "EDGE_SCHEMA",
    "ENTITY_TYPES",
    "RELATIONS",
    "RELATION_TEXT",
    "Relation",
    "aggregate_edges",
    "entity_type_of",
    "merge_edges",
]


@dataclass(frozen=True, slots=True)
class Relation:
    """One kind of link: events whose ``src_column`` and ``dst_column`` are both set link the two.

    Attributes
    ----------
    relation
        The edge's name, e.g. ``used_at``.
    src_column, dst_column
        Canonical columns holding the two entity keys.
    amount_column
        A numeric column summed into the edge's amount, or ``None``.
    only_when
        ``(column, value)``: only events where ``column`` equals ``value`` make the link.
    """

    relation: str
    src_column: str
    dst_column: str
    amount_column: str | None = None
    only_when: tuple[str, str] | None = None


#: Canonical column -> entity type. Both address columns are one type: ``ip``.
_COLUMN_TYPES: Mapping[str, str] = types.MappingProxyType({"src_ip": "ip", "dst_ip": "ip"})

#: Every entity type the graph holds.
ENTITY_TYPES: tuple[str, ...] = (
    "user_id",
    "account_id",
    "card_id",
    "device_id",
    "ip",
    "merchant_id",
    "terminal_id",
    "payee_id",
    "principal_id",
)


def entity_type_of(column: str) -> str:
    """The entity type of a canonical column (``src_ip`` and ``dst_ip`` are both ``ip``).

    >>> entity_type_of("dst_ip"), entity_type_of("card_id")
    ('ip', 'card_id')
    """
    return _COLUMN_TYPES.get(column, column)


RELATIONS: Mapping[Domain, tuple[Relation, ...]] = types.MappingProxyType(
    {
        Domain.payment: (
            Relation("used_at", "card_id", "terminal_id", "amount"),
            Relation("paid_at", "card_id", "merchant_id", "amount"),
            Relation("holds", "account_id", "card_id"),
            Relation("owns", "user_id", "account_id"),
            Relation("paid", "account_id", "payee_id", "amount"),
            Relation("used_device", "user_id", "device_id"),
            Relation("used_ip", "user_id", "src_ip"),
        ),
        Domain.auth: (
            Relation("used_device", "user_id", "device_id"),
            Relation("used_ip", "user_id", "src_ip"),
            Relation("owns", "user_id", "account_id"),
            Relation("added_payee", "account_id", "payee_id", only_when=("action", "payee_add")),
        ),
        Domain.cloud: (
            Relation("called_from", "principal_id", "src_ip"),
            Relation("is_principal", "user_id", "principal_id"),
        ),
        Domain.network: (
            Relation("connected_to", "src_ip", "dst_ip"),
            Relation("used_ip", "device_id", "src_ip"),
        ),
    }
)
"""The links each domain makes, source entity first."""

#: How each relation reads in a sentence: ``"<source> <text> <target>"``.
RELATION_TEXT: Mapping[str, str] = types.MappingProxyType(
    {
        "used_at": "was used at",
        "paid_at": "paid at",
        "holds": "holds",
        "owns": "owns",
        "paid": "sent money to",
        "used_device": "used",
        "used_ip": "connected from",
        "added_payee": "added the payee",
        "called_from": "called the cloud from",
        "is_principal": "acts in the cloud as",
        "connected_to": "connected to",
    }
)

#: Columns of an aggregated edge frame; times are microseconds since the epoch (UTC).
EDGE_SCHEMA: Mapping[str, pl.DataType] = types.MappingProxyType(
    {
        "relation": pl.String(),
        "src_type": pl.String(),
        "src_key": pl.String(),
        "dst_type": pl.String(),
        "dst_key": pl.String(),
        "count": pl.Int64(),
        "amount": pl.Float64(),
        "first_seen": pl.Int64(),
        "last_seen": pl.Int64(),
    }
)

_KEYS = ["relation", "src_type", "src_key", "dst_type", "dst_key"]


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=dict(EDGE_SCHEMA))


def _ts_us(frame: pl.DataFrame) -> pl.Expr:
    dtype = frame.schema["ts"]
    if isinstance(dtype, pl.Datetime):
        return pl.col("ts").dt.epoch("us")
    return pl.col("ts").cast(pl.Int64)


def aggregate_edges(domain: Domain | str, frame: pl.DataFrame) -> pl.DataFrame:
    """One row per link seen in ``frame`` (columns :data:`EDGE_SCHEMA`), summed over its events.

    Parameters
    ----------
    domain
        The domain of every row (picks the :data:`RELATIONS`).
    frame
        Canonical columns; at least ``ts``. Relations whose columns are missing are skipped; events with
        a null key make no link, and an entity never links to itself.

    Returns
    -------
    polars.DataFrame
        ``relation, src_type, src_key, dst_type, dst_key, count, amount, first_seen, last_seen``;
        amounts that are null or not finite count as zero.
    """
    domain = Domain(domain)
    if frame.height == 0 or "ts" not in frame.columns:
        return _empty()
    ts = _ts_us(frame)
    parts: list[pl.LazyFrame] = []
    lazy = frame.lazy()
    for rel in RELATIONS[domain]:
        needed = [rel.src_column, rel.dst_column]
        if rel.only_when is not None:
            needed.append(rel.only_when[0])
        if any(column not in frame.columns for column in needed):
            continue
        src, dst = pl.col(rel.src_column), pl.col(rel.dst_column)
        keep = src.is_not_null() & dst.is_not_null()
        src_type, dst_type = entity_type_of(rel.src_column), entity_type_of(rel.dst_column)
        if src_type == dst_type:
            keep = keep & (src != dst)
        if rel.only_when is not None:
            keep = keep & (pl.col(rel.only_when[0]) == rel.only_when[1]).fill_null(False)
        if rel.amount_column is not None and rel.amount_column in frame.columns:
            raw = pl.col(rel.amount_column).cast(pl.Float64)
            amount = pl.when(raw.is_finite()).then(raw).otherwise(0.0)
        else:
            amount = pl.lit(0.0, pl.Float64)
        parts.append(
            lazy.filter(keep).select(
                pl.lit(rel.relation).alias("relation"),
                pl.lit(src_type).alias("src_type"),
                src.cast(pl.String).alias("src_key"),
                pl.lit(dst_type).alias("dst_type"),
                dst.cast(pl.String).alias("dst_key"),
                amount.alias("amount"),
                ts.alias("ts"),
            )
        )
    if not parts:
        return _empty()
    return (
        pl.concat(parts)
        .group_by(_KEYS)
        .agg(
            pl.len().cast(pl.Int64).alias("count"),
            pl.col("amount").sum(),
            pl.col("ts").min().alias("first_seen"),
            pl.col("ts").max().alias("last_seen"),
        )
        .select(list(EDGE_SCHEMA))
        .collect()
    )


def merge_edges(*frames: pl.DataFrame) -> pl.DataFrame:
    """Aggregated edge frames merged into one (counts and amounts added, first/last seen widened).

    >>> a = pl.DataFrame({"relation": ["owns"], "src_type": ["user_id"], "src_key": ["u"],
    ...     "dst_type": ["account_id"], "dst_key": ["a"], "count": [1], "amount": [0.0],
    ...     "first_seen": [5], "last_seen": [5]})
    >>> merge_edges(a, a.with_columns(first_seen=pl.lit(2))).select("count", "first_seen", "last_seen").rows()
    [(2, 2, 5)]
    """
    present = [f.select(pl.col(c).cast(t) for c, t in EDGE_SCHEMA.items()) for f in frames if f.height]
    if not present:
        return _empty()
    return (
        pl.concat(present)
        .group_by(_KEYS)
        .agg(
            pl.col("count").sum(),
            pl.col("amount").sum(),
            pl.col("first_seen").min(),
            pl.col("last_seen").max(),
        )
        .select(list(EDGE_SCHEMA))
    )
