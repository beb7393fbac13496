"""Serve the built dashboard (``frontend/dist``) at ``/``, with the single-page-app fallback.

A pure ASGI middleware, so that the application's own answers stay as they are: for a GET or HEAD, the
dashboard's pages (:data:`PAGES`, the routes of ``frontend/src/App.tsx``) get ``index.html``, so a reload
on ``/incidents/12`` opens that page; a file of the build is served as it is (hashed assets cached for a
year); anything else (``/api/...``, ``/ws``, ``/metrics``, unknown paths) goes to the application.
Without a build, the pages get a short page saying how to make one.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

#: Where ``scripts/frontend.sh build`` puts the dashboard (beside ``src/`` in the repository).
DIST_DIR = Path(__file__).resolve().parents[3] / "frontend" / "dist"

NO_BUILD_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FinSecure Nexus</title></head>
<body style="font-family: sans-serif; background: #0b1220; color: #e2e8f0; padding: 2rem">
<h1>FinSecure Nexus</h1>
<p>The dashboard has not been built yet. Run <code>scripts/frontend.sh build</code>
(or <code>make run</code>), then reload this page.</p>
<p>The API works already: see <a style="color:#7dd3fc" href="/api/docs">/api/docs</a>.</p>
</body></html>
"""


#: The dashboard's pages: each is served ``index.html`` (keep in step with ``frontend/src/App.tsx``).
PAGES: tuple[str, ...] = ("/", "/incidents", "/alerts", "/map", "/graph", "/rules", "/models", "/system")


def is_page(path: str) -> bool:
    """Whether ``path`` is one of the dashboard's pages (or below one, like ``/incidents/12``).

    >>> [is_page(p) for p in ("/", "/incidents/12", "/map", "/mapping", "/api/alerts", "/redoc")]
    [True, True, True, False, False, False]
    """
    if path in ("", "/"):
        return True
    return any(path == page or path.startswith(page + "/") for page in PAGES if page != "/")


def resolve(dist: Path, path: str) -> Path | None:
    """The file under ``dist`` for a URL path, or ``None`` (never a file outside ``dist``).

    >>> resolve(Path("/nonexistent"), "../etc/passwd") is None
    True
    """
    root = dist.resolve()
    candidate = (root / path.lstrip("/")).resolve()
    if candidate == root or root not in candidate.parents:
        return None
    return candidate if candidate.is_file() else None


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


class DashboardMiddleware:
    """Serve the dashboard's files, and its ``index.html`` where the application has nothing.

    The directory is read from ``app.state.dashboard_dir`` at each request (tests point it elsewhere).
    """

    def __init__(self, app: ASGIApp, *, dist: Path = DIST_DIR) -> None:
        self.app = app
        self.dist = dist

    def _directory(self, scope: Scope) -> Path:
        app = scope.get("app")
        state = getattr(app, "state", None)
        directory = getattr(state, "dashboard_dir", None)
        return Path(directory) if directory is not None else self.dist

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD") or _is_api(path):
            await self.app(scope, receive, send)
            return
        directory = self._directory(scope)
        if is_page(path):
            await self._index(directory)(scope, receive, send)
            return
        found = resolve(directory, path)
        if found is None:
            await self.app(scope, receive, send)
            return
        immutable = path.startswith("/assets/")
        cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
        await FileResponse(found, headers={"Cache-Control": cache})(scope, receive, send)

    @staticmethod
    def _index(directory: Path) -> Response:
        index = directory / "index.html"
        if not index.is_file():
            return HTMLResponse(NO_BUILD_PAGE)
        return FileResponse(index, headers={"Cache-Control": "no-cache"})
