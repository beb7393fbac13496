"""Detection rules as data: the :class:`Rule` dataclass, built ``from_dict`` and loaded from YAML files.

One rule per file, ``rules/<domain>/<tactic_or_typology>_<name>.yml``. Loading never stops at a bad
rule: :func:`load_rules` returns the good rules and one :class:`RuleError` (file and key path) per bad one.

>>> rule = Rule.from_dict({
...     "id": "6d3f3b0e-7a51-4c36-9a43-3f0a1d2e9b10", "title": "Large payment", "description": "d",
...     "severity": "low", "domain": "payment", "kind": "match", "typology": "test", "triage": "t",
...     "status": "test", "explain": "Paid {amount:.2f}", "entity": "card_id",
...     "condition": {"field": "amount", "gt": 100},
... })
>>> rule.kind, rule.severity, rule.fields()
('match', 'low', ('amount', 'card_id'))
"""

from __future__ import annotations

import dataclasses
import re
import string
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
import yaml

from finsecure.detection.conditions import ConditionError, compile_condition, condition_fields
from finsecure.detection.sequence import SequenceSpec
from finsecure.event.schemas import Domain

__all__ = [
    "KINDS",
    "SEVERITIES",
    "STATUSES",
    "LoadResult",
    "ModelSpec",
    "Rule",
    "RuleError",
    "ThresholdSpec",
    "collect_errors",
    "load_rule_file",
    "load_rules",
    "parse_duration",
]

SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
KINDS: tuple[str, ...] = ("match", "threshold", "sequence", "model")
STATUSES: tuple[str, ...] = ("stable", "test", "experimental")
_ATTACK_ID = re.compile(r"^T\d{4}(\.\d{3})?$")
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
SEQUENCE_PLACEHOLDERS: frozenset[str] = frozenset({"elapsed_min", "first_time"})
"""Values a sequence rule's explain template may use beyond its last event's columns: minutes from the
first step to the last, and the time (HH:MM UTC) of the first step."""
Severity = Literal["low", "medium", "high", "critical"]


class RuleError(ValueError):
    """A rule that cannot be loaded: where (file, key path) and why, in plain words."""

    def __init__(self, location: str, key_path: str, message: str) -> None:
        where = f"{location}: {key_path}" if key_path else location
        super().__init__(f"{where}: {message}")
        self.location = location
        self.key_path = key_path
        self.message = message


