"""The ``finsecure`` command line."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sqlalchemy.orm import Session

from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.models import Role
from finsecure.auth.schemas import ApiKeyCreate, Scope, UserCreate, UserUpdate
from finsecure.core import migrate as migrations
from finsecure.core.database import create_db_engine, make_session_factory, session_scope
from finsecure.core.errors import Conflict, NotFound
from finsecure.core.security import Passwords
from finsecure.core.settings import Settings, get_settings
from finsecure.detection.cli import rules_command_app
from finsecure.lake.cli import query_command
from finsecure.ml.cli import evaluate_command, models_app, train_command
from finsecure.sim.cli import simulate_command
from finsecure.worker.cli import worker_command

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help="FinSecure Nexus: cyber, fraud and geo signals correlated on one entity graph, explained.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
users_app = typer.Typer(help="Manage the people who sign in to the dashboard.", no_args_is_help=True)
apikeys_app = typer.Typer(help="Manage API keys for machines that push events.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(apikeys_app, name="apikeys")
app.command("query")(query_command)
app.command("simulate")(simulate_command)
app.add_typer(rules_command_app, name="rules")
app.command("worker")(worker_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.add_typer(models_app, name="models")


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        messages = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors())
        err_console.print(f"[bold red]Configuration error:[/] {messages}")
        raise typer.Exit(2) from exc


@contextmanager
def _db_session(settings: Settings) -> Iterator[Session]:
    """One committed transaction on a short-lived engine, for a single command."""
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as db_session:
            yield db_session
    finally:
        engine.dispose()


def _cli_actor() -> Actor:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor(label=f"cli:{who}")


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]Error:[/] {message}")
    return typer.Exit(1)


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision; 'head' is the newest")] = "head",
    down: Annotated[
        bool, typer.Option("--down", help="Downgrade to REVISION instead ('base' empties it)")
    ] = False,
) -> None:
    """Bring the database schema up to date (or, with --down, back to an older revision)."""
    settings = _settings()
    engine = create_db_engine(settings.resolved_database_url)
    try:
        if down:
            migrations.downgrade(engine, revision)
        else:
            migrations.upgrade(engine, revision)
        console.print(f"Database at revision [bold]{migrations.current_revision(engine) or 'base'}[/]")
    finally:
        engine.dispose()


def _bootstrap_admin(settings: Settings) -> None:
    with _db_session(settings) as db_session:
        password = settings.admin_password.get_secret_value() if settings.admin_password else None
        user, one_time = auth_service.ensure_first_admin(
            db_session=db_session,
            passwords=Passwords(settings),
            username=settings.admin_username,
            password=password,
        )
    if user is None:
        return
    if one_time:
        console.print(
            Panel(
                f"Username: [bold]{user.username}[/]\nOne-time password: [bold]{one_time}[/]\n"
                "You will be asked to choose a new password after signing in. It is not shown again.",
                title="First admin created",
                border_style="yellow",
            )
        )
    else:
        console.print(f"First admin [bold]{user.username}[/] created with FINSECURE_ADMIN_PASSWORD.")


@app.command()
def bootstrap() -> None:
    """Create the first admin if there is none (password from FINSECURE_ADMIN_PASSWORD or generated)."""
    _bootstrap_admin(_settings())


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default from settings)")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default from settings)")] = None,
    setup: Annotated[
        bool, typer.Option(help="Apply migrations and create the first admin before serving")
    ] = True,
) -> None:
    """Serve the API (and, as the platform grows, the dashboard and live stream)."""
    import uvicorn

    from finsecure.api import build_context, create_app
    from finsecure.core.logging import configure_logging
    from finsecure.platform import Platform

    settings = _settings()
    configure_logging(settings)
    if setup:
        engine = create_db_engine(settings.resolved_database_url)
        try:
            migrations.upgrade(engine)
        finally:
            engine.dispose()
        _bootstrap_admin(settings)
    bind_host, bind_port = host or settings.host, port or settings.port
    console.print(f"FinSecure Nexus on [bold]http://{bind_host}:{bind_port}[/] (API docs at /api/docs)")
    engine = create_db_engine(settings.resolved_database_url, echo=settings.database_echo)
    platform = Platform(settings, make_session_factory(engine))
    application = create_app(context=build_context(settings, engine=engine, platform=platform))
    if settings.demo_stream:
        console.print(f"Live demo stream: the bank-day simulator at {settings.demo_rate:g} events/s")
    uvicorn.run(application, host=bind_host, port=bind_port, log_config=None, proxy_headers=False)


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Sign-in name")],
    role: Annotated[Role, typer.Option(help="viewer, analyst or admin")] = Role.viewer,
    full_name: Annotated[str, typer.Option(help="Name shown in the dashboard")] = "",
    email: Annotated[str | None, typer.Option(help="Contact address")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Create a user. Without --password-stdin a one-time password is generated and printed once."""
    settings = _settings()
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    try:
        user_in = UserCreate(
            username=username, password=password, full_name=full_name, email=email, role=role
        )
    except ValidationError as exc:
        raise _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
    try:
        with _db_session(settings) as db_session:
            user, one_time = auth_service.create(
                db_session=db_session, passwords=Passwords(settings), user_in=user_in, actor=_cli_actor()
            )
    except Conflict as exc:
        raise _fail(exc.message) from exc
    console.print(f"Created {user.role.value} [bold]{user.username}[/] (id {user.id})")
    if one_time:
        console.print(f"One-time password (must be changed at first sign-in): [bold]{one_time}[/]")


