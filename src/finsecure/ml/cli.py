"""``finsecure train``, ``finsecure models list|promote|rollback`` and ``finsecure evaluate``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from finsecure.core.errors import AppError
from finsecure.core.settings import Settings, get_settings
from finsecure.model.models import ModelVersion

__all__ = ["evaluate_command", "models_app", "train_command"]

console = Console()
err_console = Console(stderr=True)
models_app = typer.Typer(help="List, promote and roll back registered model versions.", no_args_is_help=True)

DATASET_NAMES = ("simulated", "nsl-kdd", "fraud-handbook", "sparkov")
TRAIN_SOURCES = (*DATASET_NAMES, "lake")


@contextmanager
def _db(settings: Settings) -> Iterator[Session]:
    from finsecure.core.database import create_db_engine, make_session_factory, session_scope

    engine = create_db_engine(settings.resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as db_session:
            yield db_session
    finally:
        engine.dispose()


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]Error:[/] {message}")
    return typer.Exit(1)


def _check_dataset(name: str) -> str:
    if name not in DATASET_NAMES:
        raise typer.BadParameter(f"expected one of {', '.join(DATASET_NAMES)}")
    return name


def _check_source(name: str) -> str:
    if name not in TRAIN_SOURCES:
        raise typer.BadParameter(f"expected one of {', '.join(TRAIN_SOURCES)}")
    return name


def train_command(
    dataset: Annotated[
        str,
        typer.Option(
            help="simulated, nsl-kdd, fraud-handbook, sparkov, or lake (this platform's own events, with "
            "analysts' verdicts as labels)",
            callback=_check_source,
        ),
    ] = "simulated",
    domain: Annotated[str, typer.Option(help="Lake: which domain's events")] = "payment",
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Model kinds to fit (repeat): gbdt, iforest, hst")
    ] = None,
    promote: Annotated[bool, typer.Option(help="Serve the new versions at once")] = False,
    customers: Annotated[int, typer.Option(help="Simulated: customers", min=1_000)] = 10_000,
    hours: Annotated[float, typer.Option(help="Simulated: hours of bank activity", min=1.0)] = 24.0,
) -> None:
    """Fit the fast tier on a dataset and register a new version of each model (an ensemble too)."""
    from finsecure.ml.bootstrap import register_tier, train_simulated
    from finsecure.ml.data import DATASETS
    from finsecure.ml.evaluate import load_parts, protocols
    from finsecure.ml.train import FAST_KINDS, fit_tier

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = get_settings()
    kinds = tuple(model) if model else FAST_KINDS
    with _db(settings) as db_session:
        if dataset == "lake":
            rows = _train_on_lake(db_session, settings, domain, kinds, promote)
        elif dataset == "simulated":
            rows = train_simulated(
                db_session=db_session,
                data_dir=settings.data_dir,
                kinds=kinds,
                customers=customers,
                hours=hours,
                promote=promote,
            )
        else:
            info = DATASETS[dataset]
            try:
                parts = load_parts(info, settings.datasets_dir, settings.data_dir / "cache" / "ml")
            except FileNotFoundError as exc:
                raise _fail(str(exc)) from exc
            protocol = protocols(info, parts)[0]
            domain = "network" if info.format_name == "nsl-kdd" else "payment"
            tier = fit_tier(
                protocol.train,
                protocol.validation,
                domain,
                kinds=kinds,
                time_features=info.time_features,
                params=info.params,
                novelty=info.novelty,
            )
            rows = register_tier(
                db_session=db_session,
                data_dir=settings.data_dir,
                tier=tier,
                validation=protocol.validation,
                dataset=f"{dataset}: {protocol.name} (training split)",
                promote=promote,
            )
        for row in rows:
            console.print(f"registered {row.name} v{row.version} ({row.stage.value}) at {row.artefact_path}")


def _train_on_lake(
    db_session: Session, settings: Settings, domain: str, kinds: tuple[str, ...], promote: bool
) -> list[ModelVersion]:
    """Fit on the lake's labelled events of ``domain`` (the latest 20% of them validate)."""
    import polars as pl

    from finsecure.ml.bootstrap import register_tier
    from finsecure.ml.labels import analyst_labels, apply_labels, lake_frame
    from finsecure.ml.train import fit_tier

    try:
        frame = lake_frame(settings.lake_dir, domain)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    labels = analyst_labels(db_session=db_session)
    labelled = apply_labels(frame, labels).filter(pl.col("label").is_not_null())
    cut = int(labelled.height * 0.8)
    train, validation = labelled[:cut], labelled[cut:]
    positives = (int(train["label"].sum() or 0), int(validation["label"].sum() or 0)) if cut else (0, 0)
    if min(positives) < 1 or labelled.height < 100:
        raise _fail(
            f"the lake has {labelled.height} labelled {domain} events ({sum(positives)} bad): "
            "too few to train on"
        )
    tier = fit_tier(train, validation, domain, kinds=kinds)
    return register_tier(
        db_session=db_session,
        data_dir=settings.data_dir,
        tier=tier,
        validation=validation,
        dataset=f"lake {domain}: {labelled.height} labelled events ({len(labels)} analyst verdicts)",
        promote=promote,
    )


