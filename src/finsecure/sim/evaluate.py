"""Campaign-level evaluation on the simulator: replay a seeded bank day through the whole platform
(features, detection, alerts, correlation) and compare what became incidents with the ground truth.

``finsecure evaluate --dataset simulated`` calls :func:`evaluate_simulated`. What it reports:

campaign recall
    The share of staged campaigns that became **exactly one** incident holding their alerts from
    **every domain the campaign touched**. Looser shares are reported beside it (any alert at all; one
    incident whatever its domains) so a miss can be told from a split or a partial view.
time to detect
    For each complete campaign, the wall-clock time from the arrival of the last event the incident
    needed (the newest campaign event of the alerts it held when it became complete) to that moment;
    p50 and p95 over campaigns, in seconds. The replay runs as fast as the pipeline takes
    events (or at ``rate``), so this includes queueing under load.
false incidents per 100 k events
    Incidents none of whose alerts touch a campaign event, per 100,000 background (unlabelled) events.
event-level precision and recall per domain
    An event counts as flagged when any rule fired on it; campaign events are the positives.

The JSON written has the same top-level shape as the other datasets' evaluations
(``dataset``, ``protocol``, ``splits``) plus the campaign section.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from sqlalchemy import select

from finsecure.core.settings import Settings
from finsecure.sim.config import SimConfig
from finsecure.sim.truth import CampaignTruth, GroundTruth

__all__ = [
    "CampaignOutcome",
    "SimEvaluation",
    "evaluate_simulated",
    "percentile",
    "score_campaigns",
]

DOMAINS: tuple[str, ...] = ("network", "cloud", "auth", "payment")


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0 to 100, linear interpolation) or ``None`` with no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([], 95), percentile([5.0], 95)
    (2.5, None, 5.0)
    """
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- what the replay observes -----------------------------------------------------------------------


class _Recorder:
    """Between the source and the pipeline: counts events per domain and notes when each campaign event
    was handed over (wall clock), so detection delay can be measured against it."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self.events: dict[str, int] = defaultdict(int)
        self.positives: dict[str, int] = defaultdict(int)
        self.arrived: dict[str, float] = {}
        self.positive_ids: dict[str, set[str]] = defaultdict(set)

    def submit(
        self,
        domain: Any,
        frame: pl.DataFrame,
        *,
        source: str,
        arrived_ns: int | None = None,
        timeout: float | None = None,
    ) -> None:
        name = str(domain)
        self.events[name] += frame.height
        now = time.time()
        if "label" in frame.columns:
            labelled = frame.filter(pl.col("label") == 1).get_column("event_id")
            self.positives[name] += labelled.len()
            ids = self.positive_ids[name]
            for event_id in labelled.to_list():
                self.arrived.setdefault(event_id, now)
                ids.add(event_id)
        self._pipeline.submit(domain, frame, source=source, arrived_ns=arrived_ns, timeout=timeout)

    def submit_rejects(self, table: pa.Table, *, timeout: float | None = None) -> None:
        self._pipeline.submit_rejects(table, timeout=timeout)


class _HitCollector:
    """Every (event, domain) any rule fired on; called on the pipeline's worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.flagged: dict[str, set[str]] = defaultdict(set)

    def __call__(self, hits: pl.DataFrame) -> None:
        pairs = hits.select("domain", "event_id").unique()
        with self._lock:
            for domain, event_id in pairs.iter_rows():
                self.flagged[str(domain)].add(str(event_id))


# --- scoring ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """What the scoring needs of one stored alert."""

    alert_id: int
    domain: str
    event_ids: tuple[str, ...]
    incident_id: int | None
    joined_at: float | None
    """Wall-clock epoch seconds when the alert joined its incident."""
    rule_id: str = ""
    title: str = ""


@dataclass(frozen=True, slots=True)
class CampaignOutcome:
    """How one campaign came out."""

    campaign_id: str
    campaign_type: str
    domains: tuple[str, ...]
    alert_domains: tuple[str, ...]
    incidents: tuple[int, ...]
    time_to_detect_s: float | None

    @property
    def detected(self) -> bool:
        """At least one alert touched its events."""
        return bool(self.incidents) or bool(self.alert_domains)

    @property
    def single_incident(self) -> bool:
        return len(self.incidents) == 1

    @property
    def complete(self) -> bool:
        """Exactly one incident, holding alerts from every domain the campaign touched."""
        return self.single_incident and set(self.domains) <= set(self.alert_domains)