@users_app.command("list")
def users_list() -> None:
    """List every user with role and status."""
    settings = _settings()
    with _db_session(settings) as db_session:
        users, _ = auth_service.get_all(db_session=db_session, offset=0, limit=10_000)
        table = Table("id", "username", "role", "status", "last sign-in")
        for u in users:
            status = (
                "disabled" if u.disabled else ("must change password" if u.must_change_password else "active")
            )
            last = u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never"
            table.add_row(str(u.id), u.username, u.role.value, status, last)
    console.print(table)


def _set_disabled(username: str, disabled: bool) -> None:
    settings = _settings()
    try:
        with _db_session(settings) as db_session:
            user = auth_service.get_by_username(db_session=db_session, username=username)
            if user is None:
                raise _fail(f"No user named {username!r}")
            auth_service.update(
                db_session=db_session,
                passwords=Passwords(settings),
                user=user,
                user_in=UserUpdate(disabled=disabled),
                actor=_cli_actor(),
            )
    except Conflict as exc:
        raise _fail(exc.message) from exc
    console.print(f"User [bold]{username}[/] {'disabled' if disabled else 'enabled'}")


@users_app.command("disable")
def users_disable(username: Annotated[str, typer.Argument(help="Sign-in name")]) -> None:
    """Disable a user: they cannot sign in and their sessions end."""
    _set_disabled(username, True)


@users_app.command("enable")
def users_enable(username: Annotated[str, typer.Argument(help="Sign-in name")]) -> None:
    """Enable a disabled user again."""
    _set_disabled(username, False)


@apikeys_app.command("create")
def apikeys_create(
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. 'branch-gateway'")],
    scope: Annotated[list[Scope], typer.Option("--scope", help="ingest and/or read; repeat for several")] = [  # noqa: B006
        Scope.ingest
    ],
    expires_in_days: Annotated[int, typer.Option(help="Days until it expires; 0 for never")] = 90,
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    settings = _settings()
    try:
        key_in = ApiKeyCreate(name=name, scopes=scope, expires_in_days=expires_in_days or None)
    except ValidationError as exc:
        raise _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
    with _db_session(settings) as db_session:
        api_key, raw = auth_service.create_api_key(
            db_session=db_session, key_in=key_in, owner_id=None, actor=_cli_actor()
        )
    console.print(
        f"API key [bold]{api_key.name}[/] (prefix {api_key.prefix}, scopes {', '.join(api_key.scopes)})"
    )
    console.print(raw, highlight=False, soft_wrap=True)


@apikeys_app.command("list")
def apikeys_list() -> None:
    """List API keys (never the keys themselves)."""
    settings = _settings()
    with _db_session(settings) as db_session:
        keys, _ = auth_service.get_all_api_keys(db_session=db_session, offset=0, limit=10_000)
        table = Table("id", "name", "prefix", "scopes", "expires", "status")
        for k in keys:
            status = "revoked" if k.revoked_at else "active"
            expires = k.expires_at.strftime("%Y-%m-%d") if k.expires_at else "never"
            table.add_row(str(k.id), k.name, k.prefix, ",".join(k.scopes), expires, status)
    console.print(table)


@apikeys_app.command("revoke")
def apikeys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (see `apikeys list`)")],
) -> None:
    """Revoke an API key at once."""
    settings = _settings()
    try:
        with _db_session(settings) as db_session:
            auth_service.revoke_api_key_by_prefix(db_session=db_session, prefix=prefix, actor=_cli_actor())
    except NotFound as exc:
        raise _fail(exc.message) from exc
    console.print(f"API key {prefix} revoked")


