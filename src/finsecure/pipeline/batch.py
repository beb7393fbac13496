"""The contracts every part of the stream engine shares: a batch, a step, a sink, a source.

A :class:`Batch` is a Polars frame of ONE domain whose first columns are exactly that domain's canonical
schema (:func:`finsecure.event.schemas.arrow_schema`); steps may append columns (features, scores), never
change or drop the canonical ones. Everything on the hot path is columnar: no step loops over events in
Python.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from finsecure.event.schemas import Domain


@dataclass(frozen=True, slots=True)
class Batch:
    """One micro-batch.

    Attributes
    ----------
    domain
        Every row belongs to this domain.
    frame
        Canonical columns first (the domain's Arrow schema), then any columns steps added.
    source
        Which source fed the rows (``http:<key prefix>``, ``replay:<file>``, ``sim``, ``bus``...).
    seq
        Increasing number of the batch within its pipeline.
    arrived_ns
        ``time.monotonic_ns()`` when the oldest row of the batch arrived, to measure event latency.
    """

    domain: Domain
    frame: pl.DataFrame
    source: str
    seq: int = 0
    arrived_ns: int = dataclasses.field(default_factory=time.monotonic_ns)

    def __len__(self) -> int:
        return self.frame.height

    def with_frame(self, frame: pl.DataFrame) -> Batch:
        """The same batch with a new frame (what a step returns after adding columns)."""
        return dataclasses.replace(self, frame=frame)


class Step(ABC):
    """A named transformation of batches. Stateful steps override :meth:`snapshot` and :meth:`restore`."""

    #: Unique within a pipeline; names the step in metrics, logs and snapshots.
    step_id: str

    @abstractmethod
    def process(self, batch: Batch) -> Batch | None:
        """Return the transformed batch, or ``None`` to drop it entirely."""

    def snapshot(self) -> bytes | None:
        """The step's state as bytes, or ``None`` for a stateless step."""
        return None

    def restore(self, data: bytes) -> None:
        """Load state produced by :meth:`snapshot`."""
        raise NotImplementedError(f"step {self.step_id!r} is stateless")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources at shutdown (after the last batch)."""


class Sink(ABC):
    """Where finished batches go (lake, database, bus, WebSocket, a test list)."""

    sink_id: str

    @abstractmethod
    def write(self, batch: Batch) -> None:
        """Take one finished batch. Must not keep a reference that is mutated later."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable."""

    def close(self) -> None:
        """Flush and release resources."""
        self.flush()


@dataclass(frozen=True, slots=True)
class SourceChunk:
    """What a source yields: canonical rows of one domain plus the raw records it had to reject."""

    domain: Domain
    frame: pl.DataFrame
    rejects: pa.Table | None = None
    offset_end: int | None = None
    """Position in the source after this chunk (line/row/message number), for resuming and dead letters."""


class Source(ABC):
    """Produces canonical frames (already normalised), e.g. a file replay, the simulator, the bus."""

    source_id: str

    @abstractmethod
    def chunks(self) -> Iterator[SourceChunk]:
        """Yield chunks until the source is exhausted (or forever, for live sources)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop reading and release resources."""
