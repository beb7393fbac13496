"""``rules backtest``: replay a rule over a real (temporary) lake; features recomputed, labels scored."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from finsecure.detection.backtest import backtest, find_rule
from finsecure.detection.cli import rules_command_app
from finsecure.detection.frames import sample_frame
from finsecure.detection.rule import load_rules
from finsecure.event.schemas import Domain, arrow_schema
from finsecure.lake.writer import LakeWriter

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules").rules
ATO = "account_takeover_login_security_change_payee_transfer"
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)  # the samples' clock: ts are seconds after it


def _takeover(user: str, at: int, label: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Four failed sign-ins, a success, an MFA change, a new payee (auth) and a large transfer (payment)."""
    common = {"user_id": user, "label": label}
    auth = [{**common, "action": "login", "outcome": "failure", "ts": at + i, "event_id": f"{user}-f{i}"}
            for i in range(4)]  # fmt: skip
    auth += [
        {**common, "action": "login", "outcome": "success", "ts": at + 60, "event_id": f"{user}-in"},
        {**common, "action": "mfa_change", "outcome": "success", "ts": at + 120, "event_id": f"{user}-mfa"},
        {**common, "action": "payee_add", "outcome": "success", "ts": at + 300, "event_id": f"{user}-payee"},
    ]
    payment = [{**common, "channel": "instant_transfer", "amount": 6000.0, "currency": "EUR", "ts": at + 900,
                "event_id": f"{user}-pay"}]  # fmt: skip
    return auth, payment


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    auth: list[dict[str, Any]] = []
    payment: list[dict[str, Any]] = []
    for user, at, label in (("early", -7_200, 1), ("bad", 3_600, 1), ("also-bad", 7_200, 1)):
        a, p = _takeover(user, at, label)
        auth += a
        payment += p
    # an everyday customer: signs in, adds a payee, pays a large bill (no failures, no security change)
    auth += [{"user_id": "fine", "action": "login", "outcome": "success", "ts": 4_000, "label": 0},
             {"user_id": "fine", "action": "payee_add", "outcome": "success", "ts": 4_100,
              "label": 0}]  # fmt: skip
    payment += [{"user_id": "fine", "channel": "transfer", "amount": 2500.0, "ts": 4_500, "label": 0},
                {"user_id": "x", "channel": "pos", "amount": 5.0, "ts": 4_600, "label": 1}]  # fmt: skip
    with LakeWriter(root, fsync=False) as writer:
        for domain, rows in ((Domain.auth, auth), (Domain.payment, payment)):
            frame = sample_frame(domain, sorted(rows, key=lambda r: r["ts"])).select(
                arrow_schema(domain).names
            )
            writer.write(domain, frame)
    return root


def test_backtest__counts_hits_in_the_period_with_precision_and_recall(lake: Path) -> None:
    rule = find_rule(RULES, ATO)
    result = backtest(rule, lake, T0, T0 + dt.timedelta(days=1), warmup_s=4 * 3_600)
    assert result.events == {"auth": 16, "payment": 4}  # the early takeover is warm-up only
    assert result.hits == 2
    assert (result.precision, result.true_hits, result.labelled_hits) == (1.0, 2, 2)
    assert (result.flagged_bad, result.labelled_bad) == (2, 3)  # the card payment labelled 1 is missed
    assert result.by_day == {"2024-05-01": 2}
    assert sorted(entity for entity, _ in result.top_entities) == ["also-bad", "bad"]


def test_backtest__empty_period_is_refused(lake: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        backtest(find_rule(RULES, ATO), lake, T0, T0)


def test_find_rule__by_id_title_or_file_name_and_ambiguity() -> None:
    rule = find_rule(RULES, ATO)
    assert find_rule(RULES, rule.id) is rule
    assert find_rule(RULES, rule.title.upper()) is rule
    with pytest.raises(LookupError, match="0 rules"):
        find_rule(RULES, "no such rule")


def test_backtest_command__json_and_text(lake: Path) -> None:
    runner = CliRunner()
    rules_dir = str(Path(__file__).resolve().parents[2] / "rules")
    args = ["backtest", ATO, "--from", "2024-05-01", "--to", "2024-05-02", "--lake", str(lake),
            "--rules", rules_dir, "--warmup", "1h"]  # fmt: skip
    out = runner.invoke(rules_command_app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["precision"] == 1.0
    text = runner.invoke(rules_command_app, args)
    assert text.exit_code == 0
    assert "precision 1.000 (3 of 3 labelled hits)" in text.output  # from midnight: the early one too
    bad = runner.invoke(rules_command_app, [*args[:3], "2024-05-01", "--to", "2024-04-01", *args[6:]])
    assert bad.exit_code != 0
