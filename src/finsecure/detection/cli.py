"""``finsecure rules``: check the shipped rules, replay one over the lake, report on Sigma rules."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from finsecure.detection.conditions import ConditionError
from finsecure.detection.rule import load_rules, parse_duration
from finsecure.detection.samples import run_samples
from finsecure.detection.sigma.report import sigma_report, with_raw
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


def _when(text: str, option: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"expected a date or time such as 2024-05-06 or 2024-05-06T12:00, got {text!r}", param_hint=option
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@rules_command_app.command("backtest")
def backtest_command(
    rule_name: Annotated[str, typer.Argument(metavar="RULE", help="Rule id, title or file name")],
    start: Annotated[str, typer.Option("--from", help="Start of the period (UTC date or time)")],
    end: Annotated[str, typer.Option("--to", help="End of the period, excluded (UTC date or time)")],
    lake: Annotated[Path | None, typer.Option(help="Lake directory (default: <data_dir>/lake)")] = None,
    directory: Annotated[Path, typer.Option("--rules", help="Folder of rule files")] = Path("rules"),
    warmup: Annotated[str, typer.Option(help="History replayed before --from for the features")] = "1d",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Replay one rule over the lake: hits per day, top entities, precision and recall where labelled."""
    from finsecure.core.settings import get_settings
    from finsecure.detection.backtest import backtest, find_rule

    try:
        rule = find_rule(load_rules(directory).rules, rule_name)
    except LookupError as exc:
        raise typer.BadParameter(str(exc), param_hint="RULE") from None
    root = lake if lake is not None else get_settings().data_dir / "lake"
    try:
        warmup_s = parse_duration(warmup, "--warmup")
    except ConditionError as exc:
        raise typer.BadParameter(exc.message, param_hint="--warmup") from None
    try:
        result = backtest(rule, root, _when(start, "--from"), _when(end, "--to"), warmup_s=warmup_s)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--to") from None
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    typer.echo(f"{rule.title} ({rule.id})")
    replayed = ", ".join(f"{n:,} {d}" for d, n in result.events.items()) or "no events"
    typer.echo(f"{result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} UTC: {replayed} replayed")
    typer.echo(f"{result.hits:,} hit(s)")
    for day, count in result.by_day.items():
        typer.echo(f"  {day}  {count:,}")
    if result.precision is not None:
        typer.echo(
            f"precision {result.precision:.3f} ({result.true_hits} of {result.labelled_hits} labelled hits)"
        )
    if result.recall is not None:
        typer.echo(
            f"recall {result.recall:.3f} ({result.flagged_bad} of {result.labelled_bad} labelled-bad events)"
        )
    for entity, count in result.top_entities:
        typer.echo(f"  {rule.entity} {entity}: {count}")


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
        frames = {domain: with_raw(pl.concat(chunks), events) for domain, chunks in parts.items()}
    rows = sigma_report(directory, frames)
    for row in rows:
        state = "fired" if row.fired else "compiled" if row.compiled else "loaded" if row.loaded else "failed"
        detail = f"{row.fired} event(s)" if row.fired else row.reason
        if row.raw_fields:
            detail = f"{detail}  (from the source record: {', '.join(row.raw_fields)})".strip()
        typer.echo(f"{state:8} {row.path}  {detail}")
    compiled = sum(row.compiled for row in rows)
    fired = sum(row.fired > 0 for row in rows)
    loaded = sum(row.loaded for row in rows)
    canonical = sum(row.compiled and not row.raw_fields for row in rows)
    typer.echo(
        f"{len(rows)} rules: {loaded} loaded, {compiled} compiled ({canonical} on canonical columns only), "
        f"{fired} fired"
    )
