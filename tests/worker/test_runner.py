"""Workers sharing a state directory: equal shares, hand-over when one joins, take-over when one leaves."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from finsecure.bus import make_bus
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.worker.runner import Worker, WorkerOptions


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    migrate.upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def test_rebalance__workers_share_partitions_and_take_over_a_leaver(
    tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    bus_url = f"memory://{secrets.token_hex(4)}"

    def worker() -> Worker:
        return Worker(
            bus=make_bus(bus_url),
            partitions=range(4),
            state_dir=tmp_path / "state",
            lake_dir=tmp_path / "lake",
            session_factory=session_factory,
            rules=(),
            steps_factory=lambda on_hits: [],
            options=WorkerOptions(commit_every_s=0.1),
        )

    first = worker().start()
    second: Worker | None = None
    try:
        assert sorted(first.runners) == [0, 1, 2, 3]
        second = worker().start()  # joins: nothing is free yet, so it waits for the hand-over
        assert second.runners == {}
        first.rebalance()  # sees two members: keeps half, commits and releases the rest
        second.rebalance()
        assert sorted(first.runners) == [0, 1]
        assert sorted(second.runners) == [2, 3]
        second.stop()  # leaves (a dead one would simply stop touching its member file)
        second = None
        first.rebalance()
        assert sorted(first.runners) == [0, 1, 2, 3]
    finally:
        if second is not None:
            second.stop()
        first.stop()
