from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.event.schemas import Domain
from finsecure.ml import registry
from finsecure.ml.bootstrap import ensure_models
from finsecure.ml.step import ScoringStep, registry_resolver
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.testing import sample_frame


@pytest.mark.slow
def test_ensure_models__trains_and_promotes_once_then_the_step_scores(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(engine)
    factory = make_session_factory(engine)
    rows = ensure_models(factory, tmp_path, customers=1_000, hours=4.0, kinds=("gbdt",))
    try:
        assert rows, "a simulated day has labelled events in at least one domain"
        assert ensure_models(factory, tmp_path, customers=1_000, hours=4.0) == []
        with factory() as session:
            served = registry.production(db_session=session)
        assert {r.name for r in served} == {r.name for r in rows}
        domain = Domain(served[0].domain)
        step = ScoringStep(registry_resolver(factory))
        frame = sample_frame(domain, 50)
        from finsecure.features import FeatureStep

        featured = FeatureStep(threads=1).process(Batch(domain, frame, source="t")).frame
        out = step.process(Batch(domain, featured, source="t")).frame
        assert out["score"].is_between(0.0, 1.0).all()
        assert isinstance(out["model_name"][0], str)
        assert out.height == frame.height
        assert pl.Series(out.columns[: frame.width]).to_list() == frame.columns
    finally:
        engine.dispose()


def test_ensure_models__a_busy_database_means_try_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from finsecure.ml import bootstrap

    engine = create_db_engine(f"sqlite:///{tmp_path / 'busy.db'}")
    try:
        migrate.upgrade(engine)
        calls: list[int] = []
        sleeps: list[float] = []

        def flaky_register(**_: object) -> list[object]:
            calls.append(1)
            if len(calls) < 3:
                raise OperationalError("INSERT INTO models", {}, Exception("database is locked"))
            return ["registered"]

        monkeypatch.setattr(bootstrap, "fit_simulated", lambda **_: iter([("tier", "validation")]))
        monkeypatch.setattr(bootstrap, "register_tier", flaky_register)
        monkeypatch.setattr(bootstrap.time, "sleep", sleeps.append)

        rows = ensure_models(make_session_factory(engine), tmp_path)

        assert rows == ["registered"]
        assert len(calls) == 3
        assert sleeps == [2.0, 4.0]
    finally:
        engine.dispose()
