"""Every shipped rule: schema, unique ids and titles, file naming, and its samples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from finsecure.detection.rule import load_rules
from finsecure.detection.samples import run_samples

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
RESULT = load_rules(RULES_DIR)
#: ATT&CK tactics, as a rule file name starts (or with the rule's fraud typology).
TACTICS = (
    "reconnaissance", "resource_development", "initial_access", "execution", "persistence",
    "privilege_escalation", "defense_evasion", "credential_access", "discovery", "lateral_movement",
    "collection", "command_and_control", "exfiltration", "impact",
)  # fmt: skip


def test_load_rules__every_shipped_rule_loads_with_unique_ids_and_titles() -> None:
    assert RESULT.errors == ()
    assert len(RESULT.rules) >= 46
    assert {rule.domain.value for rule in RESULT.rules} == {"network", "cloud", "auth", "payment"}
    specs = [rule.sequence for rule in RESULT.rules if rule.sequence is not None]
    cross_domain = [spec for spec in specs if len({step.domain for step in spec.steps}) > 1]
    assert len(RESULT.rules) - len(specs) >= 40
    assert len(cross_domain) >= 6
    titles = [rule.title for rule in RESULT.rules]
    assert len(set(titles)) == len(titles)
    assert len({rule.id for rule in RESULT.rules}) == len(RESULT.rules)


@pytest.mark.parametrize("rule", RESULT.rules, ids=lambda rule: Path(str(rule.path)).stem)
def test_run_samples__shipped_rule(rule: object) -> None:
    from finsecure.detection.rule import Rule

    assert isinstance(rule, Rule)
    path = Path(str(rule.path))
    assert path.parent.name == rule.domain.value
    assert path.suffix == ".yml"
    assert path.stem.islower()
    assert re.fullmatch(r"[a-z0-9_]+", path.stem)
    prefixes = [*TACTICS, *([rule.typology] if rule.typology else [])]
    assert any(path.stem.startswith(f"{prefix}_") for prefix in prefixes), "name: <tactic_or_typology>_<name>"
    assert rule.triage
    assert rule.explain
    assert run_samples(rule) == []