def score_campaigns(
    campaigns: Iterable[CampaignTruth], alerts: Iterable[AlertRecord], arrived: Mapping[str, float]
) -> list[CampaignOutcome]:
    """Match alerts to campaigns through their event ids and judge each campaign.

    >>> import datetime as dt
    >>> t0 = dt.datetime(2024, 5, 6, tzinfo=dt.UTC)
    >>> from finsecure.sim.truth import StepTruth
    >>> steps = (StepTruth("login", ("auth",), t0, t0, 1), StepTruth("pay", ("payment",), t0, t0, 1))
    >>> c = CampaignTruth("c1", "account_takeover", t0, t0, {}, ("e1", "e2"), steps)
    >>> alerts = [AlertRecord(1, "auth", ("e1",), 7, 10.5), AlertRecord(2, "payment", ("e2", "x"), 7, 12.0)]
    >>> [outcome] = score_campaigns([c], alerts, {"e1": 10.0, "e2": 11.0})
    >>> outcome.complete, outcome.time_to_detect_s
    (True, 1.0)
    """
    by_event: dict[str, list[AlertRecord]] = defaultdict(list)
    for alert in alerts:
        for event_id in alert.event_ids:
            by_event[event_id].append(alert)
    outcomes = []
    for campaign in campaigns:
        touching: dict[int, AlertRecord] = {}
        for event_id in campaign.event_ids:
            for alert in by_event.get(event_id, ()):
                touching[alert.alert_id] = alert
        incidents = tuple(sorted({a.incident_id for a in touching.values() if a.incident_id is not None}))
        alert_domains = tuple(d for d in DOMAINS if any(a.domain == d for a in touching.values()))
        ttd = None
        if len(incidents) == 1 and set(campaign.domains) <= set(alert_domains):
            ttd = _time_to_detect(campaign, touching.values(), arrived)
        outcomes.append(
            CampaignOutcome(
                campaign.campaign_id, campaign.campaign_type, campaign.domains, alert_domains, incidents, ttd
            )
        )
    return outcomes


