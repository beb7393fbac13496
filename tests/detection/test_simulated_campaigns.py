"""The shipped sequence rules on the built-in simulator: each fires on its campaign, not on the background."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from finsecure.core.settings import Settings
from finsecure.detection import DetectionStep, RuleSet, load_rules
from finsecure.features.step import FeatureStep
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.testing import run_pipeline
from finsecure.sim import SimConfig, SimulatorSource
from finsecure.sim.evaluate import evaluate_simulated

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules").rules
SEQUENCES = [rule for rule in RULES if rule.sequence is not None]
#: The campaign each sequence rule is written for (its typology or story).
CAMPAIGN_OF = {
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f01": "account_takeover",
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f02": "card_testing",
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f03": "impossible_travel",
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f04": "compromised_terminal",
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f05": "cloud_credential_compromise",
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f06": "network_intrusion",
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f07": "insider_exfiltration",
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f08": "mule_ring",
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f09": "network_intrusion",
    "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f10": "account_takeover",
}


class _Labelled(DetectionStep):
    """Keeps each hit with the label of the event that fired it."""

    def process(self, batch: Batch) -> Batch:
        hits = self.rules.evaluate(batch)
        if hits.height:
            self.on_hits(hits.join(batch.frame.select("event_id", "label_detail"), on="event_id", how="left"))
        return batch


def _hits(config: SimConfig) -> tuple[pl.DataFrame, dict[str, set[str]]]:
    """Hits of the sequence rules on a run, and the entities the run's campaigns involved, by type."""
    found: list[pl.DataFrame] = []
    source = SimulatorSource(config)
    run_pipeline([FeatureStep(), _Labelled(RuleSet(SEQUENCES), found.append)], source)
    involved: dict[str, set[str]] = {}
    for campaign in source.truth.campaigns:
        for values in campaign.entities.values():
            involved.setdefault(campaign.campaign_type, set()).update(values)
    if not found:
        schema = {"rule_id": pl.String, "label_detail": pl.String, "entity_id": pl.String}
        return pl.DataFrame(schema=schema), involved
    return pl.concat(found), involved


DAY = SimConfig(customers=2_000, duration_s=86_400.0, seed=7)


def test_sequence_rules__each_fires_on_its_campaign_and_never_on_background() -> None:
    assert len(SEQUENCES) >= 6
    assert set(CAMPAIGN_OF) == {rule.id for rule in SEQUENCES}
    hits, involved = _hits(DAY)
    # an everyday event may complete a chain an attack began (an admin's usual hop from a bastion the
    # attacker just entered): a hit is false only when its entity took no part in any campaign
    everyone = [entity for entities in involved.values() for entity in entities]
    background = hits.filter(pl.col("label_detail").is_null(), ~pl.col("entity_id").is_in(everyone))
    assert background.height == 0, background.select("rule_id", "entity_id").rows()
    fired = set(hits.select("rule_id", "label_detail").unique().iter_rows())
    for rule_id, entity in hits.select(
        "rule_id", "entity_id"
    ).iter_rows():  # chain ended by an everyday event
        fired |= {(rule_id, kind) for kind, entities in involved.items() if entity in entities}
    missing = [
        (rule.title, CAMPAIGN_OF[rule.id])
        for rule in SEQUENCES
        if (rule.id, CAMPAIGN_OF[rule.id]) not in fired
    ]
    assert missing == []


def test_sequence_rules__background_only_day_gives_no_hits() -> None:
    quiet = DAY.with_campaign_rates(**dict.fromkeys(DAY.campaign_rates, 0.0))
    hits, involved = _hits(quiet)
    assert involved == {}
    assert hits.height == 0, hits.select("rule_id", "entity_id").rows()


#: Measured on this run (2026-11-25): recall 1.0 (46 of 46 campaigns; 0.935 before payees were linked to
#: the accounts they pay into: the 3 mule rings split in two, see docs/detection.md), every campaign
#: detected, 0 incidents without an attack event among 15,357 events. With four times the campaigns in a
#: small world, 20 campaigns share one incident (attack addresses reused across campaigns; the scorer
#: does not count that against recall).
BUSY_MORNING = SimConfig(customers=2_000, duration_s=6 * 3600, seed=11, campaign_scale=4.0)


def test_shipped_rules__each_campaign_becomes_one_incident_and_the_background_stays_quiet(
    tmp_path: Path,
) -> None:
    report = evaluate_simulated(
        Settings(env="development", data_dir=tmp_path / "unused"), config=BUSY_MORNING
    )
    campaigns = report["campaigns"]
    assert campaigns["n"] >= 40
    assert campaigns["detected_share"] == 1.0
    assert campaigns["recall"] >= 0.95, campaigns["by_type"]
    assert report["incidents"]["false"] <= 2, report["rules"]
