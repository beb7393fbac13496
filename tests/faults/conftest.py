"""A PostgreSQL server of the test's own (temporary data directory, free port) that a test may stop and
start again: the shared server on 5432 is never touched.

Needs the PostgreSQL server binaries (``initdb``, ``pg_ctl``). Without them the tests that use it are
skipped on a developer's machine and fail in CI (``CI=true`` or ``FINSECURE_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import services_required


def _binaries() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PgServer:
    """One throwaway PostgreSQL server; :meth:`stop` kills it like a crash, :meth:`start` recovers it."""

    bin_dir: Path
    data_dir: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(  # noqa: S603 - our own arguments, the server binaries found above
            [str(self.bin_dir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            timeout=60,
            user=self.user,
            cwd=self.data_dir,
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data_dir / "pg"), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} "
            # fsync off is safe here: the server is killed, never the machine. synchronous_commit stays on,
            # else a crash would lose commits the client was told had happened.
            "-c fsync=off -c full_page_writes=off"
        )
        log = str(self.data_dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data_dir / "pg"), "-l", log, "-w", "-o", options, "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir / "pg"), "-m", mode, "-w", "stop")


@pytest.fixture
def pg_server() -> Iterator[PgServer]:
    """A fresh server, running; stopped and deleted afterwards."""
    bin_dir = _binaries()
    if bin_dir is None:
        message = "the PostgreSQL server binaries (initdb, pg_ctl) are not installed"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)
    # initdb refuses to run as root: run the server as the postgres account then. The directory is not
    # under pytest's tmp_path, whose parents that account cannot enter.
    user = None
    data_dir = Path(tempfile.mkdtemp(prefix="finsecure-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(data_dir)
            pytest.skip("running as root and there is no postgres account to run the server as")
        os.chown(data_dir, account.pw_uid, account.pw_gid)
        user = "postgres"
    server = PgServer(bin_dir=bin_dir, data_dir=data_dir, port=_free_port(), user=user)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            server.stop("immediate")
        shutil.rmtree(data_dir, ignore_errors=True)
