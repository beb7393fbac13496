"""Helpers that make a pipeline or operator test about ten lines long (after bytewax's ``testing``).

Example
-------
>>> import polars as pl
>>> from finsecure.pipeline.batch import Batch, Step
>>> class Euros(Step):
...     step_id = "euros"
...     def process(self, batch: Batch) -> Batch:
...         return batch.with_frame(batch.frame.filter(pl.col("currency") == "EUR"))
>>> sink = run_pipeline([Euros()], [sample_frame("payment", 25)], max_rows=10)  # every 10th row is GBP
>>> [len(batch) for batch in sink.batches], sink.concat()["currency"].unique().to_list()
([9, 9, 5], ['EUR'])
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from finsecure.event.schemas import Domain
from finsecure.ingest.deadletter import DEAD_LETTER_SCHEMA
from finsecure.pipeline.batch import Batch, Sink, Source, SourceChunk, Step
from finsecure.pipeline.drive import drive
from finsecure.pipeline.engine import Pipeline, canonical_polars_schema

__all__ = ["TestingSink", "TestingSource", "run_pipeline", "sample_frame"]


class TestingSource(Source):
    """Yields the given chunks once, in order.

    Parameters
    ----------
    chunks
        :class:`SourceChunk` objects, or canonical frames (their domain is read from the ``domain``
        column, or given by ``domain``).
    domain
        The domain of plain frames whose domain cannot be read from their rows.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        chunks: Iterable[SourceChunk | pl.DataFrame],
        *,
        source_id: str = "testing",
        domain: Domain | str | None = None,
    ) -> None:
        self.source_id = source_id
        self._chunks = list(chunks)
        self._domain = None if domain is None else Domain(domain)
        self.closed = False

    def chunks(self) -> Iterator[SourceChunk]:
        """Yield every chunk (plain frames wrapped in a :class:`SourceChunk`)."""
        for index, chunk in enumerate(self._chunks):
            if isinstance(chunk, SourceChunk):
                yield chunk
                continue
            domain = self._domain
            if domain is None:
                if chunk.height == 0 or "domain" not in chunk.columns:
                    raise ValueError(f"chunk #{index}: cannot tell its domain; pass domain=")
                domain = Domain(chunk["domain"][0])
            yield SourceChunk(domain=domain, frame=chunk)

    def close(self) -> None:
        """Remember that the source was closed."""
        self.closed = True


class TestingSink(Sink):
    """Collects every batch it is given; also usable as a dead-letter sink (:meth:`reject`)."""

    __test__ = False

    def __init__(self, sink_id: str = "testing") -> None:
        self.sink_id = sink_id
        self.batches: list[Batch] = []
        self.dead_letters: list[pa.Table] = []
        self.flushes = 0
        self.closed = False
        self._changed = threading.Condition()

    def write(self, batch: Batch) -> None:
        """Keep the batch (Polars frames are immutable, so keeping the reference is safe)."""
        with self._changed:
            self.batches.append(batch)
            self._changed.notify_all()

    def reject(self, table: pa.Table) -> None:
        """A dead-letter sink: keep the table."""
        with self._changed:
            self.dead_letters.append(table)
            self._changed.notify_all()

    def flush(self) -> None:
        """Count flushes."""
        self.flushes += 1

    def close(self) -> None:
        """Remember that the sink was closed."""
        super().close()
        self.closed = True

    def frames(self) -> list[pl.DataFrame]:
        """Every batch's frame, in arrival order."""
        with self._changed:
            return [batch.frame for batch in self.batches]

    def concat(self) -> pl.DataFrame:
        """All rows received, in arrival order (an empty frame when nothing came)."""
        frames = self.frames()
        return pl.concat(frames, how="vertical") if frames else pl.DataFrame()

    def dead_letter_table(self) -> pa.Table:
        """All dead letters received, as one table."""
        with self._changed:
            tables = list(self.dead_letters)
        return pa.concat_tables(tables) if tables else DEAD_LETTER_SCHEMA.empty_table()

    @property
    def rows(self) -> int:
        """Rows received so far."""
        with self._changed:
            return sum(len(batch) for batch in self.batches)

    def wait_for(self, *, rows: int | None = None, batches: int | None = None, timeout: float = 10.0) -> bool:
        """Block until at least ``rows`` rows and ``batches`` batches arrived; False on timeout."""

        def done() -> bool:
            have_rows = sum(len(batch) for batch in self.batches)
            return (rows is None or have_rows >= rows) and (batches is None or len(self.batches) >= batches)

        with self._changed:
            return self._changed.wait_for(done, timeout)


