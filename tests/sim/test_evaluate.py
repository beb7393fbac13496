"""Campaign-level scoring of a simulated run, and one small end-to-end evaluation."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from finsecure.core.settings import Settings
from finsecure.sim.config import SimConfig
from finsecure.sim.evaluate import AlertRecord, evaluate_simulated, percentile, score_campaigns
from finsecure.sim.truth import CampaignTruth, StepTruth

T0 = dt.datetime(2024, 5, 6, 9, tzinfo=dt.UTC)


def _campaign(cid: str = "c1", domains: tuple[str, ...] = ("auth", "payment")) -> CampaignTruth:
    steps = tuple(StepTruth(f"s{i}", (d,), T0, T0, 1) for i, d in enumerate(domains))
    return CampaignTruth(cid, "account_takeover", T0, T0, {}, tuple(f"{cid}-e{i}" for i in range(3)), steps)


def test_score_campaigns__one_incident_with_every_domain_is_complete() -> None:
    alerts = [AlertRecord(1, "auth", ("c1-e0",), 9, 100.5), AlertRecord(2, "payment", ("c1-e2",), 9, 103.0)]
    arrived = {"c1-e0": 100.0, "c1-e1": 101.0, "c1-e2": 102.25}

    [outcome] = score_campaigns([_campaign()], alerts, arrived)

    assert outcome.complete
    assert outcome.detected
    assert outcome.single_incident
    assert outcome.time_to_detect_s == pytest.approx(0.75)  # the payment alert completed it


def test_score_campaigns__a_waiting_building_block_counts_from_the_event_that_completed_it() -> None:
    # the sign-in alert waited as a building block; the payment opened the incident and both joined at once
    alerts = [AlertRecord(1, "auth", ("c1-e0",), 9, 50.0), AlertRecord(2, "payment", ("c1-e2",), 9, 50.0)]

    [outcome] = score_campaigns([_campaign()], alerts, {"c1-e0": 10.0, "c1-e2": 49.5})

    assert outcome.time_to_detect_s == pytest.approx(0.5)


def test_score_campaigns__split_across_two_incidents_is_not_complete() -> None:
    alerts = [AlertRecord(1, "auth", ("c1-e0",), 9, 1.0), AlertRecord(2, "payment", ("c1-e2",), 10, 2.0)]

    [outcome] = score_campaigns([_campaign()], alerts, {})

    assert outcome.detected
    assert not outcome.single_incident
    assert not outcome.complete
    assert outcome.incidents == (9, 10)
    assert outcome.time_to_detect_s is None


def test_score_campaigns__a_domain_without_alerts_is_not_complete() -> None:
    alerts = [AlertRecord(1, "auth", ("c1-e0", "background-1"), 9, 1.0)]

    [outcome] = score_campaigns([_campaign()], alerts, {"c1-e0": 0.5})

    assert outcome.single_incident
    assert not outcome.complete
    assert outcome.alert_domains == ("auth",)


def test_score_campaigns__alerts_on_other_events_do_not_count() -> None:
    alerts = [AlertRecord(1, "auth", ("background-1",), 9, 1.0)]

    [outcome] = score_campaigns([_campaign()], alerts, {})

    assert not outcome.detected
    assert outcome.incidents == ()


def test_percentile__interpolates_between_ranks() -> None:
    assert percentile([10.0, 0.0, 20.0], 95) == pytest.approx(19.0)
    assert percentile([], 50) is None


def test_evaluate_simulated__reports_every_campaign_and_domain(tmp_path: Path) -> None:
    config = SimConfig(customers=1_000, duration_s=2 * 3600, seed=3, campaign_scale=4.0)
    out = tmp_path / "report.json"

    report = evaluate_simulated(Settings(env="development", data_dir=tmp_path / "unused"), out, config=config)

    assert json.loads(out.read_text()) == report
    assert out.with_suffix(".md").read_text().startswith("# Evaluation on the simulated bank day")
    assert report["dataset"] == "simulated"
    assert report["run"]["seed"] == 3
    campaigns = report["campaigns"]
    assert campaigns["n"] == sum(row["n"] for row in campaigns["by_type"].values()) > 0
    domains = report["splits"]["bank_day"]["rules"]
    assert set(domains) == {"network", "cloud", "auth", "payment"}
    assert sum(row["n"] for row in domains.values()) == report["run"]["events"] > 0
    assert report["run"]["background_events"] == report["run"]["events"] - sum(
        row["positives"] for row in domains.values()
    )
    # the shipped rules catch something of what was staged, and their hits are mostly attack events
    assert campaigns["detected_share"] > 0
    flagged = sum(row["flagged"] for row in domains.values())
    assert flagged > 0
    assert not (tmp_path / "unused").exists()  # the run used a private database and lake
