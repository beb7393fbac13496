"""Every shipped rule: schema, unique ids and titles, file naming, and its samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from finsecure.detection.rule import load_rules
from finsecure.detection.samples import run_samples

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
RESULT = load_rules(RULES_DIR)


def test_load_rules__every_shipped_rule_loads_with_unique_ids_and_titles() -> None:
    assert RESULT.errors == ()
    assert len(RESULT.rules) >= 20
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
    assert "_" in path.stem
    assert rule.triage
    assert rule.explain
    assert run_samples(rule) == []
