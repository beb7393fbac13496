"""Database layer: UTC timestamps on both backends, constraint naming, SQLite pragmas and savepoints."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import (
    CheckConstraint,
    Engine,
    ForeignKeyConstraint,
    PrimaryKeyConstraint,
    UniqueConstraint,
    bindparam,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

import finsecure.core.models as all_models
from finsecure.audit.models import AuditEntry
from finsecure.auth.models import ApiKey, Role, User
from finsecure.core.database import (
    NAMING_CONVENTION,
    Base,
    UtcDateTime,
    create_db_engine,
    make_session_factory,
    ping,
    session_scope,
    utcnow,
)
from finsecure.system.models import SystemMetric

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
NEW_YORK_WINTER = dt.timezone(dt.timedelta(hours=-5))


def _reload_metric(db_session: Session, metric: SystemMetric) -> SystemMetric:
    """Flush, forget the identity map and read the row back from the database."""
    db_session.add(metric)
    db_session.flush()
    metric_id = metric.id
    db_session.expunge_all()
    loaded = db_session.scalars(select(SystemMetric).where(SystemMetric.id == metric_id)).one()
    assert loaded is not metric
    return loaded


# --- UtcDateTime --------------------------------------------------------------------------------------


def test_utc_datetime__round_trips_aware_utc(db_session: Session) -> None:
    ts = dt.datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=dt.UTC)
    loaded = _reload_metric(db_session, SystemMetric(ts=ts, name="lag", value=1.5, labels={"k": "v"}))
    assert loaded.ts == ts
    assert loaded.ts.tzinfo is dt.UTC
    assert loaded.ts.microsecond == 535897
    assert loaded.labels == {"k": "v"}


@pytest.mark.parametrize("tz", [IST, NEW_YORK_WINTER], ids=["plus0530", "minus0500"])
def test_utc_datetime__non_utc_offset_comes_back_as_same_instant_in_utc(
    db_session: Session, tz: dt.timezone
) -> None:
    ts = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)
    loaded = _reload_metric(db_session, SystemMetric(ts=ts, name="lag", value=1.0, labels={}))
    assert loaded.ts == ts  # same instant
    assert loaded.ts.tzinfo is dt.UTC
    assert loaded.ts.replace(tzinfo=None) == ts.astimezone(dt.UTC).replace(tzinfo=None)


def test_utc_datetime__stored_as_utc_on_the_backend(db_session: Session) -> None:
    ts = dt.datetime(2026, 6, 1, 12, 0, tzinfo=IST)  # 06:30 UTC
    metric = SystemMetric(ts=ts, name="stored", value=0.0, labels={})
    db_session.add(metric)
    db_session.flush()
    if db_session.get_bind().dialect.name == "sqlite":
        raw = db_session.execute(text("SELECT ts FROM system_metrics WHERE id = :id"), {"id": metric.id})
        assert str(raw.scalar_one()).startswith("2026-06-01 06:30:00")
    else:
        hour = db_session.execute(
            text("SELECT EXTRACT(HOUR FROM ts AT TIME ZONE 'UTC') FROM system_metrics WHERE id = :id"),
            {"id": metric.id},
        ).scalar_one()
        assert int(hour) == 6


def test_utc_datetime__session_time_zone_does_not_leak(db_session: Session) -> None:
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("only PostgreSQL has a session time zone")
    ts = dt.datetime(2026, 7, 4, 23, 30, tzinfo=dt.UTC)
    db_session.execute(text("SET LOCAL TIME ZONE 'Asia/Tokyo'"))
    loaded = _reload_metric(db_session, SystemMetric(ts=ts, name="tz", value=0.0, labels={}))
    assert loaded.ts == ts
    assert loaded.ts.tzinfo is dt.UTC
    assert (loaded.ts.day, loaded.ts.hour) == (4, 23)


def test_utc_datetime__filters_compare_instants(db_session: Session) -> None:
    base = dt.datetime(2026, 2, 1, 0, 0, tzinfo=dt.UTC)
    for minutes in (0, 10, 20):
        db_session.add(
            SystemMetric(ts=base + dt.timedelta(minutes=minutes), name="cmp", value=0.0, labels={})
        )
    db_session.flush()
    # 05:40 in +05:30 is 00:10 UTC: only the 00:10 and 00:20 rows are at or after it.
    since = dt.datetime(2026, 2, 1, 5, 40, tzinfo=IST)
    rows = db_session.scalars(
        select(SystemMetric.ts).where(SystemMetric.name == "cmp", SystemMetric.ts >= since)
    )
    assert sorted(rows) == [base + dt.timedelta(minutes=10), base + dt.timedelta(minutes=20)]


def test_utc_datetime__none_round_trips(db_session: Session) -> None:
    user = User(username="nulls", password_hash="x", role=Role.viewer, last_login_at=None)
    db_session.add(user)
    db_session.flush()
    db_session.expunge_all()
    loaded = db_session.scalars(select(User).where(User.username == "nulls")).one()
    assert loaded.last_login_at is None
    assert loaded.created_at.tzinfo is dt.UTC


def test_utc_datetime__naive_refused_on_insert(db_session: Session) -> None:
    db_session.add(SystemMetric(ts=dt.datetime(2026, 1, 1, 12, 0), name="naive", value=0.0, labels={}))
    with pytest.raises(StatementError, match="naive datetime") as excinfo:
        db_session.flush()
    assert isinstance(excinfo.value.orig, ValueError)
    db_session.rollback()


def test_utc_datetime__naive_refused_in_query(db_session: Session) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        db_session.execute(select(AuditEntry).where(AuditEntry.ts > dt.datetime(2026, 1, 1)))


def test_utc_datetime__process_bind_param_per_dialect() -> None:
    sqlite_engine = create_db_engine("sqlite://")
    pg_engine = create_db_engine("postgresql+psycopg://u@127.0.0.1:1/x")  # never connects
    pg_dialect = pg_engine.dialect
    try:
        column_type = UtcDateTime()
        ts = dt.datetime(2026, 1, 1, 12, 0, tzinfo=IST)
        assert column_type.process_bind_param(ts, sqlite_engine.dialect) == dt.datetime(2026, 1, 1, 6, 30)
        as_pg = column_type.process_bind_param(ts, pg_dialect)
        assert as_pg == ts
        assert as_pg is not None
        assert as_pg.tzinfo is dt.UTC
        assert column_type.process_bind_param(None, sqlite_engine.dialect) is None
        assert column_type.process_result_value(None, pg_dialect) is None
    finally:
        sqlite_engine.dispose()
        pg_engine.dispose()


def test_utcnow__aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is dt.UTC
    assert abs((dt.datetime.now(dt.UTC) - now).total_seconds()) < 5


# --- naming convention ------------------------------------------------------------------------------


def test_metadata__named_constraints_of_users() -> None:
    users = Base.metadata.tables["users"]
    names = {type(c).__name__: c.name for c in users.constraints}
    assert users.primary_key.name == "pk_users"
    assert names["UniqueConstraint"] == "uq_users_username"
    assert names["CheckConstraint"] == "ck_users_role"


def test_metadata__well_known_names() -> None:
    tables = Base.metadata.tables
    fk_names = {c.name for c in tables["api_keys"].constraints if isinstance(c, ForeignKeyConstraint)}
    assert fk_names == {"fk_api_keys_owner_id_users"}
    assert {i.name for i in tables["audit_log"].indexes} == {
        "ix_audit_log_ts",
        "ix_audit_log_action",
        "ix_audit_log_target_type_target_id",
    }
    assert {i.name for i in tables["refresh_tokens"].indexes} == {
        "ix_refresh_tokens_family",
        "ix_refresh_tokens_user_id",
    }


def test_metadata__every_constraint_and_index_follows_naming_convention() -> None:
    assert Base.metadata is all_models.metadata
    assert len(Base.metadata.tables) >= 10
    for table in Base.metadata.tables.values():
        for constraint in table.constraints:
            cols = [c.name for c in constraint.columns]
            if isinstance(constraint, PrimaryKeyConstraint):
                expected = NAMING_CONVENTION["pk"] % {"table_name": table.name}
                assert constraint.name == expected
            elif isinstance(constraint, UniqueConstraint):
                assert constraint.name == f"uq_{table.name}_{'_'.join(cols)}"
            elif isinstance(constraint, ForeignKeyConstraint):
                referred = constraint.referred_table.name
                assert constraint.name == f"fk_{table.name}_{cols[0]}_{referred}"
            elif isinstance(constraint, CheckConstraint):
                assert str(constraint.name).startswith(f"ck_{table.name}_"), constraint.name
            else:  # pragma: no cover - a new kind of constraint should get a rule here
                pytest.fail(f"unexpected constraint {constraint!r} on {table.name}")
        for index in table.indexes:
            assert index.name == f"ix_{table.name}_{'_'.join(c.name for c in index.columns)}"


def test_metadata__migrated_database_uses_the_same_names(db_engine: Engine) -> None:
    inspector = inspect(db_engine)
    assert inspector.get_pk_constraint("users")["name"] == "pk_users"
    assert {u["name"] for u in inspector.get_unique_constraints("users")} == {"uq_users_username"}
    assert "ck_users_role" in {c["name"] for c in inspector.get_check_constraints("users")}
    assert {fk["name"] for fk in inspector.get_foreign_keys("api_keys")} == {"fk_api_keys_owner_id_users"}
    assert "ix_audit_log_target_type_target_id" in {i["name"] for i in inspector.get_indexes("audit_log")}


# --- integrity on both backends ---------------------------------------------------------------------


_INSERT_USER = text(
    "INSERT INTO users (username, full_name, role, password_hash, disabled, must_change_password, "
    "created_at, updated_at) VALUES (:username, '', :role, 'x', false, false, :ts, :ts)"
).bindparams(bindparam("ts", type_=UtcDateTime()))


def test_sqlite__foreign_keys_pragma_on(db_session: Session) -> None:
    if db_session.get_bind().dialect.name != "sqlite":
        pytest.skip("a SQLite pragma")
    assert db_session.execute(text("PRAGMA foreign_keys")).scalar_one() == 1


def test_sqlite__pragmas_of_a_new_engine(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'p.db'}")
    try:
        assert (tmp_path / "nested" / "dir").is_dir()  # parent directories are created
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 5000
    finally:
        engine.dispose()


def test_foreign_key__enforced(db_session: Session) -> None:
    savepoint = db_session.begin_nested()
    db_session.add(ApiKey(name="k", prefix="abcdefabcdef", key_hash="h", scopes=[], owner_id=987_654_321))
    with pytest.raises(IntegrityError):
        db_session.flush()
    savepoint.rollback()
    assert db_session.scalar(select(ApiKey).where(ApiKey.prefix == "abcdefabcdef")) is None


def test_check_constraint__rejects_invalid_enum_value_from_raw_sql(db_session: Session) -> None:
    now = utcnow()
    # The same statement with a valid role works, so the failure below is the CHECK constraint's.
    db_session.execute(_INSERT_USER, {"username": "raw_ok", "role": "analyst", "ts": now})
    assert db_session.scalar(select(User.role).where(User.username == "raw_ok")) is Role.analyst
    with pytest.raises(IntegrityError, match=r"(?i)check|ck_users_role"), db_session.begin_nested():
        db_session.execute(_INSERT_USER, {"username": "raw_bad", "role": "superuser", "ts": now})
    assert db_session.scalar(select(User.id).where(User.username == "raw_bad")) is None
    assert db_session.scalar(select(User.id).where(User.username == "raw_ok")) is not None


def test_unique_constraint__enforced(db_session: Session) -> None:
    db_session.add(User(username="twice", password_hash="x"))
    db_session.flush()
    savepoint = db_session.begin_nested()
    db_session.add(User(username="twice", password_hash="y"))
    with pytest.raises(IntegrityError, match=r"(?i)unique|uq_users_username"):
        db_session.flush()
    savepoint.rollback()
    assert db_session.scalar(select(func.count()).where(User.username == "twice")) == 1


# --- transactions -----------------------------------------------------------------------------------


def test_savepoint__rollback_keeps_outer_work(db_session: Session) -> None:
    db_session.add(User(username="outer", password_hash="x"))
    db_session.flush()
    nested = db_session.begin_nested()
    db_session.add(User(username="inner", password_hash="x"))
    db_session.flush()
    nested.rollback()
    names = set(db_session.scalars(select(User.username).where(User.username.in_(["outer", "inner"]))))
    assert names == {"outer"}


def test_savepoint__sqlite_nested_rollback_on_a_fresh_engine(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'sp.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (v INTEGER NOT NULL)")
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            session.execute(text("INSERT INTO t (v) VALUES (1)"))
            savepoint = session.begin_nested()
            session.execute(text("INSERT INTO t (v) VALUES (2)"))
            savepoint.rollback()
            inner_ok = session.begin_nested()
            session.execute(text("INSERT INTO t (v) VALUES (3)"))
            inner_ok.commit()
        with engine.connect() as conn:
            assert [r[0] for r in conn.exec_driver_sql("SELECT v FROM t ORDER BY v")] == [1, 3]
    finally:
        engine.dispose()


def test_session_scope__rolls_back_on_error(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'scope.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (v INTEGER NOT NULL)")
        factory = make_session_factory(engine)

        def failing_work() -> None:
            with session_scope(factory) as session:
                session.execute(text("INSERT INTO t (v) VALUES (1)"))
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            failing_work()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 0
    finally:
        engine.dispose()


def test_ping__answers_on_both_backends(db_engine: Engine) -> None:
    ping(db_engine)  # does not raise
