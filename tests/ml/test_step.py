from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sqlalchemy.orm import Session

from finsecure.event.schemas import Domain
from finsecure.ml import registry
from finsecure.ml.bootstrap import register_tier
from finsecure.ml.step import ScoringStep
from finsecure.ml.train import FittedTier
from finsecure.pipeline.batch import Batch


@pytest.fixture
def artefacts(
    db_session: Session, tmp_path: Path, tier: FittedTier, payments: tuple[pl.DataFrame, ...]
) -> dict[str, Path]:
    rows = register_tier(
        db_session=db_session, data_dir=tmp_path, tier=tier, validation=payments[1], dataset="t", promote=True
    )
    return {r.name: Path(r.artefact_path) for r in rows}


def test_scoring_step__scores_with_the_ensemble_and_explains_flagged_rows(
    artefacts: dict[str, Path], tier: FittedTier, payments: tuple[pl.DataFrame, ...]
) -> None:
    test = payments[2]
    step = ScoringStep(lambda: list(artefacts.values()))
    out = step.process(Batch(Domain.payment, test, source="t")).frame
    expected = tier.score(test)
    np.testing.assert_allclose(out["score"].to_numpy(), expected["ensemble"], atol=1e-5)
    np.testing.assert_allclose(out["score__payment_gbdt"].to_numpy(), expected["gbdt"], atol=1e-5)
    assert out["score__payment_fraud"].to_list() == out["score"].to_list()
    assert set(out["model_name"].unique()) == {"payment_ensemble"}
    flagged = out.filter(pl.col("score") >= tier.thresholds["ensemble"])
    assert flagged.height > 0
    assert flagged["explanation"].null_count() == 0
    assert "payment" in flagged["explanation"][0]
    assert out.filter(pl.col("score") < tier.thresholds["ensemble"])["explanation"].null_count() > 0
    assert out.columns[: test.width] == test.columns


def test_scoring_step__other_domains_pass_through(artefacts: dict[str, Path]) -> None:
    frame = pl.DataFrame({"event_id": ["a"], "user_id": ["u"]})
    batch = Batch(Domain.auth, frame, source="t")
    assert ScoringStep(lambda: list(artefacts.values())).process(batch) is batch


def test_scoring_step__hot_reloads_a_promoted_version_between_batches(
    db_session: Session,
    tmp_path: Path,
    artefacts: dict[str, Path],
    tier: FittedTier,
    payments: tuple[pl.DataFrame, ...],
) -> None:
    served = [artefacts["payment_gbdt"]]
    step = ScoringStep(lambda: list(served), reload_interval_s=0.0)
    batch = Batch(Domain.payment, payments[2], source="t")
    first = step.process(batch).frame
    assert set(first["model_version"].unique()) == {1}
    newer = registry.register(
        db_session=db_session, data_dir=tmp_path, name="payment_gbdt", model=tier.members["gbdt"],
        design=tier.design, data_fingerprint="x", metrics={}, threshold=0.5, dataset="t",
    )  # fmt: skip
    served[:] = [Path(newer.artefact_path)]
    second = step.process(batch).frame
    assert set(second["model_version"].unique()) == {2}
    assert second.height == first.height
    assert step.reloads == 2


def test_scoring_step__keeps_the_old_model_when_the_new_one_is_broken(
    db_session: Session,
    tmp_path: Path,
    artefacts: dict[str, Path],
    tier: FittedTier,
    payments: tuple[pl.DataFrame, ...],
) -> None:
    served = [artefacts["payment_gbdt"]]
    step = ScoringStep(lambda: list(served), reload_interval_s=0.0)
    batch = Batch(Domain.payment, payments[2], source="t")
    step.process(batch)
    broken = registry.register(
        db_session=db_session, data_dir=tmp_path, name="payment_gbdt", model=tier.members["gbdt"],
        design=tier.design, data_fingerprint="x", metrics={}, threshold=0.5, dataset="t",
    )  # fmt: skip
    (Path(broken.artefact_path) / "model.onnx").write_bytes(b"\x00broken")
    served[:] = [Path(broken.artefact_path)]
    out = step.process(batch).frame
    assert set(out["model_version"].unique()) == {1}
    assert step.load_errors == 1


def test_scoring_step__survives_an_unreachable_registry(
    artefacts: dict[str, Path], payments: tuple[pl.DataFrame, ...]
) -> None:
    calls = {"n": 0}

    def resolver() -> list[Path]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("database down")
        return [artefacts["payment_gbdt"]]

    step = ScoringStep(resolver, reload_interval_s=0.0)
    batch = Batch(Domain.payment, payments[2], source="t")
    step.process(batch)
    out = step.process(batch).frame
    assert out["score"].null_count() == 0


def test_scoring_step__names_feature_reasons_for_the_top_rows_only(
    artefacts: dict[str, Path], tier: FittedTier, payments: tuple[pl.DataFrame, ...]
) -> None:
    step = ScoringStep(lambda: list(artefacts.values()), explain_max_rows=1)
    out = step.process(Batch(Domain.payment, payments[2], source="t")).frame
    explained = out.filter(pl.col("explanation").is_not_null())
    assert explained.height > 1
    with_reasons = explained.filter(pl.col("explanation").str.contains("Main reasons"))
    assert with_reasons.height == 1
    assert with_reasons["score__payment_gbdt"][0] == explained["score__payment_gbdt"].max()


def test_scoring_step__reports_drift_of_inputs_and_scores(
    artefacts: dict[str, Path], payments: tuple[pl.DataFrame, ...]
) -> None:
    reported: list[tuple[str, int, str, float]] = []
    served = [artefacts["payment_gbdt"]]
    step = ScoringStep(lambda: served, on_drift=reported.extend, drift_interval_s=3600.0, drift_sample=5000)
    step.process(Batch(Domain.payment, payments[2], source="t"))
    same = {(f, round(v, 3)) for n, _, f, v in step.report_drift() if n == "payment_gbdt"}
    assert dict(same)["score"] < 0.1, "test rows come from the validation rows' distribution"
    shifted = payments[2].with_columns(pl.col("amount") * 50)
    step.process(Batch(Domain.payment, shifted, source="t"))
    moved = {f: v for n, _, f, v in step.report_drift() if n == "payment_gbdt"}
    assert moved["amount"] > 1.0
    assert moved["amount"] > dict(same)["amount"]
    assert len(reported) == len(same) + len(moved)
