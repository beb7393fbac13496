"""``finsecure models`` and ``finsecure evaluate`` in-process, on a fresh SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from finsecure.cli import app
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.core.settings import get_settings
from finsecure.lake.writer import LakeWriter
from finsecure.ml import registry
from finsecure.ml.bootstrap import register_tier
from finsecure.ml.train import FittedTier
from tests.conftest import TEST_JWT_SECRET

runner = CliRunner()


@pytest.fixture
def registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tier: FittedTier, payments: tuple[pl.DataFrame, ...]
) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("FINSECURE_ENV", "test")
    monkeypatch.setenv("FINSECURE_JWT_SECRET", TEST_JWT_SECRET)
    monkeypatch.setenv("FINSECURE_DATABASE_URL", url)
    monkeypatch.setenv("FINSECURE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FINSECURE_DATASETS", str(tmp_path / "no-datasets"))
    get_settings.cache_clear()
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    with make_session_factory(engine)() as session, session.begin():
        for _ in range(2):
            register_tier(
                db_session=session,
                data_dir=tmp_path,
                tier=tier,
                validation=payments[1],
                dataset="t",
                promote=False,
            )
    yield url
    engine.dispose()
    get_settings.cache_clear()


def _production(url: str) -> dict[str, int]:
    engine = create_db_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return {r.name: r.version for r in registry.production(db_session=session)}
    finally:
        engine.dispose()


def test_models_cli__list_promote_rollback(registered: str) -> None:
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert "payment_gbdt" in listed.output
    assert "candidate" in listed.output
    for version in ("1", "2"):
        result = runner.invoke(app, ["models", "promote", "payment_gbdt", version])
        assert result.exit_code == 0, result.output
    assert _production(registered) == {"payment_gbdt": 2}
    result = runner.invoke(app, ["models", "rollback", "payment_gbdt"])
    assert result.exit_code == 0, result.output
    assert "rolled back to v1" in result.output
    assert _production(registered) == {"payment_gbdt": 1}


def test_models_cli__unknown_model_fails(registered: str) -> None:
    result = runner.invoke(app, ["models", "promote", "payment_nothing", "1"])
    assert result.exit_code == 1
    assert "no model" in result.output


def test_evaluate_cli__refuses_unknown_datasets_and_says_where_data_is_missing(registered: str) -> None:
    assert runner.invoke(app, ["evaluate", "--dataset", "mnist"]).exit_code == 2
    result = runner.invoke(app, ["evaluate", "--dataset", "sparkov"])
    assert result.exit_code == 1
    assert "FINSECURE_DATASETS" in result.output


def test_evaluate_cli__rate_is_for_the_simulated_replay_only(registered: str) -> None:
    result = runner.invoke(app, ["evaluate", "--dataset", "sparkov", "--rate", "5000"])
    assert result.exit_code == 1
    assert "only to --dataset simulated" in result.output
    assert runner.invoke(app, ["evaluate", "--dataset", "simulated", "--rate", "0"]).exit_code == 2


def test_evaluate_cli__passes_the_rate_to_the_simulated_replay(
    registered: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import finsecure.sim.evaluate as sim_evaluate

    seen: dict[str, object] = {}

    def fake_evaluate(settings: object, out: Path, **kwargs: object) -> dict[str, object]:
        seen.update(kwargs, out=out)
        return {}

    monkeypatch.setattr(sim_evaluate, "evaluate_simulated", fake_evaluate)
    monkeypatch.setattr(sim_evaluate, "markdown_summary", lambda report: "summary")
    out = tmp_path / "r.json"
    args = ["evaluate", "--dataset", "simulated", "--rate", "5000", "--seed", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen == {"seed": 2, "rate": 5000.0, "out": out}


def test_train_cli__fits_on_the_lake_with_its_labels(
    registered: str, payments: tuple[pl.DataFrame, ...]
) -> None:
    with LakeWriter(get_settings().lake_dir) as writer:
        writer.write("payment", payments[0])
    result = runner.invoke(app, ["train", "--dataset", "lake", "--domain", "payment", "--model", "gbdt"])
    assert result.exit_code == 0, result.output
    assert "registered payment_gbdt v3" in result.output


def test_models_cli__add_deep_registers_and_promotes_a_sequence_model(
    registered: str, tmp_path: Path
) -> None:
    import json

    from finsecure.features.history import HistorySpec
    from finsecure.ml.deep import train_sequence_model
    from tests.ml.nn.test_deep import _payments

    frame = _payments(160, cards=8)
    spec = HistorySpec(key="card_id", features=("amount",), steps=3)
    rows = np.arange(frame.height) < 120
    result = train_sequence_model(
        "lstm", frame, {"train": rows}, domain="payment", history=spec, epochs=1, hidden=4, threads=1
    )
    result.model.export_onnx(tmp_path / "lstm-cards.onnx")
    (tmp_path / "lstm-cards.json").write_text(json.dumps(result.metadata(), default=float))
    added = runner.invoke(app, ["models", "add-deep", str(tmp_path / "lstm-cards.onnx"), "--promote"])
    assert added.exit_code == 0, added.output
    assert "registered lstm-cards v1 (production)" in added.output
    assert _production(registered)["lstm-cards"] == 1
    listed = runner.invoke(app, ["models", "list"])
    assert "lstm-cards" in listed.output
    missing = runner.invoke(app, ["models", "add-deep", str(tmp_path / "nothing.onnx")])
    assert missing.exit_code == 1
    assert "not the metadata of a deep model" in " ".join(missing.output.split())