@app.command()
def replay(
    path: Annotated[
        Path, typer.Argument(help="File to replay: CSV, NDJSON, JSON or Parquet, optionally gzip")
    ],
    format_name: Annotated[
        str,
        typer.Option(
            "--format",
            help="nsl-kdd, fraud-handbook, sparkov, cloudtrail, aws-s3-honeybucket, azure-ad, "
            "office-activity, ndjson (canonical events) or parquet (canonical events)",
        ),
    ],
    rate: Annotated[str, typer.Option(help="Events per second, or 'max' for as fast as possible")] = "max",
    speedup: Annotated[
        float | None, typer.Option(help="Replay at X times the pace of the events' own timestamps")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(help="Rows read per chunk", min=1_000)] = 100_000,
) -> None:
    """Replay a file through the pipeline: normalise, features, event lake, dead letters.

    Query the result afterwards with `finsecure query "select ... from payment"`.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from finsecure.ingest.sources import open_source
    from finsecure.pipeline.drive import DriveProgress, drive
    from finsecure.platform import Platform

    settings = _settings()
    if not path.is_file():
        raise _fail(f"{path} is not a readable file")
    if rate != "max":
        try:
            events_per_s: float | None = float(rate)
        except ValueError as exc:
            raise _fail(f"--rate takes a number of events per second or 'max', not {rate!r}") from exc
        if events_per_s is not None and events_per_s <= 0:
            raise _fail("--rate must be above 0")
    else:
        events_per_s = None
    if speedup is not None and speedup <= 0:
        raise _fail("--speedup must be above 0")
    try:
        source = open_source(path, format_name, chunk_rows=chunk_rows, hash_key=settings.token_key)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    engine = create_db_engine(settings.resolved_database_url)
    migrations.upgrade(engine)
    platform = Platform(settings, make_session_factory(engine), demo_source=None).start()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        TextColumn(
            "{task.fields[events]:,} events  {task.fields[rate]:,.0f}/s  {task.fields[rejects]:,} rejected"
        ),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(f"replay {path.name}", total=None, events=0, rate=0.0, rejects=0)

            def show(p: DriveProgress) -> None:
                progress.update(task, events=p.events, rate=p.events_per_s, rejects=p.rejects)

            target = platform.bus or platform.pipeline  # FINSECURE_BUS_URL: publish for the workers
            done = drive(source, target, rate=events_per_s, speedup=speedup, on_progress=show)
            show(done)
    finally:
        source.close()
        stats = platform.stop(timeout=None)
        engine.dispose()
    table = Table("domain", "events in", "events out", title="Replay finished")
    for domain in sorted(d for d, n in stats.events_in.items() if n):
        table.add_row(domain, f"{stats.events_in[domain]:,}", f"{stats.events_out.get(domain, 0):,}")
    console.print(table)
    console.print(
        f"{done.events:,} events in {done.elapsed_s:.1f} s ({done.events_per_s:,.0f}/s), "
        f"{done.rejects:,} rejected (dead letters), {stats.batches:,} batches, "
        f"batch latency p99 {stats.batch_latency_p99_ms or 0:.1f} ms; lake: {settings.lake_dir}"
    )
    if stats.errors:
        err_console.print(f"[bold red]Step or sink errors:[/] {stats.errors}")
        raise typer.Exit(1)


def main() -> None:
    app()
