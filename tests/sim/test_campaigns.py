from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from finsecure.event.schemas import Domain
from finsecure.sim import CampaignType, SimConfig, World
from finsecure.sim.campaigns import PlannedCampaign, plan_campaigns, realtime_plan, stage
from finsecure.sim.geo import haversine_km
from finsecure.sim.truth import CampaignTruth

from .conftest import SmallRun

# Columns whose values tie a campaign's events together.
LINKS = (
    "user_id",
    "account_id",
    "card_id",
    "device_id",
    "src_ip",
    "dst_ip",
    "merchant_id",
    "terminal_id",
    "payee_id",
    "principal_id",
    "access_key_id",
    "resource",
)


def _rows(run: SmallRun, campaign: CampaignTruth) -> dict[Domain, pl.DataFrame]:
    ids = pl.Series(campaign.event_ids)
    found = {d: f.filter(pl.col("event_id").is_in(ids)).sort("ts") for d, f in run.frames.items()}
    return {d: f for d, f in found.items() if f.height}


def _one(run: SmallRun, kind: CampaignType) -> tuple[CampaignTruth, dict[Domain, pl.DataFrame]]:
    campaign = run.truth.by_type()[kind.value][0]
    return campaign, _rows(run, campaign)


def test_campaigns__every_type_appears_with_truth_matching_the_events(small_run: SmallRun) -> None:
    events = small_run.events()
    assert set(small_run.truth.by_type()) == {kind.value for kind in CampaignType}
    labelled = events.filter(pl.col("label") == 1)
    owner = small_run.truth.campaign_of_event()
    assert set(labelled["event_id"].to_list()) == set(owner), "labelled events and truth disagree"
    for campaign in small_run.truth.campaigns:
        rows = events.filter(pl.col("event_id").is_in(pl.Series(campaign.event_ids)))
        assert rows.height == len(campaign.event_ids) == sum(s.n_events for s in campaign.steps)
        assert (rows["label"] == 1).all()
        assert (rows["label_detail"] == campaign.campaign_type).all()
        assert rows["ts"].min() == campaign.start
        assert rows["ts"].max() == campaign.end
        assert set(rows["domain"].unique().to_list()) == set(campaign.domains)
    assert events.filter(pl.col("label") == 0)["label_detail"].is_null().all()


def test_campaigns__steps_are_in_order_and_inside_the_run(small_run: SmallRun) -> None:
    for campaign in small_run.truth.campaigns:
        steps = campaign.steps
        assert len(steps) >= 2, campaign.campaign_type
        for before, after in itertools.pairwise(steps):
            assert before.end <= after.start, (campaign.campaign_id, before.name, after.name)
        assert small_run.config.start <= campaign.start
        assert campaign.end < small_run.config.end


def test_campaigns__every_event_shares_a_key_with_its_campaign(small_run: SmallRun) -> None:
    for campaign in small_run.truth.campaigns:
        for domain, rows in _rows(small_run, campaign).items():
            linked = pl.lit(False)
            for column in LINKS:
                if column in rows.columns and column in campaign.entities:
                    linked = linked | pl.col(column).is_in(pl.Series(campaign.entities[column]))
            assert rows.select(linked.all()).item(), (campaign.campaign_type, domain)


@pytest.mark.parametrize(
    "kind",
    [
        CampaignType.account_takeover,
        CampaignType.impossible_travel,
        CampaignType.mule_ring,
        CampaignType.network_intrusion,
        CampaignType.insider_exfiltration,
    ],
)
def test_campaigns__cross_domain_types_span_two_domains(small_run: SmallRun, kind: CampaignType) -> None:
    for campaign in small_run.truth.by_type()[kind.value]:
        assert len(campaign.domains) >= 2


def test_account_takeover__steps_share_user_account_device_and_payee(small_run: SmallRun) -> None:
    campaign, rows = _one(small_run, CampaignType.account_takeover)
    auth, payment = rows[Domain.auth], rows[Domain.payment]
    user, account = campaign.entities["user_id"][0], campaign.entities["account_id"][0]
    mine = auth.filter(pl.col("user_id") == user)
    actions = mine["action"].to_list()
    first_success = actions.index("login", mine["outcome"].to_list().index("success"))
    assert set(actions[:first_success]) == {"login"}
    assert (mine["outcome"][:first_success] == "failure").all()
    assert actions[first_success:] == ["login", "contact_change", "mfa_change", "payee_add"]
    assert (mine["account_id"] == account).all()
    login = mine.row(first_success, named=True)
    assert login["device_id"] not in set(small_run.world.device_ids.to_list())  # a device never seen before
    payee = mine.filter(pl.col("action") == "payee_add")["payee_id"].item()
    assert (payment["payee_id"] == payee).all()
    assert (payment["account_id"] == account).all()
    assert (payment["user_id"] == user).all()
    assert (payment["device_id"] == login["device_id"]).all()
    assert (payment["src_ip"] == login["src_ip"]).all()
    assert (payment["ts"] > mine["ts"].max()).all()
    assert (payment["channel"] == "instant_transfer").all()
    assert (payment["amount"] > 1_000).all()
    home = small_run.world.cities.country_codes[
        int(small_run.world.cust_country[int(user.removeprefix("cust_"))])
    ]
    assert login["country"] != home
    stuffing_ips = set(rows[Domain.network]["src_ip"].to_list())
    assert set(auth.filter(pl.col("outcome") == "failure")["src_ip"].to_list()) <= stuffing_ips