def _time_to_detect(
    campaign: CampaignTruth, alerts: Iterable[AlertRecord], arrived: Mapping[str, float]
) -> float | None:
    """From the last campaign event the incident needed to the moment it was complete.

    The incident is complete when its first alert of each domain the campaign touched has joined (the
    latest of those joins). The events it needed are the campaign events of every alert that had joined by
    then; the delay runs from the newest of them that had arrived. (An alert that waited as a building
    block joins at the same instant as the one that opened the incident, so ties are normal.)
    """
    own = set(campaign.event_ids)
    joined = [a for a in alerts if a.joined_at is not None]
    first_by_domain: dict[str, float] = {}
    for alert in joined:
        at = alert.joined_at or 0.0
        first_by_domain[alert.domain] = min(at, first_by_domain.get(alert.domain, at))
    if not first_by_domain:
        return None
    complete = max(first_by_domain.values())
    arrivals = [
        arrived[e]
        for alert in joined
        if (alert.joined_at or 0.0) <= complete
        for e in alert.event_ids
        if e in own and e in arrived and arrived[e] <= complete
    ]
    if not arrivals:
        return None
    return max(0.0, complete - max(arrivals))


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class SimEvaluation:
    """Everything one evaluation run measured."""

    config: SimConfig
    events: dict[str, int]
    positives: dict[str, int]
    flagged: dict[str, set[str]]
    positive_ids: dict[str, set[str]]
    outcomes: list[CampaignOutcome]
    incidents: int
    false_incidents: int
    alerts: int
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per rule: alerts, how many touch an attack event, and that share (for tuning noisy rules)."""

    @property
    def background_events(self) -> int:
        return sum(self.events.values()) - sum(self.positives.values())

    def report(self) -> dict[str, Any]:
        """The JSON report (see the module docstring)."""
        outcomes = self.outcomes
        n = len(outcomes)

        def share(predicate: Callable[[CampaignOutcome], bool], items: list[CampaignOutcome]) -> float | None:
            return round(sum(map(predicate, items)) / len(items), 4) if items else None

        by_type: dict[str, list[CampaignOutcome]] = defaultdict(list)
        for outcome in outcomes:
            by_type[outcome.campaign_type].append(outcome)
        delays = [o.time_to_detect_s for o in outcomes if o.time_to_detect_s is not None]
        domains: dict[str, dict[str, Any]] = {}
        for domain in DOMAINS:
            flagged = self.flagged.get(domain, set())
            positives = self.positive_ids.get(domain, set())
            true = len(flagged & positives)
            domains[domain] = {
                "n": self.events.get(domain, 0),
                "positives": len(positives),
                "flagged": len(flagged),
                "precision": round(true / len(flagged), 4) if flagged else None,
                "recall": round(true / len(positives), 4) if positives else None,
            }
        background = self.background_events
        p50, p95 = percentile(delays, 50), percentile(delays, 95)
        return {
            "dataset": "simulated",
            "protocol": (
                f"bank-day, seed {self.config.seed}, {self.config.customers:,} customers, "
                f"{self.config.duration_s / 3600:g} h of simulated time, replayed through the whole platform"
            ),
            "run": {
                "seed": self.config.seed,
                "customers": self.config.customers,
                "duration_s": self.config.duration_s,
                "events": sum(self.events.values()),
                "background_events": background,
                "wall_s": round(self.wall_s, 2),
                "events_per_s": round(sum(self.events.values()) / self.wall_s) if self.wall_s else None,
                **self.extra,
            },
            "campaigns": {
                "n": n,
                "recall": share(lambda o: o.complete, outcomes),
                "detected_share": share(lambda o: o.detected, outcomes),
                "single_incident_share": share(lambda o: o.single_incident, outcomes),
                "time_to_detect_p50_s": None if p50 is None else round(p50, 3),
                "time_to_detect_p95_s": None if p95 is None else round(p95, 3),
                "by_type": {
                    kind: {
                        "n": len(items),
                        "recall": share(lambda o: o.complete, items),
                        "detected_share": share(lambda o: o.detected, items),
                        "single_incident_share": share(lambda o: o.single_incident, items),
                        "missed_domains": sorted(
                            {d for o in items for d in o.domains if d not in o.alert_domains}
                        ),
                    }
                    for kind, items in sorted(by_type.items())
                },
            },
            "incidents": {
                "n": self.incidents,
                "false": self.false_incidents,
                "false_per_100k_events": (
                    round(self.false_incidents * 100_000 / background, 3) if background else None
                ),
                "alerts": self.alerts,
            },
            "rules": self.rules,
            "splits": {"bank_day": {"rules": domains}},
        }


def _alert_records(session_factory: Any) -> tuple[list[AlertRecord], dict[int, int], int]:
    """Stored alerts with the root incident each belongs to; also root incident → alert count."""
    from finsecure.alert.models import Alert
    from finsecure.incident.models import Incident, IncidentAlert

    with session_factory() as session:
        merged = dict(session.execute(select(Incident.id, Incident.merged_into_id)).all())
        links = session.execute(
            select(IncidentAlert.alert_id, IncidentAlert.incident_id, IncidentAlert.added_at)
        )
        incident_of: dict[int, tuple[int, dt.datetime]] = {}
        for alert_id, incident_id, added_at in links:
            incident_of[alert_id] = (incident_id, added_at)
        rows = session.execute(
            select(Alert.id, Alert.domain, Alert.event_ids, Alert.rule_id, Alert.title)
        ).all()

    def root(incident_id: int) -> int:
        seen = set()
        while merged.get(incident_id) is not None and incident_id not in seen:
            seen.add(incident_id)
            incident_id = merged[incident_id]
        return incident_id

    records = []
    sizes: dict[int, int] = defaultdict(int)
    for alert_id, domain, event_ids, rule_id, title in rows:
        link = incident_of.get(alert_id)
        incident = root(link[0]) if link else None
        joined = link[1].timestamp() if link else None
        if incident is not None:
            sizes[incident] += 1
        records.append(
            AlertRecord(
                alert_id, domain, tuple(map(str, event_ids or ())), incident, joined, rule_id or "", title
            )
        )
    roots = {root(i) for i in merged}
    return records, sizes, len(roots)


def evaluate_simulated(
    settings: Settings,
    out: Path | None = None,
    *,
    customers: int = 20_000,
    duration_s: float = 86_400.0,
    seed: int = 0,
    campaign_scale: float = 1.0,
    rate: float | None = None,
    config: SimConfig | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay a seeded simulated bank day through a fresh, private platform and score it.

    The platform runs on a temporary SQLite database and lake (nothing of ``settings``' own data is
    touched); the rules are the shipped ones. Writes the JSON report to ``out`` when given (and a markdown
    summary beside it) and returns it.
    """
    from finsecure.core import migrate
    from finsecure.core.database import create_db_engine, make_session_factory
    from finsecure.pipeline.drive import DriveProgress, drive
    from finsecure.platform import Platform
    from finsecure.sim.source import SimulatorSource

    config = config or SimConfig(
        customers=customers, duration_s=duration_s, seed=seed, campaign_scale=campaign_scale
    )
    with tempfile.TemporaryDirectory(prefix="finsecure-eval-") as tmp:
        run_settings = settings.model_copy(
            update={"data_dir": Path(tmp), "database_url": None, "demo_stream": False, "ml_bootstrap": False}
        )
        engine = create_db_engine(run_settings.resolved_database_url)
        try:
            migrate.upgrade(engine)
            session_factory = make_session_factory(engine)
            hits = _HitCollector()
            platform = Platform(run_settings, session_factory, demo_source=None, hit_observers=[hits])
            platform.start()
            recorder = _Recorder(platform.pipeline)
            source = SimulatorSource(config, pace=False)
            started = time.monotonic()
            try:

                def progress(p: DriveProgress) -> None:
                    if on_progress is not None:
                        on_progress(p.events)

                drive(source, recorder, rate=rate, on_progress=progress)
            finally:
                platform.stop(timeout=600)
                source.close()
            dropped = sum(platform.alerts.dropped.values())
            wall_s = time.monotonic() - started
            truth: GroundTruth = source.truth
            records, sizes, n_incidents = _alert_records(session_factory)
        finally:
            engine.dispose()
    outcomes = score_campaigns(truth.campaigns, records, recorder.arrived)
    campaign_events = {e for c in truth.campaigns for e in c.event_ids}
    touched: set[int] = {
        a.incident_id
        for a in records
        if a.incident_id is not None and campaign_events.intersection(a.event_ids)
    }
    false_incidents = sum(1 for incident in sizes if incident not in touched)
    evaluation = SimEvaluation(
        config=config,
        events=dict(recorder.events),
        positives=dict(recorder.positives),
        flagged=dict(hits.flagged),
        positive_ids=dict(recorder.positive_ids),
        outcomes=outcomes,
        incidents=max(n_incidents, len(sizes)),
        false_incidents=false_incidents,
        alerts=len(records),
        wall_s=wall_s,
        extra={"storm_capped_hits": dropped},
        rules=_rule_table(records, campaign_events),
    )
    report = evaluation.report()
    if out is not None:
        write_report(out, report)
    return report


