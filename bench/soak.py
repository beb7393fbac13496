"""Soak: the whole platform (live simulator stream → pipeline → lake, database, alerts; the API over
HTTP on loopback) for ``--duration`` seconds at a fixed event rate, with dashboard-like load from a second
process (REST polling plus one WebSocket subscribed to every channel).

Run with ``make soak`` (10 minutes) or ``.venv/bin/python bench/soak.py --duration 60``.

Writes ``bench/results/soak.json`` (one flat object) and ``bench/results/soak.svg`` (RSS, throughput and
API latency over time; also ``soak.png`` when matplotlib is installed):

- ``events``: events the simulator handed to the pipeline; ``lost_events``: of those, how many are
  not in the lake once the platform has stopped (counted with DuckDB over the Parquet files);
- ``errors``: failed API requests (non-2xx, broken connections) + WebSocket errors + pipeline step/sink
  failures + alert-store failures + database writes refused;
- ``rss_growth_pct``: resident memory of the server process at the end against the end of warm-up
  (``--warmup`` seconds, default a fifth of the run, at least 10 s);
- ``p99_api_ms`` (and p50, max, per endpoint): request latency seen by the client process.

Everything stays on 127.0.0.1 in a temporary directory (SQLite, the lake), deleted at the end unless
``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: What the dashboard polls, in turn (the overview page, triage lists, the map, the hunt view).
ENDPOINTS: tuple[str, ...] = (
    "/api/health",
    "/api/overview",
    "/api/alerts?size=50",
    "/api/incidents?size=50",
    "/api/events/search?domain=payment&size=50",
    "/api/map/points",
    "/api/auth/me",
)
CHANNELS = ["kpi", "alerts", "incidents", "events"]


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the client process --------------------------------------------------------------------------------


def _websocket(url: str, token: str, stop: threading.Event, out: dict[str, Any]) -> None:
    """One dashboard WebSocket: authenticate, subscribe to every channel, count messages; reconnect."""
    try:
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect
    except ImportError:
        out["ws_available"] = False
        return
    while not stop.is_set():
        try:
            with connect(url, subprotocols=["finsecure.v1"], open_timeout=15) as ws:  # type: ignore[list-item]
                ws.send(json.dumps({"type": "auth", "token": token}))
                welcome = json.loads(ws.recv(timeout=5))
                if welcome.get("type") != "welcome":
                    raise RuntimeError(f"no welcome: {welcome}")
                ws.send(json.dumps({"type": "subscribe", "channels": CHANNELS}))
                out["ws_available"] = True
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        message = json.loads(ws.recv(timeout=0.5))
                        if message.get("type") == "message":
                            out["ws_messages"] += 1
        except InvalidStatus as exc:  # no /ws on this server
            out["ws_available"] = False
            out["ws_detail"] = str(exc)
            return
        except ConnectionClosed as exc:
            if stop.is_set():
                return
            out["ws_errors"] += 1
            out["ws_detail"] = f"closed: {exc}"
            time.sleep(1)
        except Exception as exc:  # counted and reported, the soak goes on
            if stop.is_set():
                return
            out["ws_errors"] += 1
            out["ws_detail"] = f"{type(exc).__name__}: {exc}"
            time.sleep(1)


def run_client(port: int, token: str, duration: float, rps: float, out_path: Path) -> None:
    """Poll the dashboard endpoints at ``rps`` requests/s for ``duration`` s; write what it saw."""
    headers = {"Authorization": f"Bearer {token}", "Connection": "keep-alive"}
    samples: list[tuple[float, str, float, int]] = []  # (t, endpoint, ms, status)
    failures: dict[str, int] = {}
    ws_out: dict[str, Any] = {"ws_available": None, "ws_messages": 0, "ws_errors": 0, "ws_detail": None}
    stop = threading.Event()
    ws_thread = threading.Thread(
        target=_websocket, args=(f"ws://127.0.0.1:{port}/ws", token, stop, ws_out), daemon=True
    )
    ws_thread.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.monotonic()
    n = 0
    while True:
        due = started + n / rps
        now = time.monotonic()
        if due - started >= duration or now - started >= duration:  # a slow server gets fewer requests
            break
        if due > now:
            time.sleep(due - now)
        endpoint = ENDPOINTS[n % len(ENDPOINTS)]
        n += 1
        t0 = time.perf_counter()
        try:
            conn.request("GET", endpoint, headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            status = -1
            kind = f"{endpoint}: {type(exc).__name__}"
            failures[kind] = failures.get(kind, 0) + 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        samples.append((time.monotonic() - started, endpoint, elapsed_ms, status))
        if not 200 <= status < 300 and status != -1:
            failures[f"{endpoint}: {status}"] = failures.get(f"{endpoint}: {status}", 0) + 1
    stop.set()
    ws_thread.join(5)
    conn.close()
    out_path.write_text(json.dumps({"samples": samples, "failures": failures, **ws_out}))


# -- the server process --------------------------------------------------------------------------------


def _lake_rows(lake: Path) -> int:
    import duckdb

    files = list(lake.glob("domain=*/**/*.parquet"))
    if not files:
        return 0
    with duckdb.connect() as con:
        row = con.execute(
            "select count(*) from read_parquet(?, union_by_name=true, hive_partitioning=false)",
            [[str(f) for f in files]],
        ).fetchone()
    return int(row[0]) if row else 0


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn
    from sqlalchemy.orm import Session

    from finsecure.api import build_context, create_app
    from finsecure.audit.service import Actor
    from finsecure.auth import service as auth_service
    from finsecure.auth.models import Role
    from finsecure.auth.schemas import UserCreate
    from finsecure.core import migrate
    from finsecure.core.database import create_db_engine, make_session_factory
    from finsecure.core.settings import Settings
    from finsecure.platform import Platform

    workdir = Path(tempfile.mkdtemp(prefix="finsecure-soak-"))
    settings = Settings.model_validate(
        {
            "env": "development",
            "data_dir": workdir,
            "database_url": args.database_url or "",
            "jwt_secret": secrets.token_urlsafe(48),
            "access_token_ttl_s": min(24 * 3600, int(args.duration) + 600),
            "demo_stream": True,
            "demo_rate": args.rate,
            "demo_customers": args.customers,
            "log_level": "WARNING",
        }
    )
    engine = create_db_engine(settings.resolved_database_url)
    migrate.upgrade(engine)
    platform = Platform(settings, make_session_factory(engine))
    context = build_context(settings, engine=engine, platform=platform)
    with Session(engine, expire_on_commit=False) as session:
        user, _ = auth_service.create(
            db_session=session,
            passwords=context.passwords,
            user_in=UserCreate(username="soak-viewer", password=secrets.token_urlsafe(16), role=Role.analyst),
            actor=Actor(label="soak"),
        )
        token = auth_service.issue_tokens(db_session=session, settings=settings, user=user).access_token
        session.commit()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(context=context), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="soak-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)

    client_out = workdir / "client.json"
    client = subprocess.Popen(  # noqa: S603 - this very script, with our own arguments
        [
            *(sys.executable, __file__, "--client", str(port), "--duration", str(args.duration)),
            *("--api-rps", str(args.api_rps), "--client-out", str(client_out)),
        ],
        env={**os.environ, "FINSECURE_SOAK_TOKEN": token},  # never on the command line
    )
    timeline: list[dict[str, float]] = []
    started = time.monotonic()
    last_in = 0
    while True:
        elapsed = time.monotonic() - started
        stats = platform.pipeline.stats()
        events_in = sum(stats.events_in.values())
        timeline.append(
            {
                "t": elapsed,
                "rss_mb": _rss_mb(),
                "events_in": events_in,
                "events_per_s": (events_in - last_in) / args.sample_s if timeline else 0.0,
                "outbox_rows": platform.outbox.status().pending_rows,
            }
        )
        last_in = events_in
        if elapsed >= args.duration:
            break
        time.sleep(max(0.0, started + len(timeline) * args.sample_s - time.monotonic()))
    try:
        client.wait(timeout=120)
    except subprocess.TimeoutExpired:
        client.kill()
        raise
    finally:
        server.should_exit = True  # the lifespan stops the platform: demo stream, drained pipeline, lake
        thread.join(120)
    stats = platform.pipeline.stats()
    engine.dispose()

    seen = json.loads(client_out.read_text())
    samples = seen["samples"]
    latencies = [s[2] for s in samples]
    events = sum(stats.events_in.values())
    lake_rows = _lake_rows(settings.lake_dir)
    outbox = platform.outbox.status()
    api_errors = sum(seen["failures"].values())
    pipeline_errors = sum(stats.errors.values())
    errors = api_errors + seen["ws_errors"] + pipeline_errors + platform.alerts.errors + outbox.failed_rows
    warm = max(10.0, args.warmup if args.warmup is not None else args.duration / 5)
    after_warmup = [p for p in timeline if p["t"] >= warm] or timeline
    rss_start, rss_end = after_warmup[0]["rss_mb"], timeline[-1]["rss_mb"]
    per_endpoint = {
        endpoint.split("?")[0]: round(_percentile([s[2] for s in samples if s[1] == endpoint], 99) or 0.0, 2)
        for endpoint in ENDPOINTS
    }
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "duration_s": args.duration,
        "rate_target_per_s": args.rate,
        "events": events,
        "events_per_s": round(events / args.duration, 1),
        "events_per_s_after_warmup": round(
            (timeline[-1]["events_in"] - after_warmup[0]["events_in"])
            / max(1e-9, timeline[-1]["t"] - after_warmup[0]["t"]),
            1,
        ),
        "events_out": sum(stats.events_out.values()),
        "lake_rows": lake_rows,
        "lost_events": events - lake_rows,
        "dead_letters": stats.dead_letters,
        "errors": errors,
        "api_errors": api_errors,
        "ws_errors": seen["ws_errors"],
        "pipeline_errors": pipeline_errors,
        "alert_errors": platform.alerts.errors,
        "db_writes_refused": outbox.failed_rows,
        "db_rows_left_waiting": outbox.pending_rows,
        "api_requests": len(samples),
        "api_rps_target": args.api_rps,
        "p50_api_ms": round(_percentile(latencies, 50) or 0.0, 2),
        "p99_api_ms": round(_percentile(latencies, 99) or 0.0, 2),
        "p99_api_ms_after_warmup": round(_percentile([s[2] for s in samples if s[0] >= warm], 99) or 0.0, 2),
        "max_api_ms": round(max(latencies, default=0.0), 2),
        **{f"p99_api_ms{name.replace('/', '_')}": v for name, v in per_endpoint.items()},
        "ws_available": seen["ws_available"],
        "ws_messages": seen["ws_messages"],
        "batch_latency_p99_ms": round(stats.batch_latency_p99_ms or 0.0, 1),
        "warmup_s": warm,
        "rss_after_warmup_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_peak_mb": round(max(p["rss_mb"] for p in timeline), 1),
        "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
    }
    if seen["failures"]:
        result["api_failure_kinds"] = "; ".join(f"{k} x{v}" for k, v in sorted(seen["failures"].items()))
    if seen.get("ws_detail"):
        result["ws_detail"] = seen["ws_detail"]
    _plot(timeline, samples, warm, result, RESULTS / "soak")
    if args.keep:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- the plot ------------------------------------------------------------------------------------------


def _plot(
    timeline: list[dict[str, float]],
    samples: list[list[Any]],
    warm: float,
    result: dict[str, Any],
    stem: Path,
) -> None:
    """Three panels over time: server RSS, events/s, API latency (p99 per 10 s window)."""
    duration = max(p["t"] for p in timeline) or 1.0
    window = max(1.0, duration / 60)
    buckets: dict[int, list[float]] = {}
    for t, _, ms, _ in samples:
        buckets.setdefault(int(t // window), []).append(ms)
    p99 = [((k + 0.5) * window, _percentile(v, 99) or 0.0) for k, v in sorted(buckets.items())]
    panels = [
        ("Server memory (RSS, MB)", [(p["t"], p["rss_mb"]) for p in timeline], "#1f77b4"),
        (
            "Events per second into the pipeline",
            [(p["t"], p["events_per_s"]) for p in timeline[1:]],
            "#2ca02c",
        ),
        (f"API latency, p99 per {window:.0f} s window (ms)", p99, "#d62728"),
    ]
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

        fig, axes = plt.subplots(len(panels), 1, figsize=(9, 8), sharex=True)
        for ax, (title, points, colour) in zip(axes, panels, strict=True):
            ax.plot([x for x, _ in points], [y for _, y in points], color=colour)
            ax.axvline(warm, color="grey", linestyle="--", linewidth=0.8)
            ax.set_title(title, fontsize=10)
        axes[-1].set_xlabel("seconds")
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=100)
        plt.close(fig)
    except ImportError:
        pass
    stem.with_suffix(".svg").write_text(_svg(panels, duration, warm, result))


def _svg(
    panels: list[tuple[str, list[tuple[float, float]], str]], duration: float, warm: float, r: Any
) -> str:
    width, height, left, top, gap = 900, 230, 70, 40, 30
    total = top + len(panels) * (height + gap) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total}" '
        f'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14">Soak: {r["duration_s"]:.0f} s at '
        f"{r['rate_target_per_s']:.0f} events/s: {r['events']:,} events, {r['lost_events']} lost, "
        f"{r['errors']} errors, "
        f"p99 API {r['p99_api_ms']} ms, RSS growth {r['rss_growth_pct']}%</text>",
    ]
    plot_w = width - left - 20
    for index, (title, points, colour) in enumerate(panels):
        y0 = top + index * (height + gap)
        plot_h = height - 40
        ys = [y for _, y in points] or [0.0]
        lo, hi = min(0.0, min(ys)), max(ys) or 1.0
        hi = hi * 1.1 if hi > 0 else 1.0

        def sx(x: float) -> float:
            return left + plot_w * x / duration

        def sy(y: float, y0: float = y0, plot_h: float = plot_h, lo: float = lo, hi: float = hi) -> float:
            return y0 + 20 + plot_h * (1 - (y - lo) / (hi - lo))

        parts.append(f'<text x="{left}" y="{y0 + 12}" font-weight="bold">{title}</text>')
        parts.append(
            f'<rect x="{left}" y="{y0 + 20}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>'
        )
        for frac in (0.0, 0.5, 1.0):
            value = lo + (hi - lo) * frac
            parts.append(
                f'<text x="{left - 6}" y="{sy(value) + 4:.1f}" text-anchor="end">{value:,.0f}</text>'
            )
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
            x = duration * frac
            parts.append(
                f'<text x="{sx(x):.1f}" y="{y0 + 20 + plot_h + 14}" text-anchor="middle">{x:.0f} s</text>'
            )
        parts.append(
            f'<line x1="{sx(warm):.1f}" y1="{y0 + 20}" x2="{sx(warm):.1f}" y2="{y0 + 20 + plot_h}" '
            'stroke="#888" stroke-dasharray="4 3"/>'
        )
        if points:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--rate", type=float, default=200.0, help="simulator events per second")
    parser.add_argument("--customers", type=int, default=20_000, help="simulated customers")
    parser.add_argument("--api-rps", type=float, default=10.0, help="dashboard requests per second")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before RSS growth is measured")
    parser.add_argument("--sample-s", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--database-url", default=None, help="default: SQLite in the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--client-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client is not None:
        run_client(
            args.client, os.environ["FINSECURE_SOAK_TOKEN"], args.duration, args.api_rps, args.client_out
        )
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = run_soak(args)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    ok = result["lost_events"] == 0 and result["errors"] == 0 and result["rss_growth_pct"] <= 10
    print("targets (0 lost, 0 errors, RSS growth <= 10%):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