def run_pipeline(
    steps: Sequence[Step],
    inputs: Source | Iterable[SourceChunk | pl.DataFrame],
    *,
    sink: TestingSink | None = None,
    **pipeline_kwargs: Any,
) -> TestingSink:
    """Run ``inputs`` through a pipeline of ``steps`` to the end and return the sink that collected it.

    Dead letters land in ``sink.dead_letters`` unless ``dead_letter_sink`` is given. Other keyword
    arguments go to :class:`Pipeline` (``max_rows``, ``max_age_s``...).
    """
    sink = sink or TestingSink()
    source = inputs if isinstance(inputs, Source) else TestingSource(inputs)
    pipeline_kwargs.setdefault("dead_letter_sink", sink.reject)
    with Pipeline(steps, [sink], **pipeline_kwargs) as pipeline:
        drive(source, pipeline)
    return sink


_SAMPLE_START = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def sample_frame(
    domain: Domain | str,
    rows: int,
    *,
    entities: int = 100,
    start: dt.datetime = _SAMPLE_START,
    interval_s: float = 1.0,
    source: str = "sample",
    seed: int = 0,
) -> pl.DataFrame:
    """Plausible canonical rows of one domain, built with vectorised expressions (fast for millions).

    Entity keys cycle through ``entities`` values; ``ts`` starts at ``start`` and steps by
    ``interval_s``; numeric fields are seeded random. Columns a domain does not fill are null.

    Examples
    --------
    >>> frame = sample_frame("auth", 3)
    >>> frame["event_id"].to_list(), frame["user_id"].to_list()
    (['auth-0', 'auth-1', 'auth-2'], ['user-0', 'user-1', 'user-2'])
    """
    key = Domain(domain)
    rng = np.random.default_rng(seed)
    i = pl.int_range(0, rows, dtype=pl.Int64)
    entity = (i % max(entities, 1)).cast(pl.String)
    ip_tail = (i % max(entities, 1)) % 250 + 1
    step_us = round(interval_s * 1e6)
    common: dict[str, pl.Expr] = {
        "event_id": pl.concat_str(pl.lit(f"{key.value}-"), i.cast(pl.String)),
        "ts": pl.lit(start.astimezone(dt.UTC), pl.Datetime("us", "UTC"))
        + pl.duration(microseconds=i * step_us),
        "domain": pl.lit(key.value),
        "source": pl.lit(source),
        "tenant": pl.lit("default"),
        "user_id": pl.concat_str(pl.lit("user-"), entity),
    }
    per_domain: dict[Domain, dict[str, pl.Expr]] = {
        Domain.payment: {
            "account_id": pl.concat_str(pl.lit("acct-"), entity),
            "card_id": pl.concat_str(pl.lit("card-"), entity),
            "merchant_id": pl.concat_str(pl.lit("m-"), (i % 37).cast(pl.String)),
            "transaction_id": pl.concat_str(pl.lit("tx-"), i.cast(pl.String)),
            "amount": pl.lit(pl.Series(rng.gamma(2.0, 30.0, rows).round(2))),
            "currency": pl.when(i % 10 == 9).then(pl.lit("GBP")).otherwise(pl.lit("EUR")),
            "channel": pl.lit("pos"),
            "terminal_id": pl.concat_str(pl.lit("t-"), (i % 53).cast(pl.String)),
            "country": pl.lit("GB"),
        },
        Domain.auth: {
            "device_id": pl.concat_str(pl.lit("dev-"), entity),
            "src_ip": pl.concat_str(pl.lit("10.1.0."), ip_tail.cast(pl.String)),
            "action": pl.lit("login"),
            "outcome": pl.when(i % 7 == 6).then(pl.lit("failure")).otherwise(pl.lit("success")),
            "mfa_used": i % 2 == 0,
        },
        Domain.network: {
            "src_ip": pl.concat_str(pl.lit("10.2.0."), ip_tail.cast(pl.String)),
            "dst_ip": pl.lit("192.0.2.10"),
            "src_port": (i % 20_000 + 40_000).cast(pl.Int32),
            "dst_port": pl.lit(443, pl.Int32),
            "protocol": pl.lit("tcp"),
            "bytes_out": pl.lit(pl.Series(rng.integers(0, 1_000_000, rows))),
        },
        Domain.cloud: {
            "cloud_provider": pl.lit("aws"),
            "action": pl.lit("GetObject"),
            "outcome": pl.lit("success"),
            "principal_id": pl.concat_str(pl.lit("arn:aws:iam::1:user/u"), entity),
        },
    }
    exprs = {**common, **per_domain[key]}
    schema = canonical_polars_schema(key)
    columns = [
        (exprs[name] if name in exprs else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in schema.items()
    ]
    return pl.select(columns) if rows else pl.DataFrame(schema=schema)
