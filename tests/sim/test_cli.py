from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from finsecure.sim import load_truth, read_events
from finsecure.sim.cli import parse_rate, simulate_command


@pytest.fixture
def app() -> typer.Typer:
    application = typer.Typer()
    application.command("simulate")(simulate_command)
    application.command("other")(lambda: None)  # keeps "simulate" a sub-command, as in the real CLI
    return application


def test_simulate_command__writes_events_and_truth(tmp_path: Path, app: typer.Typer) -> None:
    out = tmp_path / "day.ndjson.gz"
    result = CliRunner().invoke(
        app, ["simulate", "--customers", "1000", "--duration", "30m", "--seed", "4", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    frames = read_events(out)
    assert sum(f.height for f in frames.values()) > 0
    assert len(load_truth(out).campaigns) == 8
    assert "Campaigns:" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "soon"], "not a duration"),
        (["--rate", "fast"], "not a rate"),
        (["--format", "csv"], "unknown format"),
        (["--start", "yesterday"], "not a date and time"),
    ],
)
def test_simulate_command__plain_errors(
    tmp_path: Path, app: typer.Typer, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "x.parquet"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_parse_rate__max_or_positive() -> None:
    assert parse_rate("max") is None
    assert parse_rate("2500") == 2_500.0
    with pytest.raises(typer.BadParameter):
        parse_rate("0")
