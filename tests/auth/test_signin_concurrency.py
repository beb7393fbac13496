"""Sign-in on the embedded SQLite database while another connection commits (the live pipeline does,
many times a second): reading the user, checking the hash, then writing must not fail as 'locked'."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text

from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.models import Role
from finsecure.auth.schemas import UserCreate
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory, session_scope
from finsecure.core.ratelimit import InMemoryRateLimiter
from finsecure.core.security import Passwords
from finsecure.core.settings import Settings
from tests.conftest import TEST_PASSWORD, make_settings


class _CommitDuringVerify(Passwords):
    """Passwords whose check lets another connection commit while it runs (as argon2's second does)."""

    def __init__(self, settings: Settings, *, other_write: threading.Thread) -> None:
        super().__init__(settings)
        self.other_write = other_write

    def verify(self, password_hash: str | None, password: str) -> bool:
        self.other_write.start()
        self.other_write.join(10)
        return super().verify(password_hash, password)


def test_authenticate__survives_a_commit_during_the_hash_check(tmp_path: Path) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'signin.db'}")
    engine = create_db_engine(settings.resolved_database_url)
    try:
        migrate.upgrade(engine)
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            auth_service.create(
                db_session=session,
                passwords=Passwords(settings),
                user_in=UserCreate(username="ana", password=TEST_PASSWORD, role=Role.analyst),
                actor=Actor(label="test"),
            )
        errors: list[BaseException] = []

        def pipeline_commit() -> None:
            try:
                with session_scope(factory) as other:
                    other.execute(text("UPDATE users SET full_name = 'elsewhere' WHERE username = 'ana'"))
            except BaseException as exc:  # pragma: no cover - asserted below
                errors.append(exc)

        passwords = _CommitDuringVerify(settings, other_write=threading.Thread(target=pipeline_commit))
        with session_scope(factory) as session:
            user = auth_service.authenticate(
                db_session=session,
                settings=settings,
                passwords=passwords,
                limiter=InMemoryRateLimiter(),
                username="ana",
                password=TEST_PASSWORD,
                ip="127.0.0.1",
            )

        assert not errors
        assert user.username == "ana"
        assert user.last_login_at is not None
    finally:
        engine.dispose()
