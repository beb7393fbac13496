"""``finsecure rules``: check the shipped rules and report on Sigma rules."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from finsecure.detection.rule import load_rules
from finsecure.detection.samples import run_samples
from finsecure.detection.sigma.report import sigma_report
from finsecure.event.schemas import Domain

__all__ = ["rules_command_app"]

rules_command_app = typer.Typer(help="Check detection rules and Sigma compatibility.", no_args_is_help=True)


@rules_command_app.command("test")
def rule_samples_command(
    directory: Annotated[Path, typer.Argument(help="Folder of rule files")] = Path("rules"),
) -> None:
    """Load every rule and run its sample events: positives must fire, negatives must not."""
    result = load_rules(directory)
    problems = [str(error) for error in result.errors]
    for rule in result.rules:
        problems += [f"{rule.path}: {message}" for message in run_samples(rule)]
    for problem in problems:
        typer.echo(problem, err=True)
    typer.echo(f"{len(result.rules)} rules loaded, {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(1)


@rules_command_app.command("sigma-report")
def sigma_report_command(
    directory: Annotated[Path, typer.Argument(help="Folder of Sigma rules")],
    events: Annotated[Path | None, typer.Option(help="Raw events to run the compiled rules on")] = None,
    format_name: Annotated[
        str, typer.Option("--format", help="Format of --events, e.g. cloudtrail")
    ] = "ndjson",
) -> None:
    """Say which Sigma rules load, compile to canonical columns and fire on the given events."""
    from finsecure.ingest.sources import open_source

    frames: dict[Domain, pl.DataFrame] = {}
    if events is not None:
        parts: dict[Domain, list[pl.DataFrame]] = defaultdict(list)
        for chunk in open_source(events, format_name).chunks():
            parts[chunk.domain].append(chunk.frame)
        frames = {domain: pl.concat(chunks) for domain, chunks in parts.items()}
    rows = sigma_report(directory, frames)
    for row in rows:
        state = "fired" if row.fired else "compiled" if row.compiled else "loaded" if row.loaded else "failed"
        detail = f"{row.fired} event(s)" if row.fired else row.reason
        typer.echo(f"{state:8} {row.path}  {detail}")
    compiled = sum(row.compiled for row in rows)
    fired = sum(row.fired > 0 for row in rows)
    loaded = sum(row.loaded for row in rows)
    typer.echo(f"{len(rows)} rules: {loaded} loaded, {compiled} compiled, {fired} fired")
