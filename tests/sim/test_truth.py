from __future__ import annotations

import json
from pathlib import Path

import pytest

from finsecure.sim import load_truth
from finsecure.sim.truth import GroundTruth, truth_path, write_truth

from .conftest import SmallRun


def test_write_truth__round_trip_and_stable_bytes(tmp_path: Path, small_run: SmallRun) -> None:
    truth = GroundTruth(run={"seed": 11}, campaigns=small_run.truth.campaigns)
    first = write_truth(tmp_path / "a.truth.json", truth)
    second = write_truth(tmp_path / "b.truth.json", truth)
    assert first.read_bytes() == second.read_bytes()
    assert load_truth(first) == truth
    data = json.loads(first.read_text())
    assert data["campaigns"][0]["n_events"] == len(truth.campaigns[0].event_ids)


def test_truth_path__beside_the_output() -> None:
    assert truth_path("/data/run.parquet") == Path("/data/run.parquet.truth.json")


def test_load_truth__names_the_file_when_it_is_not_truth(tmp_path: Path) -> None:
    bad = tmp_path / "x.truth.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"x\.truth\.json: not valid JSON \(line 1"):
        load_truth(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a simulator ground-truth file"):
        load_truth(bad)
    bad.write_text(json.dumps({"format": "finsecure.sim.truth/1", "campaigns": [{"campaign_id": "c1"}]}))
    with pytest.raises(ValueError, match="campaign #0 is malformed"):
        load_truth(bad)
