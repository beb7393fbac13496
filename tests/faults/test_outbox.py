"""DbOutbox bounds and order, with a writer that raises SQLAlchemy's own errors on demand (the real
database outage is in test_database_outage.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import exc as sa_exc

from finsecure.system.outbox import DbOutbox, OutboxFull, is_db_unavailable


@dataclass
class Table:
    """Stands in for a table: keeps what it was given, or raises while ``down`` / for refused values."""

    down: bool = False
    refuse: int | None = None
    rows: list[int] = field(default_factory=list)

    def write(self, frame: pl.DataFrame) -> None:
        if self.down:
            raise sa_exc.OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))
        if self.refuse is not None and self.refuse in frame["n"].to_list():
            raise sa_exc.IntegrityError("INSERT", {}, ValueError("duplicate key"))
        self.rows.extend(frame["n"].to_list())


def _frame(start: int, n: int = 4) -> pl.DataFrame:
    return pl.DataFrame({"n": list(range(start, start + n)), "text": [f"row {i}" for i in range(n)]})


def test_is_db_unavailable__connection_errors_only() -> None:
    assert is_db_unavailable(sa_exc.OperationalError("x", {}, OSError()))
    assert is_db_unavailable(sa_exc.InterfaceError("x", {}, OSError()))
    assert is_db_unavailable(sa_exc.TimeoutError())
    assert not is_db_unavailable(sa_exc.IntegrityError("x", {}, ValueError()))
    assert not is_db_unavailable(sa_exc.DataError("x", {}, ValueError()))
    assert not is_db_unavailable(ValueError())


def test_submit__spills_past_the_memory_bound_and_keeps_the_order(tmp_path: Path) -> None:
    table = Table(down=True)
    outbox = DbOutbox(tmp_path, max_memory_rows=5)
    outbox.register("t", table.write)
    assert outbox.submit("t", _frame(0)) is False
    assert outbox.submit("t", _frame(4)) is False
    assert outbox.submit("t", _frame(8)) is False
    status = outbox.status()
    assert (status.state, status.pending_rows, status.spilled_files) == ("degraded", 12, 2)
    assert len(list(tmp_path.glob("*.t.arrow"))) == 2
    assert outbox.drain(timeout=0) is False
    table.down = False
    assert outbox.drain(timeout=5) is True
    assert table.rows == list(range(12))
    assert not list(tmp_path.glob("*.arrow"))
    assert outbox.status().state == "ok"
    assert outbox.status().delivered_rows == 12
    assert outbox.submit("t", _frame(12)) is True  # straight through again


def test_submit__refuses_past_the_disk_bound(tmp_path: Path) -> None:
    table = Table(down=True)
    outbox = DbOutbox(tmp_path, max_memory_rows=0, max_spill_bytes=10)
    outbox.register("t", table.write)
    with pytest.raises(OutboxFull, match="this write of 4 row"):
        outbox.submit("t", _frame(0))


def test_drain__a_refused_write_is_kept_aside_and_the_rest_goes_on(tmp_path: Path) -> None:
    table = Table(down=True, refuse=5)
    outbox = DbOutbox(tmp_path)
    outbox.register("t", table.write)
    for start in (0, 4, 8):
        outbox.submit("t", _frame(start))
    table.down = False
    assert outbox.drain(timeout=5)
    assert table.rows == [0, 1, 2, 3, 8, 9, 10, 11]
    [kept] = list((tmp_path / "failed").glob("*.t.arrow"))
    assert pl.read_ipc(kept)["n"].to_list() == [4, 5, 6, 7]
    status = outbox.status()
    assert (status.state, status.failed_rows, status.delivered_rows) == ("ok", 4, 8)
    assert "refused are kept for review" in status.detail
    # refused when written straight away: the caller hears of it, nothing is kept
    with pytest.raises(sa_exc.IntegrityError):
        outbox.submit("t", _frame(5))


def test_close__what_waits_survives_a_restart(tmp_path: Path) -> None:
    table = Table(down=True)
    first = DbOutbox(tmp_path, retry_s=0.05).start()
    first.register("t", table.write)
    first.submit("t", _frame(0))
    first.submit("t", _frame(4))
    assert first.close(timeout=0.2) is False
    assert len(list(tmp_path.glob("*.t.arrow"))) == 2
    table.down = False
    second = DbOutbox(tmp_path, retry_s=0.05)
    second.register("t", table.write)
    second.submit("t", _frame(100))  # submitted before start: queued behind nothing yet, written now
    with second:
        assert second.drain(timeout=5)
    assert table.rows == [100, 101, 102, 103, 0, 1, 2, 3, 4, 5, 6, 7]
    assert not list(tmp_path.glob("*.arrow"))


def test_start__files_of_unknown_kinds_are_left_alone(tmp_path: Path) -> None:
    _frame(0).write_ipc(tmp_path / "000000000001.other.arrow")
    table = Table()
    with DbOutbox(tmp_path) as outbox:
        outbox.register("t", table.write)
        assert outbox.status().pending_rows == 0
    assert (tmp_path / "000000000001.other.arrow").exists()


def test_submit__a_new_process_never_overwrites_files_left_by_the_last(tmp_path: Path) -> None:
    table = Table(down=True)
    first = DbOutbox(tmp_path, max_memory_rows=0)
    first.register("t", table.write)
    first.submit("t", _frame(0))
    second = DbOutbox(tmp_path, max_memory_rows=0)  # before the first one's files are picked up
    second.register("t", table.write)
    second.submit("t", _frame(4))
    assert len(list(tmp_path.glob("*.t.arrow"))) == 2
    table.down = False
    with second:
        assert second.drain(timeout=5)
    assert table.rows == list(range(8))
