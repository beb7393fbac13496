"""Prometheus metrics of one process: pipelines, alerts, the bus and workers.

Counters that the code already keeps (a pipeline's :class:`~finsecure.pipeline.engine.PipelineStats`,
the alert table) are read when Prometheus scrapes, so the hot path pays nothing for them; only the batch
latency histogram is fed per batch (one observation per micro-batch, not per event).

Example
-------
>>> from finsecure.pipeline.engine import Pipeline
>>> from finsecure.pipeline.testing import sample_frame
>>> metrics = Metrics()
>>> with Pipeline([], []) as pipeline:
...     metrics.watch_pipeline(pipeline, "main")
...     pipeline.submit("network", sample_frame("network", 10), source="doc")
...     pipeline.flush()
>>> text = metrics.render().decode()
>>> 'finsecure_pipeline_events_in_total{domain="network",pipeline="main"} 10.0' in text
True
>>> 'finsecure_pipeline_batch_seconds_count{domain="network",pipeline="main"} 1.0' in text
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from finsecure.alert.sink import AlertSink
    from finsecure.pipeline.engine import Pipeline

__all__ = ["CONTENT_TYPE", "Metrics"]

logger = logging.getLogger(__name__)

#: The media type of :meth:`Metrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Batch latency buckets, in seconds: micro-batches take from well under a millisecond to seconds.
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Ingest-to-result latency buckets, in seconds (fine around the 100 ms target).
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)


class _PipelineCollector(Collector):
    """Reads every watched pipeline's counters at scrape time."""

    def __init__(self) -> None:
        self.pipelines: dict[str, Pipeline] = {}
        self.lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            pipelines = list(self.pipelines.items())
        events_in = CounterMetricFamily(
            "finsecure_pipeline_events_in", "Events accepted by the pipeline", labels=["pipeline", "domain"]
        )
        events_out = CounterMetricFamily(
            "finsecure_pipeline_events_out",
            "Events that went through every step to the sinks",
            labels=["pipeline", "domain"],
        )
        step_in = CounterMetricFamily(
            "finsecure_step_events_in", "Events given to a step", labels=["pipeline", "step"]
        )
        step_out = CounterMetricFamily(
            "finsecure_step_events_out", "Events a step passed on", labels=["pipeline", "step"]
        )
        batches = CounterMetricFamily(
            "finsecure_pipeline_batches",
            "Micro-batches processed, by what closed them",
            labels=["pipeline", "closed_by"],
        )
        dead = CounterMetricFamily(
            "finsecure_pipeline_dead_letters", "Records sent to the dead-letter store", labels=["pipeline"]
        )
        errors = CounterMetricFamily(
            "finsecure_pipeline_errors", "Step or sink failures", labels=["pipeline", "where"]
        )
        depth = GaugeMetricFamily(
            "finsecure_pipeline_queue_depth", "Chunks waiting in the submit queue", labels=["pipeline"]
        )
        capacity = GaugeMetricFamily(
            "finsecure_pipeline_queue_capacity", "Capacity of the submit queue", labels=["pipeline"]
        )
        buffered = GaugeMetricFamily(
            "finsecure_pipeline_buffered_rows", "Rows waiting for their batch to close", labels=["pipeline"]
        )
        latency = GaugeMetricFamily(
            "finsecure_pipeline_event_latency_seconds",
            "Arrival-to-sink latency over the last few thousand batches",
            labels=["pipeline", "quantile"],
        )
        running = GaugeMetricFamily(
            "finsecure_pipeline_running", "1 while the pipeline runs", labels=["pipeline"]
        )
        for name, pipeline in pipelines:
            stats = pipeline.stats()
            for domain, count in stats.events_in.items():
                events_in.add_metric([name, domain], count)
            for domain, count in stats.events_out.items():
                events_out.add_metric([name, domain], count)
            for step, count in stats.step_events_in.items():
                step_in.add_metric([name, step], count)
            for step, count in stats.step_events_out.items():
                step_out.add_metric([name, step], count)
            for reason, count in stats.batches_closed_by.items():
                batches.add_metric([name, reason], count)
            dead.add_metric([name], stats.dead_letters)
            for where, count in stats.errors.items():
                errors.add_metric([name, where], count)
            depth.add_metric([name], stats.queue_depth)
            capacity.add_metric([name], stats.queue_capacity)
            buffered.add_metric([name], stats.buffered_rows)
            running.add_metric([name], 1.0 if stats.running else 0.0)
            for quantile, value in (
                ("0.5", stats.event_latency_p50_ms),
                ("0.99", stats.event_latency_p99_ms),
            ):
                if value is not None:
                    latency.add_metric([name, quantile], value / 1000.0)
        yield from (events_in, events_out, step_in, step_out, batches, dead, errors)
        yield from (depth, capacity, buffered, latency, running)


