"""Ingest side of scale-out: put canonical events on the bus for ``finsecure worker`` processes.

:class:`BusPublisher` has the pipeline's ``submit`` interface (:class:`~finsecure.pipeline.drive.Submitter`),
so the HTTP ingest endpoint and ``finsecure replay`` hand it events exactly as they would hand them to
the local pipeline. ``submit`` returns once NATS JetStream has stored every part: an HTTP 200 then means
the events are durable on the bus. Dead letters stay with the local pipeline of the process.
"""

from __future__ import annotations

import time
from typing import Final

import polars as pl
import pyarrow as pa

from finsecure.bus import make_bus
from finsecure.bus.base import Bus, BusLoop, BusSink
from finsecure.event.schemas import Domain, SchemaError
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.engine import Pipeline, is_canonical_schema

__all__ = ["PUBLISHED_NS_HEADER", "BusPublisher", "StampedBusSink"]

PUBLISHED_NS_HEADER: Final = "Finsecure-Published-Ns"
"""Wall-clock nanoseconds when ingest published the message (workers measure ingest-to-result latency)."""


class StampedBusSink(BusSink):
    """A :class:`~finsecure.bus.base.BusSink` that stamps each message with its publication time."""

    def messages(self, batch: Batch) -> list[tuple[str, bytes, dict[str, str]]]:
        stamp = str(time.time_ns())
        out = super().messages(batch)
        for _, _, headers in out:
            headers[PUBLISHED_NS_HEADER] = stamp
        return out


class BusPublisher:
    """Publishes canonical events to ``events.<domain>.<partition>`` (see :class:`StampedBusSink`).

    Parameters
    ----------
    bus
        A bus, or its URL (``nats://...``).
    partitions
        Partitions per domain (``FINSECURE_BUS_PARTITIONS``); every publisher and worker must agree.
    rejects_to
        Where dead letters go (the process's local pipeline); without it they are counted and dropped.
    """

    def __init__(
        self,
        bus: Bus | str,
        *,
        partitions: int,
        rejects_to: Pipeline | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.bus = make_bus(bus) if isinstance(bus, str) else bus
        self.loop = BusLoop("finsecure-ingest-bus")
        self.sink = StampedBusSink(self.bus, partitions=partitions, loop=self.loop, timeout_s=timeout_s)
        self.rejects_to = rejects_to
        self.rejects_dropped = 0
        self._seq = 0

    @property
    def published(self) -> int:
        """Messages stored on the bus so far (duplicates excluded)."""
        return self.sink.published

    def submit(
        self,
        domain: Domain | str,
        frame: pl.DataFrame,
        *,
        source: str,
        arrived_ns: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish ``frame`` and wait until the bus has stored it (``timeout`` is the pipeline's; unused)."""
        if frame.height == 0:
            return
        key = Domain(domain)
        if not is_canonical_schema(key, frame.schema):
            # Refused here rather than by every worker later (where it would become dead letters).
            raise SchemaError(f"{key} rows must have exactly the canonical columns, in order")
        self._seq += 1
        arrived = time.monotonic_ns() if arrived_ns is None else arrived_ns
        self.sink.write(Batch(key, frame, source, self._seq, arrived))

    def submit_rejects(self, table: pa.Table, *, timeout: float | None = None) -> None:
        """Dead letters stay local: to ``rejects_to`` when given."""
        if self.rejects_to is not None:
            self.rejects_to.submit_rejects(table, timeout=timeout)
        else:
            self.rejects_dropped += table.num_rows

    def close(self) -> None:
        """Close the bus connection and the loop."""
        self.loop.run(self.bus.close(), 10)
        self.sink.close()
        self.loop.close()