def test_card_testing__small_tests_then_large_purchases(small_run: SmallRun) -> None:
    campaign, rows = _one(small_run, CampaignType.card_testing)
    payment = rows[Domain.payment]
    tests = payment.filter(pl.col("ts") <= campaign.steps[0].end)
    cash = payment.filter(pl.col("ts") >= campaign.steps[1].start)
    assert tests["merchant_id"].n_unique() >= 3
    assert tests["card_id"].n_unique() >= 5
    assert tests["amount"].max() < cash["amount"].min()
    assert set(cash["card_id"].to_list()) <= set(tests["card_id"].to_list())
    assert payment["device_id"].n_unique() == 1
    assert payment["src_ip"].n_unique() == 1
    assert (tests["auth_result"] == "declined").any()


def test_compromised_terminal__skimmed_cards_are_used_elsewhere(small_run: SmallRun) -> None:
    campaign, rows = _one(small_run, CampaignType.compromised_terminal)
    payment = rows[Domain.payment]
    skim = payment.filter(pl.col("ts") <= campaign.steps[0].end)
    fraud = payment.filter(pl.col("ts") >= campaign.steps[1].start)
    assert skim["terminal_id"].n_unique() == 1
    assert skim["terminal_id"][0] == campaign.entities["terminal_id"][0]
    assert set(fraud["card_id"].to_list()) <= set(skim["card_id"].to_list())
    assert fraud["terminal_id"].is_in(skim["terminal_id"]).not_().all()
    assert fraud["country"][0] != skim["country"][0]
    assert (fraud["entry_mode"] == "magstripe").all()
    assert fraud["card_present"].all()


def test_impossible_travel__faster_than_any_plane(small_run: SmallRun) -> None:
    for campaign in small_run.truth.by_type()[CampaignType.impossible_travel.value]:
        rows = _rows(small_run, campaign)
        payment = rows[Domain.payment].sort("ts")
        home, away = payment.row(0, named=True), payment.row(-1, named=True)
        assert home["card_id"] == away["card_id"]
        km = float(haversine_km(home["lat"], home["lon"], away["lat"], away["lon"]))
        hours = (away["ts"] - home["ts"]).total_seconds() / 3_600
        assert km / hours > 1_000
        login = rows[Domain.auth].row(0, named=True)
        assert login["user_id"] == home["user_id"]
        assert login["country"] == away["country"]


def test_mule_ring__shared_devices_and_a_money_funnel(small_run: SmallRun) -> None:
    campaign, rows = _one(small_run, CampaignType.mule_ring)
    auth, payment = rows[Domain.auth], rows[Domain.payment]
    logins = auth.filter(pl.col("action") == "login")
    per_device = logins.group_by("device_id").agg(pl.col("user_id").n_unique())
    assert per_device["user_id"].max() >= 2, "mules share devices"
    collector_payee = campaign.entities["payee_id"][0]
    inbound = payment.filter(pl.col("payee_id") == collector_payee)
    assert inbound["account_id"].n_unique() >= 5  # many → one
    collector = campaign.entities["account_id"][0]
    outbound = payment.filter((pl.col("account_id") == collector) & pl.col("payee_id").is_not_null())
    assert outbound["payee_id"].n_unique() == len(campaign.entities["account_id"]) - 1  # one → many
    assert inbound["ts"].max() < outbound["ts"].min()
    tier2 = set(campaign.entities["account_id"][1:])
    cash = payment.filter(pl.col("card_id").is_not_null())
    assert set(cash["account_id"].to_list()) <= tier2
    assert cash["ts"].min() > outbound["ts"].max()


