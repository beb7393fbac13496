"""Soak: the whole platform (live simulator stream → pipeline → lake, database, alerts; the API over
HTTP on loopback) for ``--duration`` seconds at a fixed event rate, with dashboard-like load from a second
process (REST polling plus one WebSocket subscribed to every channel).

Run with ``make soak`` (10 minutes) or ``.venv/bin/python bench/soak.py --duration 60``.

Writes ``bench/results/soak.json`` (one flat object) and ``bench/results/soak.png`` (RSS, throughput and
API latency over time; matplotlib, from the dev extra):

- ``events``: events the simulator handed to the pipeline; ``lost_events``: of those, how many are
  not in the lake once the platform has stopped (counted with DuckDB over the Parquet files);
- ``errors``: failed API requests (non-2xx, broken connections) + WebSocket errors + pipeline step/sink
  failures + alert-store failures + database writes refused;
- ``rss_growth_pct``: resident memory of the server process at the end against the end of warm-up
  (``--warmup`` seconds, default a fifth of the run, at least 10 s);
- ``feature_state_*_mb`` and ``live_entities_*``: the feature step's per-entity state and how many
  entities (cards, users, IP addresses...) it holds, at the end of warm-up and at the end. The state
  grows with every entity seen for the first time, so RSS keeps growing while the stream is still
  discovering its world. The live demo world is sized by ``--customers`` (default 1,000, the smallest
  live world): with 20,000 customers at 200 events/s only about half of them have been seen after
  10 minutes, and the growth measured is that discovery (about 3 KB per entity and key), not a leak.
  ``entity_growth_pct`` says how much the population still grew after warm-up; the feature step caps
  live entities per key (``FeatureConfig.max_entities``), so it cannot grow without bound;
- ``p99_api_ms`` (and p50, max, per endpoint): request latency seen by the client process;
- ``cpu_s`` / ``cpu_ms_per_request``...: CPU seconds the server process used (the machine may be shared:
  CPU time says more than wall time there), and the load average at the end.

``--tracemalloc N`` (N frames) also writes ``bench/results/soak_memory.txt``: the allocation sites that
grew most between the end of warm-up and the end, and the traced memory over time in the JSON (slows the
run down; numpy is traced, native memory such as Arrow, Polars or DuckDB buffers is not: their own
counters are in the JSON).

The first-start model training (a few minutes of CPU on a small box) runs in a separate process before
the clock starts, as in a deployment that has started before: the soak measures the platform running,
not its first start (``--first-start`` measures that instead).

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
    failure_samples: list[str] = []  # the first few bodies of failed answers, to tell why
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
            body = response.read()
            status = response.status
            if not 200 <= status < 300 and len(failure_samples) < 5:
                failure_samples.append(f"{endpoint} {status}: {body[:300].decode(errors='replace')}")
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
    out_path.write_text(
        json.dumps({"samples": samples, "failures": failures, "failure_samples": failure_samples, **ws_out})
    )


# -- the models, in a process of their own ---------------------------------------------------------------


def _train_models(data_dir: Path, database_url: str) -> None:
    """Train and promote the first models, as the platform does on its first start."""
    from finsecure.core.database import create_db_engine, make_session_factory
    from finsecure.ml.bootstrap import ensure_models

    engine = create_db_engine(database_url)
    try:
        ensure_models(make_session_factory(engine), data_dir)
    finally:
        engine.dispose()


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
    from finsecure.features.step import FeatureStep
    from finsecure.platform import Platform

    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(args.tracemalloc)
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
    trained_s = 0.0
    if not args.first_start:
        t0 = time.monotonic()
        subprocess.run(  # noqa: S603 - this very script, with our own arguments
            [sys.executable, __file__, "--train-models", str(workdir)],
            env={**os.environ, "FINSECURE_SOAK_DATABASE_URL": settings.resolved_database_url},
            check=True,
        )
        trained_s = time.monotonic() - t0
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
    features = next(step for step in platform.pipeline.steps if isinstance(step, FeatureStep))
    entities_warm: dict[str, int] = {}
    started = time.monotonic()
    cpu_started = time.process_time()
    warm = max(10.0, args.warmup if args.warmup is not None else args.duration / 5)
    warm_snapshot: Any = None
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
                "feature_state_mb": features.state_nbytes() / 2**20,
                "live_entities": sum(_live_entities(features).values()),
                **({"py_traced_mb": _traced_mb()} if args.tracemalloc else {}),
            }
        )
        last_in = events_in
        if not entities_warm and elapsed >= warm:
            entities_warm = _live_entities(features)
        if args.tracemalloc and warm_snapshot is None and elapsed >= warm:
            import tracemalloc

            warm_snapshot = tracemalloc.take_snapshot()
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
    cpu_s = time.process_time() - cpu_started
    entities_end = _live_entities(features)
    native = _native_memory(settings)
    if warm_snapshot is not None:
        _write_memory_growth(warm_snapshot, RESULTS / "soak_memory.txt")
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
    after_warmup = [p for p in timeline if p["t"] >= warm] or timeline
    rss_start, rss_end = after_warmup[0]["rss_mb"], timeline[-1]["rss_mb"]
    per_endpoint = {
        endpoint.split("?")[0]: round(_percentile([s[2] for s in samples if s[1] == endpoint], 99) or 0.0, 2)
        for endpoint in ENDPOINTS
    }
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "duration_s": args.duration,
        "models_trained_before_s": round(trained_s, 1),
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
        "customers": args.customers,
        "feature_state_after_warmup_mb": round(after_warmup[0]["feature_state_mb"], 1),
        "feature_state_end_mb": round(timeline[-1]["feature_state_mb"], 1),
        "live_entities_after_warmup": sum(entities_warm.values()),
        "live_entities_end": sum(entities_end.values()),
        "entity_growth_pct": round(
            100
            * (sum(entities_end.values()) - sum(entities_warm.values()))
            / max(1, sum(entities_warm.values())),
            1,
        ),
        "live_entities_by_key_end": " ".join(f"{k}={v}" for k, v in sorted(entities_end.items())),
        **native,
        "cpu_s": round(cpu_s, 1),
        "cpu_ms_per_event": round(1000 * cpu_s / max(events, 1), 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX", "default"),
        "tracemalloc": bool(args.tracemalloc),
        **(
            {
                "py_traced_after_warmup_mb": round(after_warmup[0].get("py_traced_mb", 0.0), 1),
                "py_traced_end_mb": round(timeline[-1].get("py_traced_mb", 0.0), 1),
            }
            if args.tracemalloc
            else {}
        ),
    }
    if seen["failures"]:
        result["api_failure_kinds"] = "; ".join(f"{k} x{v}" for k, v in sorted(seen["failures"].items()))
    if seen.get("failure_samples"):
        result["api_failure_samples"] = " | ".join(seen["failure_samples"])
    if seen.get("ws_detail"):
        result["ws_detail"] = seen["ws_detail"]
    _plot(timeline, samples, warm, result, RESULTS / "soak")
    if args.keep:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- memory ------------------------------------------------------------------------------------------


def _live_entities(features: Any) -> dict[str, int]:
    """Live entities per ``domain.key`` of the feature step (read from another thread: retried if a
    domain appears meanwhile)."""
    for _ in range(10):
        with contextlib.suppress(RuntimeError):
            return {
                f"{domain}.{key}": count
                for domain, counts in features.live_entities().items()
                for key, count in counts.items()
            }
    return {}


def _native_memory(settings: Any) -> dict[str, float]:
    """Memory held outside Python's own allocator: Arrow's pool and the lake's DuckDB buffers, in MB."""
    import pyarrow as pa

    from finsecure.event import service as event_service

    out = {"arrow_allocated_mb": round(pa.total_allocated_bytes() / 2**20, 1)}
    with contextlib.suppress(Exception):  # the lake may never have been queried
        lake = event_service.get_lake(settings=settings)
        table = lake.sql("SELECT sum(memory_usage_bytes) AS b FROM duckdb_memory()").table
        out["duckdb_memory_mb"] = round(float(table.to_pylist()[0]["b"] or 0) / 2**20, 1)
    return out


