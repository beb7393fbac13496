"""``sigma_report``: which Sigma rules of a folder load, compile and fire on given events."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from finsecure.detection.engine import RuleSet
from finsecure.detection.sigma.convert import (
    RAW_COLUMN,
    SigmaUnsupported,
    compile_sigma,
    raw_fields,
    raw_record,
    sigma_rule_from_path,
)
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch

__all__ = ["SigmaReportRow", "raw_records", "sigma_report", "with_raw"]

#: Keys that name a record in the raw formats FinSecure reads (CloudTrail, Azure AD, Office 365).
ID_KEYS = ("eventID", "Id", "id", "event_id")


@dataclass(frozen=True, slots=True)
class SigmaReportRow:
    """One Sigma rule file: whether it loaded, compiled, how many events it fired on, and why not."""

    path: str
    loaded: bool
    compiled: bool
    fired: int
    reason: str = ""
    title: str = ""
    raw_fields: tuple[str, ...] = ()
    """Fields read from the source record rather than a canonical column."""


def sigma_report(
    directory: Path, events: Mapping[Domain, pl.DataFrame] | None = None
) -> list[SigmaReportRow]:
    """Load and compile every ``*.yml`` Sigma rule under ``directory`` and, when canonical ``events``
    (frames by domain) are given, count the events each compiled rule fires on. Never raises for a
    bad rule: its row says why."""
    rows: list[SigmaReportRow] = []
    for path in sorted(directory.rglob("*.yml")):
        try:
            sigma_rule = sigma_rule_from_path(path)
        except SigmaUnsupported as exc:
            rows.append(SigmaReportRow(str(path), False, False, 0, str(exc).removeprefix(f"{path}: ")))
            continue
        try:
            rule = compile_sigma(sigma_rule, location=str(path))
        except SigmaUnsupported as exc:
            rows.append(SigmaReportRow(str(path), True, False, 0, str(exc), sigma_rule.title))
            continue
        fired = 0
        frame = (events or {}).get(rule.domain)
        if frame is not None and frame.height:
            fired = RuleSet([rule]).evaluate(Batch(rule.domain, frame, "sigma-report")).height
        rows.append(SigmaReportRow(str(path), True, True, fired, "", rule.title, raw_fields(rule)))
    return rows


def _texts(path: Path) -> Iterator[str]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith("/"):
                    yield archive.read(name).decode("utf-8", errors="replace")
    elif path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
            yield handle.read()
    else:
        yield path.read_text(encoding="utf-8", errors="replace")


def raw_records(path: Path) -> Iterator[Mapping[str, Any]]:
    """The JSON records of a file: one per line, a JSON list, or CloudTrail's ``{"Records": [...]}``
    (inside a zip or gzip file too). Lines that are not JSON objects are skipped."""
    for text in _texts(path):
        stripped = text.lstrip()
        if stripped.startswith("[") or (stripped.startswith("{") and '"Records"' in stripped[:200]):
            try:
                data = json.loads(stripped)
            except ValueError:
                data = None
            if data is not None:
                items = data.get("Records", []) if isinstance(data, dict) else data
                yield from (item for item in items if isinstance(item, dict))
                continue
        for line in io.StringIO(text):
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                yield item


def with_raw(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """``frame`` (canonical events read from ``path``) with the :data:`RAW_COLUMN` of each event's
    source record, matched by record id (for the report, not the pipeline: one Python pass over the
    file)."""
    ids: list[str] = []
    texts: list[str] = []
    for record in raw_records(path):
        key = next((record[k] for k in ID_KEYS if record.get(k) not in (None, "")), None)
        if key is not None:
            ids.append(str(key))
            texts.append(raw_record(record))
    raw = pl.DataFrame(
        {"event_id": ids, RAW_COLUMN: texts}, schema={"event_id": pl.String, RAW_COLUMN: pl.String}
    )
    raw = raw.unique(subset="event_id", keep="first")
    return frame.drop(RAW_COLUMN, strict=False).join(raw, on="event_id", how="left")
