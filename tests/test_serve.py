"""`finsecure serve` as `make run` starts it: a real process, a real socket, embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a localhost URL we built
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve__fresh_data_dir_answers_health_and_sign_in(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSECURE_")}
    env.update(
        FINSECURE_ENV="development",
        FINSECURE_DATA_DIR=str(tmp_path / "var"),
        FINSECURE_ADMIN_PASSWORD="serve-test-admin-password",
        FINSECURE_ARGON2_TIME_COST="1",
        FINSECURE_ARGON2_MEMORY_KIB="64",
        FINSECURE_DEMO_RATE="500",
        FINSECURE_DEMO_CUSTOMERS="5000",
    )
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "finsecure", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        status, body = 0, {}
        while time.monotonic() < deadline:
            try:
                status, body = _get(f"{base}/api/health")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                # not listening yet, or busy starting up (first-batch compilation, first model training)
                assert proc.poll() is None, proc.communicate()[0]
                time.sleep(0.2)
        assert status == 200, body
        assert body["status"] == "ok"
        assert (tmp_path / "var" / "finsecure.db").exists(), "SQLite must live under the data dir"

        form = urllib.parse.urlencode({"username": "admin", "password": "serve-test-admin-password"}).encode()
        request = urllib.request.Request(f"{base}/api/auth/token", data=form, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
            tokens = json.loads(response.read())
        assert tokens["token_type"] == "bearer"
        assert tokens["access_token"]

        # The live demo stream: events of every domain become searchable within 60 s of start-up.
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        missing = {"network", "cloud", "auth", "payment"}
        deadline = time.monotonic() + 60
        while missing and time.monotonic() < deadline:
            for domain in sorted(missing):
                search = urllib.request.Request(  # noqa: S310 - a localhost URL we built
                    f"{base}/api/events/search?domain={domain}&size=1", headers=headers
                )
                with urllib.request.urlopen(search, timeout=15) as response:  # noqa: S310
                    if json.loads(response.read())["items"]:
                        missing.discard(domain)
            time.sleep(0.5)
        assert not missing, f"no live events for {sorted(missing)} within 60 s"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    assert "First admin admin created" in output
    assert "serve-test-admin-password" not in output, "secrets must never be printed or logged"
    assert proc.returncode == 0, output
