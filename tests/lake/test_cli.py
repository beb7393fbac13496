"""``finsecure query``: SQL over the lake under the settings' data directory."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finsecure.cli import app
from finsecure.core.settings import get_settings
from finsecure.lake.writer import LakeWriter
from tests.conftest import TEST_JWT_SECRET
from tests.lake import canonical_frame

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("FINSECURE_ENV", "test")
    monkeypatch.setenv("FINSECURE_JWT_SECRET", TEST_JWT_SECRET)
    monkeypatch.setenv("FINSECURE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    with LakeWriter(tmp_path / "lake") as writer:
        writer.write("payment", canonical_frame("payment", 5, amount=[1.0, 2.0, 3.0, 4.0, 5.0]))
    yield tmp_path
    get_settings.cache_clear()


def test_query__prints_a_table(data_dir: Path) -> None:
    result = runner.invoke(app, ["query", "SELECT count(*) AS n, sum(amount) AS total FROM payment"])
    assert result.exit_code == 0, result.output
    assert "total" in result.output
    assert "15.0" in result.output


def test_query__json_and_csv(data_dir: Path) -> None:
    sql = "SELECT event_id, ts, amount FROM payment ORDER BY amount"
    as_json = runner.invoke(app, ["query", sql, "--format", "json", "--limit", "2"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert rows == [
        {"event_id": "e0", "ts": "2024-05-01T22:00:00+00:00", "amount": 1.0},
        {"event_id": "e1", "ts": "2024-05-01T22:01:00+00:00", "amount": 2.0},
    ]
    assert "first 2 rows" in as_json.stderr

    as_csv = runner.invoke(app, ["query", sql, "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    table = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert table[0] == ["event_id", "ts", "amount"]
    assert len(table) == 6


def test_query__refuses_writes_and_reports_errors(data_dir: Path) -> None:
    refused = runner.invoke(app, ["query", "COPY payment TO 'x.csv'"])
    assert refused.exit_code == 1
    assert "Refused" in refused.stderr
    assert not (Path.cwd() / "x.csv").exists()
    broken = runner.invoke(app, ["query", "SELECT nope FROM payment"])
    assert broken.exit_code == 1
    assert "nope" in broken.stderr