class _AlertCollector(Collector):
    """Alerts in the database by status and severity, plus the alert writer's own counters."""

    def __init__(self, session_factory: Callable[[], Session], sink: AlertSink | None) -> None:
        self.session_factory = session_factory
        self.sink = sink

    def collect(self) -> Iterable[Metric]:
        from finsecure.alert.models import Alert

        alerts = GaugeMetricFamily(
            "finsecure_alerts", "Alerts in the database", labels=["status", "severity"]
        )
        up = GaugeMetricFamily("finsecure_database_up", "1 when the alert count could be read")
        try:
            with self.session_factory() as session:
                rows = session.execute(
                    select(Alert.status, Alert.severity, func.count()).group_by(Alert.status, Alert.severity)
                ).all()
        except SQLAlchemyError as exc:
            logger.warning("metrics: cannot count alerts: %s", exc)
            up.add_metric([], 0.0)
        else:
            up.add_metric([], 1.0)
            for status, severity, count in rows:
                alerts.add_metric([str(status), str(severity)], count)
        yield alerts
        yield up
        if self.sink is not None:
            sink = self.sink
            calls = CounterMetricFamily("finsecure_alert_writes", "Batches of rule hits written as alerts")
            calls.add_metric([], sink.calls)
            failures = CounterMetricFamily("finsecure_alert_write_errors", "Alert writes that failed")
            failures.add_metric([], sink.errors)
            capped = CounterMetricFamily(
                "finsecure_alert_hits_dropped", "Rule hits dropped by the storm cap", labels=["rule"]
            )
            for rule, count in dict(sink.dropped).items():
                capped.add_metric([rule], count)
            yield from (calls, failures, capped)


class Metrics:
    """A registry of its own (so that several apps in one process do not collide) and its metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._pipelines = _PipelineCollector()
        self.registry.register(self._pipelines)
        self.batch_seconds = Histogram(
            "finsecure_pipeline_batch_seconds",
            "Time the steps and sinks took per micro-batch",
            ["pipeline", "domain"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.event_seconds = Histogram(
            "finsecure_pipeline_ingest_latency_seconds",
            "From ingest (publication on the bus, or arrival) to the end of the event's batch: alerts "
            "written, features computed (per batch, its oldest event)",
            ["pipeline", "domain"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bus_pending = Gauge(
            "finsecure_bus_pending_messages",
            "Messages of a partition the bus holds that its worker has not taken yet (lag)",
            ["partition"],
            registry=self.registry,
        )
        self.bus_acked = Counter(
            "finsecure_bus_acked_messages",
            "Messages committed: acknowledged once their results were durable",
            ["partition"],
            registry=self.registry,
        )
        self.commits = Counter(
            "finsecure_worker_commits",
            "Checkpoints (flush, snapshot, acknowledge) per partition",
            ["partition"],
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "finsecure_worker_commit_seconds",
            "Time one checkpoint took",
            ["partition"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.bus_published = Counter(
            "finsecure_bus_published_messages",
            "Messages ingest stored on the bus (duplicates excluded)",
            ["domain"],
            registry=self.registry,
        )
        self.redelivered = Counter(
            "finsecure_bus_skipped_messages",
            "Redelivered messages a worker skipped because their results were already durable",
            ["partition"],
            registry=self.registry,
        )

    def watch_pipeline(self, pipeline: Pipeline, name: str) -> None:
        """Export ``pipeline``'s counters under ``pipeline=name`` and time its batches."""
        batch_seconds, event_seconds = self.batch_seconds, self.event_seconds

        def observe(domain: str, elapsed_ns: int, waited_ns: int) -> None:
            batch_seconds.labels(name, domain).observe(elapsed_ns / 1e9)
            event_seconds.labels(name, domain).observe(waited_ns / 1e9)

        pipeline.batch_observer = observe
        with self._pipelines.lock:
            self._pipelines.pipelines[name] = pipeline

    def forget_pipeline(self, name: str) -> None:
        """Stop exporting a pipeline (a worker gave its partition away)."""
        with self._pipelines.lock:
            pipeline = self._pipelines.pipelines.pop(name, None)
        if pipeline is not None:
            pipeline.batch_observer = None

    def watch_alerts(self, session_factory: Callable[[], Session], sink: AlertSink | None = None) -> None:
        """Export alert counts from the database (and ``sink``'s counters) at every scrape."""
        self.registry.register(_AlertCollector(session_factory, sink))

    def register(self, collector: Collector) -> None:
        """Add another collector (e.g. the WebSocket hub's client count)."""
        self.registry.register(collector)

    def render(self) -> bytes:
        """Everything, in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