def parse_duration(value: object, key_path: str = "window") -> int:
    """Seconds in ``"10m"``, ``"1h"``, ``"30s"``, ``"7d"`` or a whole number of seconds.

    >>> parse_duration("10m"), parse_duration(90)
    (600, 90)
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        found = _DURATION.match(value.strip())
        if found and int(found.group(1)) > 0:
            return int(found.group(1)) * _UNIT_S[found.group(2)]
    raise ConditionError(key_path, f"expected a duration such as '10m' or '1h', got {value!r}")


@dataclass(frozen=True, slots=True)
class ThresholdSpec:
    """Fire when ``agg`` over the events of one ``group_by`` value within ``window_s`` reaches ``gte``."""

    group_by: str
    window_s: int
    agg: Literal["count", "sum", "distinct"]
    gte: float
    field: str | None = None

    @classmethod
    def from_dict(cls, data: object, path: str = "threshold") -> ThresholdSpec:
        """Build from parsed YAML (``group_by``, ``window``, ``agg``, ``field``, ``gte``)."""
        if not isinstance(data, Mapping):
            raise ConditionError(path, "expected a mapping with group_by, window, agg and gte")
        unknown = sorted(set(data) - {"group_by", "window", "agg", "field", "gte"})
        if unknown:
            raise ConditionError(path, f"unknown key(s) {', '.join(unknown)}")
        agg = data.get("agg", "count")
        if agg not in ("count", "sum", "distinct"):
            raise ConditionError(f"{path}.agg", "must be count, sum or distinct")
        column = data.get("field")
        if agg != "count" and not isinstance(column, str):
            raise ConditionError(f"{path}.field", f"'{agg}' needs the column to add up or count")
        group_by = data.get("group_by")
        if not isinstance(group_by, str):
            raise ConditionError(f"{path}.group_by", "must be a column name")
        gte = data.get("gte")
        if isinstance(gte, bool) or not isinstance(gte, (int, float)) or gte <= 0:
            raise ConditionError(f"{path}.gte", "must be a positive number")
        window = parse_duration(data.get("window"), f"{path}.window")
        return cls(group_by, window, agg, float(gte), column if agg != "count" else None)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Fire when the model score column ``score`` is at least ``gte`` (never, while the column is absent)."""

    score: str
    gte: float

    @classmethod
    def from_dict(cls, data: object, path: str = "model") -> ModelSpec:
        """Build from parsed YAML (``score``, ``gte``)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("score"), str):
            raise ConditionError(f"{path}.score", "must name the score column")
        gte = data.get("gte")
        if isinstance(gte, bool) or not isinstance(gte, (int, float)):
            raise ConditionError(f"{path}.gte", "must be a number")
        return cls(str(data["score"]), float(gte))


@dataclass(frozen=True)
class Rule:
    """One detection rule, compiled. Build it with :meth:`from_dict` (or the Sigma converter)."""

    id: str
    title: str
    description: str
    severity: Severity
    domain: Domain
    kind: str
    triage: str
    status: str
    explain: str
    entity: str
    expr: pl.Expr | None = None
    """The match condition (for threshold rules: which events count; for model rules: an extra filter)."""
    condition_columns: frozenset[str] = frozenset()
    attack: tuple[str, ...] = ()
    typology: str | None = None
    threshold: ThresholdSpec | None = None
    model: ModelSpec | None = None
    sequence: SequenceSpec | None = None
    samples_positive: tuple[Mapping[str, Any], ...] = ()
    samples_negative: tuple[Mapping[str, Any], ...] = ()
    origin: str = "finsecure"
    path: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def fields(self) -> tuple[str, ...]:
        """Every column the rule reads: condition, entity, threshold/model columns, explain placeholders."""
        names = set(self.condition_columns) | {self.entity} | set(explain_fields(self.explain))
        if self.threshold is not None:
            names.add(self.threshold.group_by)
            if self.threshold.field:
                names.add(self.threshold.field)
        if self.model is not None:
            names.add(self.model.score)
        if self.sequence is not None:
            names -= SEQUENCE_PLACEHOLDERS
            for step in self.sequence.steps:
                if step.domain == self.domain:
                    names |= step.columns
        return tuple(sorted(names - {"value"}))

    def step_fields(self, domain: Domain) -> tuple[str, ...]:
        """Every column the rule reads from events of ``domain`` (a sequence rule reads several domains).

        >>> rule = Rule.from_dict({
        ...     "id": "6d3f3b0e-7a51-4c36-9a43-3f0a1d2e9b11", "title": "t", "description": "d",
        ...     "severity": "low", "domain": "payment", "kind": "sequence", "typology": "test",
        ...     "triage": "t", "status": "test", "explain": "{amount} after {elapsed_min} min",
        ...     "entity": "user_id", "sequence": {"window": "1h", "steps": [
        ...         {"domain": "auth", "condition": {"field": "action", "equals": "payee_add"}},
        ...         {"domain": "payment", "condition": {"field": "amount", "gt": 1000}}]},
        ... })
        >>> rule.step_fields(Domain.auth), rule.step_fields(Domain.payment)
        (('action', 'user_id'), ('amount', 'user_id'))
        """
        if self.sequence is None:
            return self.fields() if domain == self.domain else ()
        names: set[str] = set()
        for step in self.sequence.steps:
            if step.domain == domain:
                names |= step.columns
        if domain == self.domain:
            names |= set(self.fields())
        return tuple(sorted(names))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], location: str = "<rule>") -> Rule:
        """Validate and compile a rule from parsed YAML.

        Raises
        ------
        RuleError
            With ``location`` and the key path of the first problem.
        """
        try:
            return cls._from_dict(data, location)
        except ConditionError as exc:
            raise RuleError(location, exc.key_path, exc.message) from None

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], location: str) -> Rule:
        if not isinstance(data, Mapping):
            raise ConditionError("", "a rule file must hold one mapping")
        known = {
            "id", "title", "description", "severity", "domain", "kind", "attack", "typology", "triage",
            "status", "explain", "entity", "condition", "threshold", "model", "samples", "tags", "sequence",
        }  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConditionError(unknown[0], "unknown key")

        def text(key: str) -> str:
            value = data.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ConditionError(key, "is required and must be non-empty text")
            return value.strip()

        rule_id = text("id")
        try:
            uuid.UUID(rule_id)
        except ValueError:
            raise ConditionError("id", "must be a UUID, e.g. 0f8c...-...") from None

        def choice(key: str, options: Sequence[str]) -> str:
            value = text(key)
            if value not in options:
                raise ConditionError(key, f"must be one of {', '.join(options)}, got {value!r}")
            return value

        severity = choice("severity", SEVERITIES)
        domain = Domain(choice("domain", [d.value for d in Domain]))
        kind = choice("kind", KINDS)
        status = choice("status", STATUSES)
        attack = tuple(data.get("attack") or ())
        for index, technique in enumerate(attack):
            if not isinstance(technique, str) or not _ATTACK_ID.match(technique):
                raise ConditionError(
                    f"attack[{index}]", f"not an ATT&CK technique id like T1110.003: {technique!r}"
                )
        typology = data.get("typology")
        if typology is not None and not isinstance(typology, str):
            raise ConditionError("typology", "must be text")
        if not attack and not typology:
            raise ConditionError("attack", "give ATT&CK technique ids (attack) or a fraud typology")
        explain = text("explain")
        try:
            list(string.Formatter().parse(explain))
        except ValueError as exc:
            raise ConditionError("explain", f"not a valid template: {exc}") from None
        expr = None
        columns: frozenset[str] = frozenset()
        if "condition" in data:
            expr = compile_condition(data["condition"])
            columns = frozenset(condition_fields(data["condition"]))
        elif kind == "match":
            raise ConditionError("condition", "a match rule needs a condition")
        threshold = ThresholdSpec.from_dict(data.get("threshold")) if kind == "threshold" else None
        model = ModelSpec.from_dict(data.get("model")) if kind == "model" else None
        sequence = None
        if kind == "sequence":
            if "condition" in data:
                raise ConditionError("condition", "a sequence rule puts its conditions in its steps")
            sequence = SequenceSpec.from_dict(data.get("sequence"), default_by=text("entity"))
            if sequence.steps[-1].domain != domain:
                raise ConditionError(
                    "sequence.steps", f"the last step must be in the rule's domain ({domain.value})"
                )
        elif "sequence" in data:
            raise ConditionError("sequence", "only a sequence rule has steps")
        samples = data.get("samples") or {}
        if not isinstance(samples, Mapping) or set(samples) - {"positive", "negative"}:
            raise ConditionError("samples", "must be a mapping with 'positive' and 'negative' lists")
        positive = tuple(samples.get("positive") or ())
        negative = tuple(samples.get("negative") or ())
        for key, events in (("positive", positive), ("negative", negative)):
            for index, event in enumerate(events):
                if not isinstance(event, Mapping):
                    raise ConditionError(f"samples.{key}[{index}]", "each sample event must be a mapping")
        rule = cls(
            id=rule_id,
            title=text("title"),
            description=text("description"),
            severity=severity,  # type: ignore[arg-type]  # checked against SEVERITIES above
            domain=domain,
            kind=kind,
            triage=text("triage"),
            status=status,
            explain=explain,
            entity=text("entity"),
            expr=expr,
            condition_columns=columns,
            attack=attack,
            typology=typology,
            threshold=threshold,
            model=model,
            sequence=sequence,
            samples_positive=positive,
            samples_negative=negative,
            path=location,
            tags=tuple(str(tag) for tag in data.get("tags") or ()),
        )
        rule.check_columns()
        return rule

    def check_columns(self) -> None:
        """Compile-time check against the domain's columns: unknown columns and type mismatches fail here,
        not on a live batch.

        Raises
        ------
        ConditionError
            Naming the column or the expression problem.
        """
        from finsecure.detection.frames import domain_schema

        if self.sequence is not None:
            for index, step in enumerate(self.sequence.steps):
                step_schema = domain_schema(step.domain)
                for name in sorted(step.columns):
                    if name not in step_schema:
                        message = f"{name!r} is not a column of {step.domain.value} events"
                        raise ConditionError(f"sequence.steps[{index}]", message)
                try:
                    pl.DataFrame(schema=step_schema).select(step.expr)
                except pl.exceptions.PolarsError as exc:
                    first = str(exc).splitlines()[0]
                    raise ConditionError(
                        f"sequence.steps[{index}].condition", f"does not fit the column types: {first}"
                    ) from None
        schema = dict(domain_schema(self.domain))
        if self.model is not None:
            schema.setdefault(self.model.score, pl.Float64())
        for name in self.fields():
            if name not in schema:
                raise ConditionError("condition", f"{name!r} is not a column of {self.domain.value} events")
        if self.expr is not None:
            try:
                pl.DataFrame(schema=schema).select(self.expr)
            except pl.exceptions.PolarsError as exc:
                first = str(exc).splitlines()[0]
                raise ConditionError("condition", f"does not fit the column types: {first}") from None

    def with_changes(self, **changes: Any) -> Rule:
        """A copy with some attributes replaced."""
        return dataclasses.replace(self, **changes)


def explain_fields(template: str) -> list[str]:
    """Placeholder names in an explain template.

    >>> explain_fields("Card used {geo__distance_km:.0f} km, {geo__speed_kmh:.0f} km/h")
    ['geo__distance_km', 'geo__speed_kmh']
    """
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError:
        return []


def load_rule_file(path: Path) -> Rule:
    """Load and compile one rule file.

    Raises
    ------
    RuleError
        With the file (and line, for YAML syntax errors) and key path.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise RuleError(where, "", f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except OSError as exc:
        raise RuleError(str(path), "", f"cannot read the file: {exc.strerror}") from None
    return Rule.from_dict(data, str(path))


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Rules that loaded and one error per file that did not."""

    rules: tuple[Rule, ...]
    errors: tuple[RuleError, ...]


def collect_errors(paths: Sequence[Path]) -> LoadResult:
    """Load every file; a bad rule (or a duplicate id) is reported and the others still load."""
    rules: list[Rule] = []
    errors: list[RuleError] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            rule = load_rule_file(path)
        except RuleError as exc:
            errors.append(exc)
            continue
        if rule.id in seen:
            errors.append(RuleError(str(path), "id", f"the same id is already used by {seen[rule.id]}"))
            continue
        seen[rule.id] = str(path)
        rules.append(rule)
    return LoadResult(tuple(rules), tuple(errors))


def load_rules(directory: Path) -> LoadResult:
    """Load every ``*.yml`` rule under ``directory`` (sorted, recursively)."""
    return collect_errors(sorted(directory.rglob("*.yml")))
