"""``finsecure simulate``: write a simulated bank day (or week...) to a file, with its ground truth.

Register with ``app.command("simulate")(simulate_command)``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from finsecure.sim.config import SCENARIOS, SimConfig, parse_duration
from finsecure.sim.source import SimProgress, simulate
from finsecure.sim.writers import FORMATS, format_of

__all__ = ["parse_rate", "simulate_command"]


def parse_rate(text: str) -> float | None:
    """Events per second of wall-clock time, or ``None`` for ``max`` (as fast as possible).

    Raises
    ------
    typer.BadParameter
        If the text is neither ``max`` nor a positive number.
    """
    if text.strip().lower() in {"max", "inf", "unlimited"}:
        return None
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a rate; give events per second (e.g. 5000) or 'max'"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter("the rate must be a positive number of events per second, or 'max'")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _start(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date and time; use e.g. 2024-05-06T00:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def simulate_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output: .parquet (a folder of per-domain files), .ndjson, .ndjson.gz"
        ),
    ],
    scenario: Annotated[str, typer.Option(help=f"What to simulate: {', '.join(SCENARIOS)}")] = "bank-day",
    customers: Annotated[
        int, typer.Option(min=100, help="Bank customers (staff, shops, servers scale with it)")
    ] = 10_000,
    duration: Annotated[str, typer.Option(help="Simulated time to cover, e.g. 15m, 1h, 1d, 1w")] = "1d",
    rate: Annotated[
        str, typer.Option(help="Events per second of real time (squeezes simulated time), or 'max'")
    ] = "max",
    seed: Annotated[int, typer.Option(help="Same seed, same events (byte for byte)")] = 0,
    fmt: Annotated[
        str | None, typer.Option("--format", help=f"{' or '.join(FORMATS)}; by default from the file name")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="Simulated start time (UTC), e.g. 2024-05-06T00:00:00Z")
    ] = None,
    campaign_scale: Annotated[
        float, typer.Option(min=0.0, help="Multiply attack campaign rates (0: background only)")
    ] = 1.0,
    chunk_size: Annotated[int, typer.Option(min=1, help="Largest batch of rows generated at once")] = 65_536,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary")] = False,
) -> None:
    """Simulate a bank's day: customers, staff, cards, shops and servers in four domains, with labelled
    attack and fraud campaigns. Writes the events and, beside them, <out>.truth.json."""
    console = Console(stderr=True, quiet=quiet)
    duration_s = _duration(duration)
    events_per_s = parse_rate(rate)
    first = _start(start)
    try:
        output_format = format_of(out, fmt)
        config = SimConfig(
            customers=customers,
            duration_s=duration_s,
            seed=seed,
            scenario=scenario,
            chunk_size=chunk_size,
            campaign_scale=campaign_scale,
        )
        if first is not None:
            config = dataclasses.replace(config, start=first)
    except ValueError as exc:
        console.print(f"[bold red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(
        f"Simulating [bold]{config.scenario}[/]: {config.customers:,} customers, {duration} of activity, "
        f"seed {config.seed} → {out} ({output_format})",
        highlight=False,
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[events]:>12,} events"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        task = bar.add_task("simulated time", total=config.duration_s, events=0)

        def on_progress(step: SimProgress) -> None:
            bar.update(task, completed=min(step.simulated_s, step.total_s), events=step.events)

        try:
            result = simulate(config, out, fmt=fmt, rate=events_per_s, progress=on_progress)
        except OSError as exc:
            console.print(
                f"[bold red]Error:[/] could not write {out}: {exc.strerror or exc}", highlight=False
            )
            raise typer.Exit(1) from None
        bar.update(task, completed=config.duration_s, events=result.events)
    table = Table(title="Simulation", show_header=True)
    table.add_column("domain")
    table.add_column("events", justify="right")
    for domain, count in result.events_by_domain.items():
        table.add_row(domain, f"{count:,}")
    table.add_row("[bold]total", f"[bold]{result.events:,}")
    console.print(table)
    kinds = ", ".join(f"{kind} x{len(items)}" for kind, items in sorted(result.truth.by_type().items()))
    console.print(f"Campaigns: {kinds or 'none'} ({result.labelled:,} labelled events)", highlight=False)
    console.print(
        f"Wrote {out} and {result.truth_path} in {result.elapsed_s:.1f} s "
        f"({result.events_per_s:,.0f} events/s)",
        highlight=False,
    )
