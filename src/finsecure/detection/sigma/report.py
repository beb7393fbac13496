"""``sigma_report``: which Sigma rules of a folder load, compile and fire on given events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from finsecure.detection.engine import RuleSet
from finsecure.detection.sigma.convert import SigmaUnsupported, compile_sigma, sigma_rule_from_path
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch

__all__ = ["SigmaReportRow", "sigma_report"]


@dataclass(frozen=True, slots=True)
class SigmaReportRow:
    """One Sigma rule file: whether it loaded, compiled, how many events it fired on, and why not."""

    path: str
    loaded: bool
    compiled: bool
    fired: int
    reason: str = ""
    title: str = ""


def sigma_report(
    directory: Path, events: Mapping[Domain, pl.DataFrame] | None = None
) -> list[SigmaReportRow]:
    """Load and compile every ``*.yml`` Sigma rule under ``directory`` and, when canonical ``events``
    (frames by domain) are given, count the events each compiled rule fires on. Never raises for a
    bad rule: its row says why."""
    rows: list[SigmaReportRow] = []
    for path in sorted(directory.rglob("*.yml")):
        try:
            sigma_rule = sigma_rule_from_path(path)
        except SigmaUnsupported as exc:
            rows.append(SigmaReportRow(str(path), False, False, 0, str(exc).removeprefix(f"{path}: ")))
            continue
        try:
            rule = compile_sigma(sigma_rule, location=str(path))
        except SigmaUnsupported as exc:
            rows.append(SigmaReportRow(str(path), True, False, 0, str(exc), sigma_rule.title))
            continue
        fired = 0
        frame = (events or {}).get(rule.domain)
        if frame is not None and frame.height:
            fired = RuleSet([rule]).evaluate(Batch(rule.domain, frame, "sigma-report")).height
        rows.append(SigmaReportRow(str(path), True, True, fired, "", rule.title))
    return rows
