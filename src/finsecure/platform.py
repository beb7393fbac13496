"""The data plane of one process: the pipeline with its steps and sinks, the lake, dead letters and the
live demo stream. ``finsecure serve`` runs one; ``finsecure replay`` runs one without the API."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
from sqlalchemy.orm import Session, sessionmaker

from finsecure.alert.sink import AlertSink, EntityDetectionStep
from finsecure.core.settings import Settings
from finsecure.correlation import Correlator
from finsecure.detection import RuleSet, load_rules
from finsecure.detection.rule import Rule
from finsecure.features.step import FeatureStep
from finsecure.ingest.normalise import Normaliser
from finsecure.ingest.sources import canonical_mapping
from finsecure.lake.sinks import DeadLetterSink, LakeSink, ScoredEventSink
from finsecure.lake.writer import LakeWriter
from finsecure.pipeline.batch import Sink, Source, Step
from finsecure.pipeline.drive import drive
from finsecure.pipeline.engine import Pipeline, PipelineStats

logger = logging.getLogger(__name__)

#: Builds the demo stream's source (:func:`simulator_demo_source` by default; ``None`` for none).
DemoSourceFactory = Callable[[Settings], Source]


def simulator_demo_source(settings: Settings) -> Source:
    """The live demo stream: the bank-day simulator in real time, pacing itself to ``demo_rate``."""
    from finsecure.sim import SimConfig, SimulatorSource

    config = SimConfig.live(settings.demo_rate, max_customers=settings.demo_customers)
    return SimulatorSource(config, pace=True)


#: The rules shipped with the repository (``rules/`` beside ``src/``); absent from an installed wheel.
RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


def default_rules(directory: Path = RULES_DIR) -> tuple[Rule, ...]:
    """The rules of ``directory``; none (logged) when it is missing; bad files are logged and skipped."""
    if not directory.is_dir():
        logger.warning("no rules directory at %s: detection runs with no rules", directory)
        return ()
    loaded = load_rules(directory)
    for error in loaded.errors:
        logger.error("rule not loaded: %s", error)
    logger.info("loaded %d detection rules from %s", len(loaded.rules), directory)
    return loaded.rules


def _log_hits(hits: pl.DataFrame) -> None:
    logger.info("%d rule hits (no alert store attached)", hits.height)


def default_steps(
    *, on_hits: Callable[[pl.DataFrame], None] | None = None, rules: Sequence[Rule] | None = None
) -> list[Step]:
    """The steps every event goes through, in order: features, then detection.

    Parameters
    ----------
    on_hits
        Receives each batch's rule hits (the platform passes its :class:`~finsecure.alert.sink.AlertSink`);
        by default they are only logged.
    rules
        Defaults to :func:`default_rules`.
    """
    rule_set = RuleSet(default_rules() if rules is None else rules)
    return [FeatureStep(), EntityDetectionStep(rule_set, on_hits or _log_hits)]


@dataclass
class Platform:
    """Owns the pipeline and everything around it; start once, stop once."""

    settings: Settings
    session_factory: sessionmaker[Session]
    steps: Sequence[Step] | None = None
    extra_sinks: Sequence[Sink] = ()
    demo_source: DemoSourceFactory | None = simulator_demo_source
    hit_observers: Sequence[Callable[[pl.DataFrame], None]] = ()
    """Also receive every batch's rule hits, after the alert sink (evaluation, metrics)."""
    lake: LakeWriter = field(init=False)
    pipeline: Pipeline = field(init=False)
    dead_letters: DeadLetterSink = field(init=False)
    alerts: AlertSink = field(init=False)
    _normalisers: dict[str, Normaliser] = field(init=False, default_factory=dict)
    _normaliser_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _demo_thread: threading.Thread | None = field(init=False, default=None)
    _demo_stop: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        s = self.settings
        self.lake = LakeWriter(s.lake_dir, background=True)
        self.dead_letters = DeadLetterSink(self.lake, self.session_factory)
        self.alerts = AlertSink(self.session_factory, correlator=Correlator())
        sinks: list[Sink] = [
            LakeSink(self.lake),
            ScoredEventSink(self.session_factory, s.store_score_threshold),
            *self.extra_sinks,
        ]
        self.pipeline = Pipeline(
            list(self.steps) if self.steps is not None else default_steps(on_hits=self._on_hits),
            sinks,
            max_rows=s.pipeline_max_rows,
            max_age_s=s.pipeline_max_age_ms / 1000.0,
            queue_chunks=s.pipeline_queue_chunks,
            dead_letter_sink=self._write_dead_letters,
        )

    def _on_hits(self, hits: pl.DataFrame) -> None:
        self.alerts(hits)
        for observe in self.hit_observers:
            observe(hits)

    def _write_dead_letters(self, table: pa.Table) -> None:
        self.dead_letters.write(table)

    def normaliser(self, source_name: str) -> Normaliser:
        """The canonical-events normaliser for one source (cached: it compiles its plans once)."""
        with self._normaliser_lock:
            normaliser = self._normalisers.get(source_name)
            if normaliser is None:
                if len(self._normalisers) > 1024:
                    self._normalisers.clear()
                normaliser = Normaliser(
                    canonical_mapping("ndjson"), source_name, hash_key=self.settings.token_key
                )
                self._normalisers[source_name] = normaliser
            return normaliser

    def start(self) -> Platform:
        correlator = self.alerts.correlator
        if correlator is not None:
            try:
                with self.session_factory() as session:
                    correlator.warm_up(db_session=session)
            except Exception:  # a cold correlator only means fewer joins until the window refills
                logger.exception("could not reload open incidents for correlation")
        self.pipeline.start()
        if self.demo_source is not None and self.settings.demo_stream:
            source = self.demo_source(self.settings)
            self._demo_thread = threading.Thread(
                target=self._run_demo, args=(source,), name="finsecure-demo", daemon=True
            )
            self._demo_thread.start()
        return self

    def _run_demo(self, source: Source) -> None:
        try:
            drive(source, self.pipeline, stop=self._demo_stop)  # the demo source paces itself
        except Exception:
            if not self._demo_stop.is_set():
                logger.exception("the demo stream stopped after an error")
        finally:
            source.close()

    def stop(self, *, timeout: float | None = 30.0) -> PipelineStats:
        """Stop the demo stream, drain the pipeline (nothing accepted is lost) and close the lake."""
        self._demo_stop.set()
        if self._demo_thread is not None:
            self._demo_thread.join(timeout)
        stats = self.pipeline.stop(drain=True, timeout=timeout)
        self.lake.close()
        return stats
