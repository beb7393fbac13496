"""Replay one rule over the event lake: how often it would have fired, and how well, where labels exist.

The lake holds canonical events (Parquet, one area per domain, partitioned by day). :func:`backtest`
reads the domains the rule needs with DuckDB, a few hours at a time in time order, recomputes the feature
columns with the same :class:`~finsecure.features.step.FeatureStep` the pipeline runs (starting
``warmup_s`` before the period so that "new device" or "usual amount" mean what they mean live), and
evaluates the rule with the same :class:`~finsecure.detection.RuleSet`. Hits inside the period count.

Where events carry ground truth (``label``: simulator runs, labelled data sets), the result also gives
the **precision** (share of hits on labelled-bad events) and the **recall** over the labelled-bad events
of the rule's domain (an event-level figure: a threshold or sequence rule flags the event that tips it
over, not every event of the attack).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from finsecure.detection.engine import RuleSet
from finsecure.detection.rule import Rule
from finsecure.event.schemas import Domain, arrow_schema
from finsecure.pipeline.batch import Batch

__all__ = ["BacktestResult", "backtest", "find_rule"]


@dataclass
class BacktestResult:
    """What replaying a rule over a period of the lake gave."""

    rule_id: str
    title: str
    start: dt.datetime
    end: dt.datetime
    events: dict[str, int] = field(default_factory=dict)
    """Events replayed in the period, per domain (warm-up not counted)."""
    hits: int = 0
    labelled_hits: int = 0
    """Hits whose event carries a label (0 or 1)."""
    true_hits: int = 0
    """Hits on events labelled bad (``label = 1``)."""
    labelled_bad: int = 0
    """Events of the rule's domain labelled bad in the period."""
    flagged_bad: int = 0
    """Of those, how many the rule fired on."""
    by_day: dict[str, int] = field(default_factory=dict)
    top_entities: list[tuple[str, int]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def precision(self) -> float | None:
        """Share of labelled hits on bad events (``None`` without labels)."""
        return self.true_hits / self.labelled_hits if self.labelled_hits else None

    @property
    def recall(self) -> float | None:
        """Share of the bad events of the rule's domain that the rule fired on (``None`` without any)."""
        return self.flagged_bad / self.labelled_bad if self.labelled_bad else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, with precision and recall."""
        out = asdict(self)
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        out["precision"], out["recall"] = self.precision, self.recall
        return out


def find_rule(rules: tuple[Rule, ...], wanted: str) -> Rule:
    """The rule whose id, title (case-insensitive) or file name matches ``wanted``.

    Raises
    ------
    LookupError
        When none or several match.
    """
    key = wanted.strip().lower()
    found = [
        rule
        for rule in rules
        if key in (rule.id.lower(), rule.title.lower())
        or (rule.path is not None and key in (Path(rule.path).name.lower(), Path(rule.path).stem.lower()))
    ]
    if len(found) != 1:
        raise LookupError(f"{len(found)} rules match {wanted!r}; give its id, title or file name")
    return found[0]


def _domains(rule: Rule) -> list[Domain]:
    if rule.sequence is None:
        return [rule.domain]
    return list(dict.fromkeys(step.domain for step in rule.sequence.steps))


def _slices(start: dt.datetime, end: dt.datetime, slice_s: int) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    at = start
    while at < end:
        stop = min(end, at + dt.timedelta(seconds=slice_s))
        yield at, stop
        at = stop


class _LakeReader:
    """Canonical events of one domain and time slice, read from the lake's Parquet files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")

    def has(self, domain: Domain) -> bool:
        return next((self.root / f"domain={domain.value}").glob("date=*/*.parquet"), None) is not None

    def read(self, domain: Domain, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        schema = pl.DataFrame(arrow_schema(domain).empty_table()).schema
        pattern = (self.root / f"domain={domain.value}" / "**" / "*.parquet").as_posix()
        columns = ", ".join(f'"{name}"' for name in schema)
        query = (
            f"SELECT {columns} FROM read_parquet(?, hive_partitioning = true, union_by_name = true, "  # noqa: S608 - column names from the schema
            "hive_types = {'date': DATE}) WHERE date BETWEEN ? AND ? AND ts >= ? AND ts < ? ORDER BY ts"
        )
        table = self.con.sql(query, params=[pattern, start.date(), end.date(), start, end]).to_arrow_table()
        frame = pl.DataFrame(table)
        return frame.cast({name: dtype for name, dtype in schema.items() if name in frame.columns})

    def close(self) -> None:
        self.con.close()


def backtest(
    rule: Rule,
    lake_root: Path,
    start: dt.datetime,
    end: dt.datetime,
    *,
    warmup_s: int = 86_400,
    slice_s: int = 6 * 3_600,
) -> BacktestResult:
    """Replay ``rule`` over the lake's events from ``start`` (inclusive) to ``end`` (exclusive).

    Raises
    ------
    ValueError
        When the period is empty.
    """
    from finsecure.features.step import FeatureStep

    if end <= start:
        raise ValueError("the period is empty: --to must come after --from")
    started = time.perf_counter()
    result = BacktestResult(rule.id, rule.title, start, end)
    reader = _LakeReader(lake_root)
    domains = [d for d in _domains(rule) if reader.has(d)]
    features = FeatureStep()
    rules = RuleSet([rule])
    hits_seen: list[pl.DataFrame] = []
    bad_ids: list[pl.Series] = []
    events: Counter[str] = Counter()
    try:
        for lo, hi in _slices(start - dt.timedelta(seconds=warmup_s), end, slice_s):
            for domain in domains:
                frame = reader.read(domain, lo, hi)
                if frame.height == 0:
                    continue
                batch = features.process(Batch(domain, frame, f"backtest:{lake_root.name}"))
                hits = rules.evaluate(batch)
                if hi <= start:
                    continue  # warm-up: features and rule state only
                in_period = batch.frame.filter(pl.col("ts") >= start)
                events[domain.value] += in_period.height
                if domain == rule.domain:
                    bad_ids.append(in_period.filter(pl.col("label") == 1).get_column("event_id"))
                if hits.height:
                    labels = batch.frame.select("event_id", "label")
                    hits_seen.append(
                        hits.filter(pl.col("ts") >= start).join(labels, on="event_id", how="left")
                    )
    finally:
        reader.close()
    result.events = dict(events)
    if hits_seen:
        hits = pl.concat(hits_seen).unique(subset="event_id", keep="first")
        result.hits = hits.height
        result.labelled_hits = int(hits.get_column("label").is_not_null().sum())
        result.true_hits = int((hits.get_column("label") == 1).sum())
        days = hits.group_by(pl.col("ts").dt.date().cast(pl.String).alias("day")).len().sort("day")
        result.by_day = {str(day): int(count) for day, count in days.iter_rows()}
        top = hits.group_by("entity_id").len().sort(["len", "entity_id"], descending=[True, False]).head(10)
        result.top_entities = [(str(e), int(n)) for e, n in top.iter_rows()]
        if bad_ids:
            bad = pl.concat(bad_ids)
            result.labelled_bad = bad.len()
            result.flagged_bad = int(bad.is_in(hits.get_column("event_id").implode()).sum())
    elif bad_ids:
        result.labelled_bad = pl.concat(bad_ids).len()
    result.elapsed_s = round(time.perf_counter() - started, 3)
    return result
