"""Ground truth of a simulation: which campaigns ran, when, against whom, and which events they made.

Each run writes ``<output>.truth.json`` beside its output. `load_truth` reads it back, for evaluating
detection and correlation campaign by campaign (did an incident gather this campaign's events? how soon
after its start?).

Example
-------
>>> import datetime as dt, tempfile
>>> from pathlib import Path
>>> t0 = dt.datetime(2024, 5, 6, 9, tzinfo=dt.UTC)
>>> step = StepTruth(name="transfer", domains=("payment",), start=t0, end=t0, n_events=1)
>>> campaign = CampaignTruth(
...     campaign_id="c0", campaign_type="account_takeover", start=t0, end=t0,
...     entities={"user_id": ("cust_0000001",)}, event_ids=("ev-1",), steps=(step,),
... )
>>> with tempfile.TemporaryDirectory() as tmp:
...     truth = GroundTruth(run={"seed": 1}, campaigns=(campaign,))
...     path = write_truth(Path(tmp) / "run.parquet.truth.json", truth)
...     load_truth(path).campaigns[0] == campaign
True
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TRUTH_SUFFIX",
    "CampaignTruth",
    "GroundTruth",
    "StepTruth",
    "load_truth",
    "truth_path",
    "write_truth",
]

TRUTH_SUFFIX = ".truth.json"
_FORMAT = "finsecure.sim.truth/1"


@dataclass(frozen=True, slots=True)
class StepTruth:
    """One step of a campaign (e.g. the credential stuffing of an account takeover)."""

    name: str
    domains: tuple[str, ...]
    start: dt.datetime
    end: dt.datetime
    n_events: int


@dataclass(frozen=True, slots=True)
class CampaignTruth:
    """One staged campaign.

    Attributes
    ----------
    campaign_id
        Unique within the run.
    campaign_type
        A `finsecure.sim.config.CampaignType` value (also the ``label_detail`` of its events).
    start, end
        Time of its first and last event.
    entities
        The keys that tie its events together, by canonical column name (``user_id``, ``account_id``,
        ``card_id``, ``device_id``, ``src_ip``, ``dst_ip``, ``merchant_id``, ``terminal_id``,
        ``payee_id``, ``principal_id``, ``access_key_id``, ``resource``...). Keys starting with
        ``victim_`` list people or accounts the campaign used but who are not part of it.
    event_ids
        Every event it produced, in time order; all carry ``label = 1``.
    steps
        Its steps in order; a step ends before the next one starts.
    """

    campaign_id: str
    campaign_type: str
    start: dt.datetime
    end: dt.datetime
    entities: Mapping[str, tuple[str, ...]]
    event_ids: tuple[str, ...]
    steps: tuple[StepTruth, ...] = ()

    @property
    def domains(self) -> tuple[str, ...]:
        """Domains its events belong to, in a fixed order."""
        seen = {domain for step in self.steps for domain in step.domains}
        return tuple(d for d in ("network", "cloud", "auth", "payment") if d in seen)


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Everything a run staged, plus what describes the run (seed, size, time range, counts)."""

    run: Mapping[str, Any] = field(default_factory=dict)
    campaigns: tuple[CampaignTruth, ...] = ()

    def campaign_of_event(self) -> dict[str, str]:
        """Map every campaign event id to its campaign id."""
        return {event_id: c.campaign_id for c in self.campaigns for event_id in c.event_ids}

    def by_type(self) -> dict[str, list[CampaignTruth]]:
        """Campaigns grouped by type."""
        groups: dict[str, list[CampaignTruth]] = {}
        for campaign in self.campaigns:
            groups.setdefault(campaign.campaign_type, []).append(campaign)
        return groups


def truth_path(output: Path | str) -> Path:
    """Where the ground truth of an output file goes: ``<output>.truth.json``."""
    path = Path(output)
    return path.with_name(path.name + TRUTH_SUFFIX)


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


def _to_json(truth: GroundTruth) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "run": dict(truth.run),
        "campaigns": [
            {
                "campaign_id": c.campaign_id,
                "campaign_type": c.campaign_type,
                "start": _time(c.start),
                "end": _time(c.end),
                "domains": list(c.domains),
                "entities": {key: list(values) for key, values in sorted(c.entities.items())},
                "steps": [
                    {
                        "name": s.name,
                        "domains": list(s.domains),
                        "start": _time(s.start),
                        "end": _time(s.end),
                        "n_events": s.n_events,
                    }
                    for s in c.steps
                ],
                "n_events": len(c.event_ids),
                "event_ids": list(c.event_ids),
            }
            for c in truth.campaigns
        ],
    }


def write_truth(path: Path | str, truth: GroundTruth) -> Path:
    """Write ground truth as JSON (stable key order, so the same run gives the same bytes)."""
    target = Path(path)
    text = json.dumps(_to_json(truth), indent=1, sort_keys=False, ensure_ascii=True)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(text + "\n", encoding="utf-8")
    temporary.replace(target)
    return target


def load_truth(path: Path | str) -> GroundTruth:
    """Read the ground truth a run wrote (give the truth file or the output file beside it).

    Raises
    ------
    ValueError
        If the file is not simulator ground truth (message names the file and what is wrong).
    """
    source = Path(path)
    if not source.name.endswith(TRUTH_SUFFIX):
        source = truth_path(source)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{source}: not a simulator ground-truth file (expected format {_FORMAT!r})")
    campaigns = []
    for number, item in enumerate(data.get("campaigns", [])):
        try:
            campaigns.append(
                CampaignTruth(
                    campaign_id=str(item["campaign_id"]),
                    campaign_type=str(item["campaign_type"]),
                    start=_parse_time(item["start"]),
                    end=_parse_time(item["end"]),
                    entities={str(k): tuple(str(v) for v in vs) for k, vs in item["entities"].items()},
                    event_ids=tuple(str(e) for e in item["event_ids"]),
                    steps=tuple(
                        StepTruth(
                            name=str(s["name"]),
                            domains=tuple(str(d) for d in s["domains"]),
                            start=_parse_time(s["start"]),
                            end=_parse_time(s["end"]),
                            n_events=int(s["n_events"]),
                        )
                        for s in item["steps"]
                    ),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{source}: campaign #{number} is malformed ({type(exc).__name__}: {exc})"
            ) from None
    return GroundTruth(run=dict(data.get("run", {})), campaigns=tuple(campaigns))
