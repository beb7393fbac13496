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
from finsecure.alert.suppression import Suppressor
from finsecure.core.settings import Settings
from finsecure.correlation import Correlator
from finsecure.detection import RuleSet, load_rules
from finsecure.detection.rule import Rule
from finsecure.features.step import FeatureStep
from finsecure.graph.risk import GraphRisk, GraphRiskStep
from finsecure.graph.sink import GraphSink
from finsecure.graph.store import GraphStore
from finsecure.ingest.normalise import Normaliser
from finsecure.ingest.sources import canonical_mapping
from finsecure.lake.sinks import DeadLetterSink, LakeSink, ScoredEventSink
from finsecure.lake.writer import LakeWriter
from finsecure.pipeline.batch import Sink, Source, Step
from finsecure.pipeline.drive import drive
from finsecure.pipeline.engine import Pipeline, PipelineStats
from finsecure.response.blocklist import BlockedFlagStep
from finsecure.response.worker import ResponseWorker
from finsecure.system.outbox import DbOutbox
from finsecure.worker.publish import BusPublisher

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
    *,
    on_hits: Callable[[pl.DataFrame], None] | None = None,
    rules: Sequence[Rule] | None = None,
    scoring: Step | None = None,
    session_factory: Callable[[], Session] | None = None,
    deep: Step | None = None,
    graph_risk: Step | None = None,
    rule_states_from: Callable[[], Session] | None = None,
) -> list[Step]:
    """The steps every event goes through, in order: features, model scoring (when given), detection.

    Parameters
    ----------
    on_hits
        Receives each batch's rule hits (the platform passes its :class:`~finsecure.alert.sink.AlertSink`);
        by default they are only logged.
    rules
        Defaults to :func:`default_rules`.
    scoring
        The model scoring step (:class:`~finsecure.ml.step.ScoringStep`), between features and detection.
    deep
        The deep tier's sequence scoring step (:class:`~finsecure.ml.deep.SequenceScoringStep`), after
        ``scoring``: it reads each entity's history and scores the events the fast tier left uncertain.
    graph_risk
        Adds the propagated graph risk columns (:class:`~finsecure.graph.risk.GraphRiskStep`) before
        ``scoring``, so that models trained with them can read them.
    session_factory
        When given, a :class:`~finsecure.response.blocklist.BlockedFlagStep` before detection marks the
        events of blocked entities (a ``blocked`` column).
    rule_states_from
        Where the rule set re-reads which rules are switched off (defaults to ``session_factory``;
        :mod:`finsecure.detection.states`).
    """
    from finsecure.detection.states import DisabledRulesReader

    states_from = rule_states_from or session_factory
    rule_set = RuleSet(
        default_rules() if rules is None else rules,
        disabled_source=DisabledRulesReader(states_from) if states_from is not None else None,
    )
    middle = [step for step in (graph_risk, scoring, deep) if step is not None]
    if session_factory is not None:
        middle.append(BlockedFlagStep(session_factory))
    return [FeatureStep(), *middle, EntityDetectionStep(rule_set, on_hits or _log_hits)]


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
    responses: ResponseWorker = field(init=False)
    """Runs playbooks and response actions on its own thread, fed by :attr:`alerts`."""
    outbox: DbOutbox = field(init=False)
    """Keeps scored events, alerts and dead letters while the database is away, and writes them later."""
    graph: GraphStore = field(init=False)
    """The live entity graph (fed by :attr:`graph_sink`), for the graph API."""
    graph_sink: GraphSink = field(init=False)
    graph_risk: GraphRisk = field(init=False)
    """Propagated risk of the graph's entities: model inputs per batch and a term of incident risk."""
    _normalisers: dict[str, Normaliser] = field(init=False, default_factory=dict)
    _normaliser_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _demo_thread: threading.Thread | None = field(init=False, default=None)
    _demo_stop: threading.Event = field(init=False, default_factory=threading.Event)
    bus: BusPublisher | None = field(init=False, default=None)
    """With ``FINSECURE_BUS_URL``: ingest publishes here for ``finsecure worker`` instead of the pipeline."""

    def __post_init__(self) -> None:
        s = self.settings
        self.lake = LakeWriter(s.lake_dir, background=True)
        self.outbox = DbOutbox(s.data_dir / "outbox")
        self.dead_letters = DeadLetterSink(self.lake, self.session_factory, outbox=self.outbox)
        self.alerts = AlertSink(
            self.session_factory,
            correlator=Correlator(
                window_s=s.correlation_window_s,
                min_severity=s.incident_min_severity,
                min_rules=s.incident_min_rules,
            ),
            suppressor=Suppressor(self.session_factory),
            storm_clock="event",
        )
        self.outbox.register("alerts", self.alerts.deliver)
        self.responses = ResponseWorker(s, self.session_factory)
        self.alerts.listeners.append(self.responses.submit)
        self.graph_sink = GraphSink(session_factory=self.session_factory)
        self.graph = self.graph_sink.store
        self.graph_risk = GraphRisk(self.graph)
        if self.alerts.correlator is not None:
            self.alerts.correlator.graph_risk = self.graph_risk.entity_risk
        sinks: list[Sink] = [
            LakeSink(self.lake),
            ScoredEventSink(self.session_factory, s.store_score_threshold, outbox=self.outbox),
            self.graph_sink,
            *self.extra_sinks,
        ]
        self.pipeline = Pipeline(
            list(self.steps)
            if self.steps is not None
            else default_steps(
                on_hits=self._on_hits,
                scoring=self._scoring_step(),
                session_factory=self.session_factory,
                deep=self._deep_step(),
                graph_risk=GraphRiskStep(self.graph_risk),
            ),
            sinks,
            max_rows=s.pipeline_max_rows,
            max_age_s=s.pipeline_max_age_ms / 1000.0,
            queue_chunks=s.pipeline_queue_chunks,
            dead_letter_sink=self._write_dead_letters,
        )
        if s.bus_url:
            self.bus = BusPublisher(s.bus_url, partitions=s.bus_partitions, rejects_to=self.pipeline)

    def _on_hits(self, hits: pl.DataFrame) -> None:
        try:
            self.outbox.submit("alerts", hits)  # kept and retried while the database is away
        except Exception:
            self.alerts.errors += 1
            logger.exception("could not store %d rule hits as alerts", hits.height)
        for observe in self.hit_observers:
            observe(hits)

    def _scoring_step(self) -> Step:
        from finsecure.ml.step import ScoringStep, registry_resolver

        return ScoringStep(
            registry_resolver(self.session_factory),
            reload_interval_s=self.settings.ml_reload_interval_s,
            on_drift=self._record_drift,
        )

    def _record_drift(self, rows: list[tuple[str, int, str, float]]) -> None:
        """Population-stability index per model input and score, into ``system_metrics``."""
        from finsecure.system.models import SystemMetric

        with self.session_factory() as session, session.begin():
            session.add_all(
                SystemMetric(
                    name="model_psi", value=value, labels={"model": name, "version": version, "feature": f}
                )
                for name, version, f, value in rows
            )

    def _deep_step(self) -> Step | None:
        """The deep tier: sequence models in ``<data_dir>/deep`` (``bench/deep.py train``) and the
        registry's promoted ones (hot-reloaded like the scoring step's)."""
        from finsecure.ml.deep import DEFAULT_BAND, SequenceScoringStep
        from finsecure.ml.step import registry_resolver

        try:
            return SequenceScoringStep.serving(
                self.settings.data_dir / "deep",
                registry_resolver(self.session_factory),
                band=DEFAULT_BAND,
                reload_interval_s=self.settings.ml_reload_interval_s,
            )
        except Exception:  # the deep tier simply stays off; the rest of the platform runs
            logger.exception("could not load the deep tier's models; sequence scoring is off")
            return None

    def _bootstrap_models(self) -> None:
        """First start: train and promote the fast tier on simulated data when nothing is in production."""
        from finsecure.ml.bootstrap import ensure_models

        try:
            ensure_models(self.session_factory, self.settings.data_dir)
        except Exception:  # scoring simply stays off; the rest of the platform runs
            logger.exception("could not train the first models; events flow unscored")

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
        try:
            self.graph_sink.load()
        except Exception:  # an empty graph only means fewer links until the stream refills it
            logger.exception("could not reload the entity graph")
        self.outbox.start()
        self.responses.start()
        self.pipeline.start()
        if self.settings.ml_bootstrap and self.steps is None:
            threading.Thread(
                target=self._bootstrap_models, name="finsecure-ml-bootstrap", daemon=True
            ).start()
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
        # what the database cannot take now stays on disk for the next start
        self.outbox.close(timeout=min(timeout, 10.0) if timeout is not None else 10.0)
        self.responses.stop(timeout=10.0)  # pending retries stay in the table for the next start
        self.lake.close()
        if self.bus is not None:
            self.bus.close()
        return stats