def _rule_table(records: Iterable[AlertRecord], campaign_events: set[str]) -> dict[str, dict[str, Any]]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    titles: dict[str, str] = {}
    for alert in records:
        titles.setdefault(alert.rule_id, alert.title)
        row = counts[alert.rule_id]
        row[0] += 1
        row[1] += bool(campaign_events.intersection(alert.event_ids))
    return {
        rule_id: {"title": titles[rule_id], "alerts": n, "on_attack_events": k, "precision": round(k / n, 4)}
        for rule_id, (n, k) in sorted(counts.items(), key=lambda item: item[1][1] / item[1][0])
    }


def write_report(out: Path, report: Mapping[str, Any]) -> None:
    """Write the JSON report and a short markdown summary (``<out>.md``) beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown_summary(report), encoding="utf-8")


def markdown_summary(report: Mapping[str, Any]) -> str:
    """A human summary of a simulated-run report."""
    campaigns, incidents = report["campaigns"], report["incidents"]
    lines = [
        "# Evaluation on the simulated bank day",
        "",
        f"Protocol: {report['protocol']}.",
        "",
        f"- Campaigns staged: {campaigns['n']}; caught as exactly one incident covering every domain they "
        f"touched: {_pct(campaigns['recall'])} (any alert at all: {_pct(campaigns['detected_share'])}).",
        f"- Time to detect (last needed event → incident): p50 {campaigns['time_to_detect_p50_s']} s, "
        f"p95 {campaigns['time_to_detect_p95_s']} s.",
        f"- Incidents: {incidents['n']}, of which {incidents['false']} hold no attack event "
        f"({incidents['false_per_100k_events']} per 100,000 ordinary events).",
        "",
        "| Campaign type | Staged | One complete incident | Any alert | Domains never alerted on |",
        "|---|---:|---:|---:|---|",
    ]
    for kind, row in campaigns["by_type"].items():
        lines.append(
            f"| {kind.replace('_', ' ')} | {row['n']} | {_pct(row['recall'])} "
            f"| {_pct(row['detected_share'])} "
            f"| {', '.join(row['missed_domains']) or '—'} |"
        )
    lines += [
        "",
        "| Domain | Events | Attack events | Flagged | Precision | Recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for domain, row in report["splits"]["bank_day"]["rules"].items():
        lines.append(
            f"| {domain} | {row['n']:,} | {row['positives']:,} | {row['flagged']:,} | "
            f"{_pct(row['precision'])} | {_pct(row['recall'])} |"
        )
    noisy = sorted(report.get("rules", {}).values(), key=lambda r: r["on_attack_events"] - r["alerts"])[:10]
    if noisy:
        lines += [
            "",
            "Rules with the most alerts on ordinary activity:",
            "",
            "| Rule | Alerts | On attack events | Share |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['title']} | {r['alerts']} | {r['on_attack_events']} | {_pct(r['precision'])} |"
            for r in noisy
        ]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"