def _traced_mb() -> float:
    import tracemalloc

    return tracemalloc.get_traced_memory()[0] / 2**20


def _write_memory_growth(before: Any, path: Path, top: int = 30) -> None:
    """The Python allocation sites that grew most since ``before`` (a tracemalloc snapshot)."""
    import tracemalloc

    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "traceback")
    lines = [f"Python allocations that grew most after warm-up (top {top}, by traceback)", ""]
    for stat in stats[:top]:
        lines.append(f"{stat.size_diff / 2**20:+8.2f} MB  {stat.count_diff:+8d} blocks")
        lines += [f"    {line}" for line in stat.traceback.format()[-6:]]
    total = sum(s.size_diff for s in stats)
    lines.append(f"\ntotal traced growth: {total / 2**20:+.2f} MB")
    path.write_text("\n".join(lines) + "\n")


# -- the plot ------------------------------------------------------------------------------------------


def _plot(
    timeline: list[dict[str, float]],
    samples: list[list[Any]],
    warm: float,
    result: dict[str, Any],
    stem: Path,
) -> None:
    """Three panels over time, as a PNG: server RSS, events/s, API latency (p99 per window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 8.5), sharex=True)
    fig.suptitle(
        f"Soak: {result['duration_s']:.0f} s at {result['rate_target_per_s']:.0f} events/s: "
        f"{result['events']:,} events, {result['lost_events']} lost, {result['errors']} errors, "
        f"p99 API {result['p99_api_ms']} ms, RSS growth after warm-up {result['rss_growth_pct']}%",
        fontsize=10,
    )
    for ax, (title, points, colour) in zip(axes, panels, strict=True):
        ax.plot([x for x, _ in points], [y for _, y in points], color=colour, linewidth=1.2)
        ax.axvline(warm, color="grey", linestyle="--", linewidth=0.8, label="end of warm-up")
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--rate", type=float, default=200.0, help="simulator events per second")
    parser.add_argument(
        "--customers", type=int, default=1_000, help="simulated customers (default 1,000: see the docstring)"
    )
    parser.add_argument("--api-rps", type=float, default=10.0, help="dashboard requests per second")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before RSS growth is measured")
    parser.add_argument("--sample-s", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--database-url", default=None, help="default: SQLite in the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace Python allocations with this many frames: bench/results/soak_memory.txt",
    )
    parser.add_argument(
        "--first-start", action="store_true", help="train the first models during the run, as a new install"
    )
    parser.add_argument("--train-models", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--client-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_models is not None:
        _train_models(args.train_models, os.environ["FINSECURE_SOAK_DATABASE_URL"])
        return 0
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
