"""``finsecure worker``: consume partitions of the bus until stopped (SIGTERM/SIGINT commit and exit)."""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from finsecure.core.settings import Settings, get_settings
from finsecure.correlation import Correlator

console = Console(stderr=True)

_MEMBER = re.compile(r"^(\d+)/(\d+)$")


def member_partitions(member: str, total: int) -> list[int]:
    """Partitions of worker ``i`` of ``n`` (``"i/n"``): every ``n``-th one, starting at ``i``.

    >>> member_partitions("1/3", 8)
    [1, 4, 7]
    """
    match = _MEMBER.match(member.strip())
    if match is None:
        raise ValueError(f"--member takes INDEX/COUNT such as 0/2, not {member!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"--member {member}: the index must be below the count")
    return [p for p in range(total) if p % count == index]


def worker_command(
    partitions: Annotated[
        str, typer.Option(help="Partitions this worker may own: 0-7, 0,2,4 or all (taken when free)")
    ] = "all",
    member: Annotated[
        str | None,
        typer.Option(
            help="INDEX/COUNT: own every COUNT-th partition from INDEX (e.g. a StatefulSet ordinal)"
        ),
    ] = None,
    bus_url: Annotated[str | None, typer.Option(help="NATS URL (default FINSECURE_BUS_URL)")] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Partition checkpoints and snapshots (default <data_dir>/worker)")
    ] = None,
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus /metrics on this port (0: off)")] = 0,
    commit_every_s: Annotated[
        float,
        typer.Option(
            help="Seconds between checkpoints (each snapshots the state; alerts never wait for one)",
            min=0.05,
        ),
    ] = 5.0,
    batch_age_ms: Annotated[
        float,
        typer.Option(help="Micro-batches close after this many ms (longer: fewer batches, less CPU)", min=0),
    ] = 50.0,
    ack_wait_s: Annotated[
        float,
        typer.Option(
            help="Redeliver what a dead worker held after this long (set when the consumer is made)", min=1
        ),
    ] = 30.0,
) -> None:
    """Consume events.<domain>.<partition> from NATS JetStream: features, detection, lake, alerts."""
    from prometheus_client import start_http_server

    from finsecure.core import migrate as migrations
    from finsecure.core.database import create_db_engine, make_session_factory
    from finsecure.core.logging import configure_logging
    from finsecure.worker.runner import Worker, WorkerOptions, parse_partitions

    try:
        settings: Settings = get_settings()
    except ValidationError as exc:
        console.print(f"[bold red]Configuration error:[/] {exc}")
        raise typer.Exit(2) from exc
    configure_logging(settings)
    url = bus_url or settings.bus_url
    if not url.startswith(("nats://", "tls://")):
        console.print(
            "[bold red]Error:[/] a worker needs a NATS bus: --bus-url or FINSECURE_BUS_URL=nats://..."
        )
        raise typer.Exit(2)
    try:
        owned = (
            member_partitions(member, settings.bus_partitions)
            if member
            else parse_partitions(partitions, settings.bus_partitions)
        )
    except ValueError as exc:
        console.print(f"[bold red]Error:[/] {exc}")
        raise typer.Exit(2) from exc
    engine = create_db_engine(settings.resolved_database_url)
    migrations.upgrade(engine)
    worker = Worker(
        bus=url,
        partitions=owned,
        state_dir=state_dir or settings.data_dir / "worker",
        lake_dir=settings.lake_dir,
        session_factory=make_session_factory(engine),
        store_score_threshold=settings.store_score_threshold,
        settings=settings,
        correlator_factory=lambda: Correlator(
            window_s=settings.correlation_window_s,
            min_severity=settings.incident_min_severity,
            min_rules=settings.incident_min_rules,
        ),
        options=WorkerOptions(
            commit_every_s=commit_every_s,
            ack_wait_s=ack_wait_s,
            max_age_s=batch_age_ms / 1000.0,
            balance=member is None,
        ),
    )
    if metrics_port:
        start_http_server(metrics_port, registry=worker.metrics.registry)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    console.print(f"worker: partitions {owned} of {settings.bus_partitions} on {url}")
    worker.start()
    try:
        worker.run(stop)
    finally:
        worker.stop()
        engine.dispose()
    console.print("worker: committed and stopped")
