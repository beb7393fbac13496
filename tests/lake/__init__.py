"""Tests of the event lake. Helpers here build canonical rows for them and the event search API tests."""

from __future__ import annotations

import datetime as dt

import polars as pl

from finsecure.event.schemas import Domain, conform_batch

T0 = dt.datetime(2024, 5, 1, 22, 0, tzinfo=dt.UTC)


def canonical_frame(
    domain: Domain | str = Domain.payment,
    n: int = 10,
    *,
    start: dt.datetime = T0,
    step: dt.timedelta = dt.timedelta(minutes=1),
    prefix: str = "e",
    **columns: object,
) -> pl.DataFrame:
    """``n`` canonical rows of ``domain`` one ``step`` apart from ``start``.

    Entity keys cycle so filters have something to find: ``user_id`` u0..u2, ``card_id`` c0..c4,
    ``src_ip`` 10.0.0.0..3. Extra keyword arguments are canonical columns (a list or one value for all).
    """
    domain = Domain(domain)
    data: dict[str, object] = {
        "event_id": [f"{prefix}{i}" for i in range(n)],
        "ts": [start + i * step for i in range(n)],
        "source": ["test_feed"] * n,
        "user_id": [f"u{i % 3}" for i in range(n)],
        "card_id": [f"c{i % 5}" for i in range(n)],
        "src_ip": [f"10.0.0.{i % 4}" for i in range(n)],
    }
    for name, value in columns.items():
        data[name] = value if isinstance(value, list) else [value] * n
    frame = pl.DataFrame(data)
    conformed = pl.from_arrow(conform_batch(domain, frame.to_arrow()))
    assert isinstance(conformed, pl.DataFrame)
    return conformed