def test_cloud_credential_compromise__no_mfa_new_key_bulk_download(small_run: SmallRun) -> None:
    campaign, rows = _one(small_run, CampaignType.cloud_credential_compromise)
    cloud = rows[Domain.cloud]
    login = cloud.filter((pl.col("action") == "ConsoleLogin") & (pl.col("outcome") == "success"))
    assert login.height == 1
    assert login["mfa_used"].item() is False
    created = cloud.filter(pl.col("action") == "CreateAccessKey")
    gets = cloud.filter(pl.col("action") == "GetObject")
    assert created.height == 1
    assert gets.height >= 200
    assert (gets["access_key_id"] == campaign.entities["access_key_id"][0]).all()
    assert gets["ts"].min() > created["ts"].item() > login["ts"].item()
    assert cloud["src_ip"].n_unique() == 1
    assert cloud["user_id"].n_unique() == 1
    background = small_run.frames[Domain.cloud].filter(pl.col("label") == 0)
    assert campaign.entities["src_ip"][0] not in set(background["src_ip"].drop_nulls().to_list())


def test_network_intrusion__scan_brute_force_access_lateral(small_run: SmallRun) -> None:
    campaign, rows = _one(small_run, CampaignType.network_intrusion)
    network, auth = rows[Domain.network], rows[Domain.auth]
    attacker = campaign.entities["src_ip"][0]
    scan = network.filter(pl.col("ts") <= campaign.steps[0].end)
    assert scan["dst_port"].n_unique() >= 30
    assert (scan["src_ip"] == attacker).all()
    brute = auth.filter(pl.col("outcome") == "failure")
    assert brute.height >= 40
    assert (brute["src_ip"] == attacker).all()
    success = auth.filter((pl.col("outcome") == "success") & (pl.col("src_ip") == attacker))
    assert success.height == 1
    assert success["ts"].item() > brute["ts"].max()
    lateral = network.filter(pl.col("direction") == "internal")
    assert lateral.height >= 3
    assert lateral["ts"].min() > success["ts"].item()
    moves = auth.filter(pl.col("src_ip") != attacker)
    assert (moves["user_id"] == success["user_id"].item()).all()
    assert moves["device_id"].n_unique() >= 3


def test_insider_exfiltration__reads_then_large_uploads(small_run: SmallRun) -> None:
    campaign, rows = _one(small_run, CampaignType.insider_exfiltration)
    cloud, network = rows[Domain.cloud], rows[Domain.network]
    user = campaign.entities["user_id"][0]
    assert (cloud["user_id"] == user).all()
    assert (network["user_id"] == user).all()
    assert cloud.filter(pl.col("action") == "GetObject").height >= 100
    out = network.filter(pl.col("direction") == "outbound")
    assert out["bytes_out"].sum() > 500_000_000
    assert out["dst_ip"].n_unique() == 1
    assert out["ts"].min() > cloud["ts"].max()


def test_plan_campaigns__counts_follow_rates_and_fit_the_run() -> None:
    config = SimConfig(customers=1_000, duration_s=7 * 86_400, seed=2).with_campaign_rates(card_testing=10.0)
    start = 1_714_953_600_000_000
    end = start + int(config.duration_s * 1e6)
    plans = plan_campaigns(config, start, end)
    testing = [p for p in plans if p.campaign_type is CampaignType.card_testing]
    assert 45 <= len(testing) <= 100
    assert [p.cid for p in plans] == list(range(len(plans)))
    assert all(
        start <= p.start_us < end and p.limit_us is not None and p.start_us + p.limit_us < end for p in plans
    )
    none = plan_campaigns(config.with_campaign_rates(**{k.value: 0.0 for k in CampaignType}), start, end)
    assert none == []


def test_stage__short_limit_compresses_but_keeps_order(small_world: World) -> None:
    plan = PlannedCampaign(
        3, CampaignType.compromised_terminal, start_us=1_714_953_600_000_000, limit_us=60_000_000
    )
    staged = stage(plan, small_world, seed=1, tenant="default")
    assert (staged.truth.end - staged.truth.start).total_seconds() <= 60
    names = [s.name for s in staged.truth.steps]
    assert names == ["skimming", "cloned_card_fraud"]
    again = stage(plan, small_world, seed=1, tenant="default")
    assert all(again.frames[d].equals(f) for d, f in staged.frames.items())


def test_realtime_plan__every_type_each_period_staggered() -> None:
    config = SimConfig(customers=1_000, realtime=True, campaign_period_s=80.0)
    first = list(realtime_plan(config, 0, 0))
    second = list(realtime_plan(config, 0, 1))
    assert [p.campaign_type for p in first] == list(CampaignType)
    starts = np.array([p.start_us for p in first])
    assert (np.diff(starts) > 0).all()
    assert starts[0] >= 2_000_000
    assert starts[-1] < 80_000_000
    assert min(p.start_us for p in second) >= 80_000_000
    assert len({p.cid for p in first + second}) == 16
