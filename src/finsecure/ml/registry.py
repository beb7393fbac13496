"""The model registry: versioned artefact folders on disk, one row per version in the ``models`` table.

An artefact folder ``<data_dir>/models/<name>/v<version>/`` holds:

* ``model.onnx``: what the pipeline scores with (ONNX Runtime; no PyTorch, no LightGBM needed);
* ``metadata.json``: name, version, kind, domain, the input design (features and vocabularies), the training
  data fingerprint, metrics, threshold, created_at and the ONNX file's SHA-256;
* ``MODEL_CARD.md``: the same in words, for people;
* ``native.txt`` (LightGBM only): the booster, used to explain scores with per-feature contributions.

Sequence models (the deep tier's LSTM and Transformer, which read an entity's recent events) are
registered the same way with their history spec (:class:`~finsecure.features.history.HistorySpec`): the
metadata then also holds ``history`` (entity key, features, sequence length), ``steps``, and ``designs``
(one input design per domain the history reads); ``features`` are the per-step features. The scoring step
leaves them to the deep tier's :class:`~finsecure.ml.deep.SequenceScoringStep`, which serves the promoted
versions from the registry too.

Promoting a version makes it the one the pipeline serves for its name (the previous one is archived);
rolling back re-promotes the version that was in production before. A malformed artefact is refused at
promotion and at load, and whatever was served before stays served.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from finsecure.core.database import utcnow
from finsecure.core.errors import Conflict, NotFound
from finsecure.ml.contract import Model, ModelError, OnnxScorer
from finsecure.ml.features import DesignSpec, describe_feature
from finsecure.model.models import ModelStage, ModelVersion

if TYPE_CHECKING:
    from finsecure.features.history import HistorySpec

__all__ = ["LoadedModel", "get_all", "load_artefact", "production", "promote", "register", "rollback"]

METADATA = "metadata.json"
ONNX_FILE = "model.onnx"
CARD = "MODEL_CARD.md"
NATIVE = "native.txt"
_REQUIRED = ("name", "version", "kind", "domain", "design", "threshold", "onnx_sha256", "created_at")


def models_dir(data_dir: Path) -> Path:
    """Where artefact folders live: ``<data_dir>/models``."""
    return data_dir / "models"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def register(
    *,
    db_session: Session,
    data_dir: Path,
    name: str,
    model: Model,
    design: DesignSpec,
    data_fingerprint: str,
    metrics: dict[str, Any],
    threshold: float,
    dataset: str,
    extra: dict[str, Any] | None = None,
    history: HistorySpec | None = None,
    designs: Mapping[str, DesignSpec] | None = None,
) -> ModelVersion:
    """Write a new version's artefact folder and its ``models`` row (stage ``candidate``).

    ``extra`` is stored in the metadata as it is (e.g. ensemble weights).

    A sequence model gives its ``history`` spec (its features are the spec's, one vector per step) and
    the ``designs`` of the domains the history reads (default: ``design``'s domain only).
    """
    expected = design.feature_names if history is None else history.feature_names
    if tuple(expected) != tuple(model.feature_names):
        raise ModelError(
            "the model's features differ from the " + ("design's" if history is None else "history's")
        )
    latest = db_session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
    version = (latest or 0) + 1
    folder = models_dir(data_dir) / name / f"v{version}"
    if folder.exists():  # left over from a version whose row was never committed
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.export_onnx(folder / ONNX_FILE)
    save_native = getattr(model, "save_native", None)
    if callable(save_native):
        save_native(folder / NATIVE)
    created = utcnow()
    metadata = {
        "name": name,
        "version": version,
        "kind": model.name,
        "domain": model.domain,
        "dataset": dataset,
        "features": list(model.feature_names),
        "design": design.to_dict(),
        "data_fingerprint": data_fingerprint,
        "metrics": metrics,
        "threshold": float(threshold),
        "created_at": created.isoformat(),
        "onnx_sha256": _sha256(folder / ONNX_FILE),
        **({"extra": extra} if extra else {}),
    }
    if history is not None:
        metadata["history"] = json.loads(history.fingerprint())
        metadata["steps"] = history.steps
        chosen = dict(designs) if designs else {design.domain.value: design}
        metadata["designs"] = {domain: d.to_dict() for domain, d in chosen.items()}
    (folder / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    (folder / CARD).write_text(model_card(metadata))
    load_artefact(folder)  # refuse to register what could not be served
    row = ModelVersion(
        name=name,
        version=version,
        kind=model.name,
        domain=model.domain,
        stage=ModelStage.candidate,
        artefact_path=str(folder),
        features=list(model.feature_names),
        metrics=metrics,
        threshold=float(threshold),
        data_fingerprint=data_fingerprint,
        created_at=created,
    )
    db_session.add(row)
    db_session.flush()
    return row


def model_card(metadata: dict[str, Any]) -> str:
    """The markdown model card of one version."""
    design = DesignSpec.from_dict(metadata["design"])
    kind = str(metadata["kind"])
    lines = [
        f"# Model card: {metadata['name']} v{metadata['version']}",
        "",
        f"- **Kind:** {kind} ({_KIND_WORDS.get(kind, kind)})",
        f"- **Domain:** {metadata['domain']} events",
        f"- **Trained on:** {metadata.get('dataset', 'unknown')}",
        f"- **Training data fingerprint:** `{metadata['data_fingerprint']}`",
        f"- **Created:** {metadata['created_at']}",
        f"- **Alert threshold:** {metadata['threshold']:.3f} (scores at or above it count as suspicious)",
        "",
        "## What it does",
        "",
        "Gives each event a risk between 0 (looks usual) and 1 (looks like fraud or an attack), from the",
        "features below, computed by the same code in training and in the live pipeline.",
        "",
    ]
    history = metadata.get("history")
    if isinstance(history, dict):
        lines += [
            f"It reads the last {metadata.get('steps', history.get('steps'))} events of the same "
            f"`{history.get('key')}` (oldest first, this event last), with the inputs below for each.",
            "",
        ]
    lines += [
        "## Quality on held-out data",
        "",
    ]
    metrics = metadata.get("metrics") or {}
    if metrics:
        lines += ["| measure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("No held-out measurements were recorded.")
    lines += ["", "## Inputs", ""]
    lines += [f"- `{f}`: {describe_feature(design.domain, f)}" for f in metadata["features"]]
    lines += [
        "",
        "## Limits",
        "",
        "- Scores are only as good as the data it learned from; check the quality figures above before",
        "  promoting, and watch the score distribution after.",
        "- It does not decide anything alone: analysts review alerts, and their verdicts become training",
        "  labels for the next version.",
        "",
    ]
    return "\n".join(lines)


_KIND_WORDS = {
    "gbdt": "gradient-boosted decision trees, LightGBM",
    "iforest": "Isolation Forest, unsupervised: flags what is unusual",
    "hst": "half-space trees, unsupervised and online",
    "cnn": "1-D convolutional network",
    "lstm": "LSTM over the entity's recent events",
    "transformer": "Transformer encoder over the entity's recent events",
    "ensemble": "weighted fusion of several models",
}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@dataclass
class LoadedModel:
    """A servable artefact: its metadata, input design, ONNX scorer and (for LightGBM) explainer."""

    path: Path
    metadata: dict[str, Any]
    design: DesignSpec
    scorer: OnnxScorer
    explainer: Any | None = None

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def version(self) -> int:
        return int(self.metadata["version"])

    @property
    def kind(self) -> str:
        return str(self.metadata["kind"])

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def is_sequence(self) -> bool:
        """A sequence model (input: an entity's recent events), served by the deep tier's step."""
        return "history" in self.metadata


def load_artefact(path: Path | str, *, intra_op_threads: int = 2, explain: bool = True) -> LoadedModel:
    """Load and check an artefact folder.

    Raises
    ------
    ModelError
        Missing or unreadable files, metadata without a required field, an ONNX file whose hash differs
        from the metadata's, or a model whose input does not match its feature list.
    """
    folder = Path(path)
    try:
        metadata = json.loads((folder / METADATA).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: unreadable {METADATA}: {exc}") from exc
    if not isinstance(metadata, dict) or any(k not in metadata for k in _REQUIRED):
        raise ModelError(f"{folder}: {METADATA} lacks one of {', '.join(_REQUIRED)}")
    onnx_path = folder / ONNX_FILE
    if not onnx_path.is_file() or _sha256(onnx_path) != metadata["onnx_sha256"]:
        raise ModelError(f"{folder}: {ONNX_FILE} is missing or differs from the one registered")
    try:
        design = DesignSpec.from_dict(metadata["design"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder}: bad design in {METADATA}: {exc}") from exc
    scorer = OnnxScorer(onnx_path, intra_op_threads=intra_op_threads)
    sequence = "history" in metadata
    n_features = len(metadata.get("features") or ()) if sequence else len(design.feature_names)
    width = scorer.input_shape[-1]
    if isinstance(width, int) and width != n_features:
        raise ModelError(f"{folder}: the ONNX model takes {width} features, the metadata has {n_features}")
    steps = int(metadata.get("steps", metadata.get("extra", {}).get("steps", 1)))
    if sequence and scorer.rank != 3:
        raise ModelError(f"{folder}: a sequence model's graph must take (n, steps, features)")
    shape = (1, n_features) if scorer.rank == 2 else (1, steps, n_features)
    probe = scorer.predict_proba(np.zeros(shape, dtype=np.float32))
    if probe.shape != (1,) or not np.isfinite(probe).all():
        raise ModelError(f"{folder}: the model does not give one finite score per row")
    explainer = None
    if explain and (folder / NATIVE).is_file() and metadata["kind"] == "gbdt":
        from finsecure.ml.gbdt import GbdtModel

        explainer = GbdtModel.load_native(
            folder / NATIVE, domain=str(metadata["domain"]), feature_names=design.feature_names
        )
    return LoadedModel(folder, metadata, design, scorer, explainer)


def get_all(*, db_session: Session, name: str | None = None) -> list[ModelVersion]:
    """Every registered version (of one name), newest first."""
    stmt = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version.desc())
    if name is not None:
        stmt = stmt.where(ModelVersion.name == name)
    return list(db_session.scalars(stmt))


def production(*, db_session: Session) -> list[ModelVersion]:
    """The version in production for each name."""
    stmt = select(ModelVersion).where(ModelVersion.stage == ModelStage.production).order_by(ModelVersion.name)
    return list(db_session.scalars(stmt))


def get_or_raise(*, db_session: Session, name: str, version: int) -> ModelVersion:
    row = db_session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    if row is None:
        raise NotFound(f"no model {name!r} version {version}")
    return row


def promote(*, db_session: Session, name: str, version: int) -> ModelVersion:
    """Serve ``version`` of ``name`` (checked loadable first); the previous production one is archived."""
    row = get_or_raise(db_session=db_session, name=name, version=version)
    try:
        load_artefact(row.artefact_path, explain=False)
    except ModelError as exc:
        raise Conflict(f"model {name} v{version} cannot be served: {exc}") from exc
    now = utcnow()
    for other in db_session.scalars(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.stage == ModelStage.production)
    ):
        if other.id != row.id:
            other.stage = ModelStage.archived
    row.stage = ModelStage.production
    row.promoted_at = now
    db_session.flush()
    return row


def rollback(*, db_session: Session, name: str) -> ModelVersion:
    """Archive the production version of ``name`` and re-promote the one promoted before it."""
    current = db_session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.stage == ModelStage.production)
    )
    if current is None:
        raise NotFound(f"model {name!r} has no version in production")
    earlier = db_session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.name == name,
            ModelVersion.id != current.id,
            ModelVersion.promoted_at.is_not(None),
        )
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.version.desc())
    ).first()
    if earlier is None:
        raise Conflict(f"model {name!r} has no earlier promoted version to roll back to")
    promoted = promote(db_session=db_session, name=name, version=earlier.version)
    current.stage = ModelStage.archived
    # Rolled back: it leaves the promotion history, so a second rollback goes further back, not back to it.
    current.promoted_at = None
    db_session.flush()
    return promoted
