"""Run a pass-through step (detection) on its own thread, so that it works on one batch while the steps
before it already work on the next.

The pipeline runs its steps one after another on one worker thread: with detection inline, a batch's
features and its rules take turns. :class:`BackgroundStep` hands each batch to a thread of its own
through a small bounded queue and passes the batch on at once, so feature work of batch N+1 and rule
work of batch N overlap (Polars, NumPy and numba release the GIL for most of their work).

- Order: one thread takes the batches in the order they came, so hits come out in batch order.
- Back-pressure: when ``queue_batches`` batches are waiting, :meth:`BackgroundStep.process` blocks
  until the thread takes one, so detection can never fall more than that far behind.
- Snapshots and shutdown wait until every queued batch has been evaluated.
- Only for steps that give the batch back unchanged (what they find goes elsewhere, like detection's
  hits): the wrapped step's return value is not used.
- A failure in the wrapped step is logged and counted in :attr:`BackgroundStep.errors`; that batch's
  hits are lost, the pipeline goes on.

>>> from finsecure.event.schemas import Domain
>>> from finsecure.pipeline.batch import Batch, Step
>>> import polars as pl
>>> class Seen(Step):
...     step_id = "seen"
...     def __init__(self):
...         self.rows = []
...     def process(self, batch):
...         self.rows.append(batch.frame.height)
...         return batch
>>> inner = Seen()
>>> step = BackgroundStep(inner)
>>> for n in (3, 1, 2):
...     _ = step.process(Batch(Domain.payment, pl.DataFrame({"x": list(range(n))}), "doc"))
>>> step.close()
>>> inner.rows
[3, 1, 2]
"""

from __future__ import annotations

import logging
import queue
import threading

from finsecure.pipeline.batch import Batch, Step

__all__ = ["BackgroundStep"]

logger = logging.getLogger(__name__)


class BackgroundStep(Step):
    """Run ``inner`` on its own thread; :meth:`process` queues the batch and returns it unchanged.

    Parameters
    ----------
    inner
        A step that returns its batch unchanged (e.g. :class:`~finsecure.detection.DetectionStep`).
    queue_batches
        How many batches may wait for the thread before :meth:`process` blocks (back-pressure).
    """

    def __init__(self, inner: Step, *, queue_batches: int = 2) -> None:
        if queue_batches < 1:
            raise ValueError("queue_batches must be at least 1")
        self.inner = inner
        self.step_id = inner.step_id
        self.errors = 0
        """How many batches the wrapped step failed on (each one logged)."""
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=queue_batches)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def process(self, batch: Batch) -> Batch:
        """Queue the batch for the thread (blocks while the queue is full) and pass it on unchanged."""
        self._start()
        self._queue.put(batch)
        return batch

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"finsecure-{self.step_id}", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                try:
                    self.inner.process(batch)
                except Exception:
                    self.errors += 1
                    logger.exception("step %s failed on a %s batch", self.step_id, batch.domain)
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every queued batch has been processed."""
        self._queue.join()

    def snapshot(self) -> bytes | None:
        """The wrapped step's state, once every queued batch is in it."""
        self.drain()
        return self.inner.snapshot()

    def restore(self, data: bytes) -> None:
        """Load the wrapped step's state (after the queued batches)."""
        self.drain()
        self.inner.restore(data)

    def close(self) -> None:
        """Process what is queued, stop the thread and close the wrapped step."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join()
        self.inner.close()