@models_app.command("list")
def models_list() -> None:
    """Every registered version, newest first per name."""
    from finsecure.ml import registry

    with _db(get_settings()) as db_session:
        rows = registry.get_all(db_session=db_session)
        header = (
            f"{'name':<24} {'version':>7} {'kind':<12} {'domain':<8} {'stage':<11} {'threshold':>9} {'AP':>6}"
        )
        typer.echo(header)  # plain columns: easy to read and to grep, whatever the terminal width
        for row in rows:
            ap = row.metrics.get("average_precision") if isinstance(row.metrics, dict) else None
            shown = f"{ap:.3f}" if isinstance(ap, float) else "-"
            typer.echo(
                f"{row.name:<24} {row.version:>7} {row.kind:<12} {row.domain:<8} {row.stage.value:<11} "
                f"{row.threshold:>9.3f} {shown:>6}"
            )


@models_app.command("add-deep")
def models_add_deep(
    onnx: Annotated[Path, typer.Argument(help="A deep model's .onnx file (its .json beside it)")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the file's name)")] = None,
    promote: Annotated[bool, typer.Option(help="Serve the new version at once")] = False,
) -> None:
    """Register a deep model written by `bench/deep.py train` (e.g. var/deep/lstm-sparkov.onnx)."""
    from finsecure.ml import registry
    from finsecure.ml.contract import ModelError
    from finsecure.ml.deep import register_files

    settings = get_settings()
    try:
        with _db(settings) as db_session:
            row = register_files(
                db_session=db_session,
                data_dir=settings.data_dir,
                onnx_path=onnx,
                metadata_path=onnx.with_suffix(".json"),
                name=name,
            )
            if promote:
                row = registry.promote(db_session=db_session, name=row.name, version=row.version)
            console.print(f"registered {row.name} v{row.version} ({row.stage.value}) at {row.artefact_path}")
    except ModelError as exc:
        raise _fail(str(exc)) from exc
    except AppError as exc:
        raise _fail(exc.message) from exc


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Model name, e.g. payment_gbdt")],
    version: Annotated[int, typer.Argument(help="Version to serve", min=1)],
) -> None:
    """Serve VERSION of NAME (the running pipeline picks it up within seconds)."""
    from finsecure.ml import registry

    try:
        with _db(get_settings()) as db_session:
            row = registry.promote(db_session=db_session, name=name, version=version)
            console.print(f"{row.name} v{row.version} is now in production")
    except AppError as exc:
        raise _fail(exc.message) from exc


@models_app.command("rollback")
def models_rollback(name: Annotated[str, typer.Argument(help="Model name, e.g. payment_gbdt")]) -> None:
    """Go back to the version of NAME that was served before the current one."""
    from finsecure.ml import registry

    try:
        with _db(get_settings()) as db_session:
            row = registry.rollback(db_session=db_session, name=name)
            console.print(f"{row.name} rolled back to v{row.version}")
    except AppError as exc:
        raise _fail(exc.message) from exc


def evaluate_command(
    dataset: Annotated[
        str, typer.Option(help="nsl-kdd, fraud-handbook, sparkov or simulated", callback=_check_dataset)
    ],
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here (markdown beside it)")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the validation split (simulated: of the run)")] = 0,
    rate: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="simulated only: replay at this many events/s (default: as fast as the pipeline takes them, "
            "so time to detect includes queueing)",
        ),
    ] = None,
) -> None:
    """Train on the dataset's training split and report every model and the ensemble on its test splits."""
    from finsecure.ml.evaluate import evaluate_dataset, report_markdown

    if rate is not None and dataset != "simulated":
        raise _fail("--rate applies only to --dataset simulated (the others are not replayed)")
    settings = get_settings()
    if dataset == "simulated":
        from finsecure.sim.evaluate import evaluate_simulated, markdown_summary

        target = out or settings.data_dir / "reports" / "evaluate-simulated.json"
        console.print(markdown_summary(evaluate_simulated(settings, target, seed=seed, rate=rate)))
        console.print(f"report written to {target} and {target.with_suffix('.md')}")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    target = out or settings.data_dir / "reports" / f"evaluate-{dataset}.json"
    try:
        report = evaluate_dataset(
            dataset,
            datasets_dir=settings.datasets_dir,
            cache_dir=settings.data_dir / "cache" / "ml",
            seed=seed,
            log=lambda line: err_console.print(line),
        )
    except FileNotFoundError as exc:
        raise _fail(f"{exc} (set FINSECURE_DATASETS to the shared datasets folder)") from exc
    markdown = report_markdown(report)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(_finite(report), indent=2, default=str, allow_nan=False) + "\n")
    target.with_suffix(".md").write_text(markdown)
    console.print(markdown)
    console.print(f"report written to {target} and {target.with_suffix('.md')}")


def _finite(value: object) -> object:
    """NaN (a measure undefined on a split) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
