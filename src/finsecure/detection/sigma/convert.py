"""Sigma rules, loaded unchanged with pySigma, mapped to canonical columns and compiled to Polars.

The field names are mapped by the YAML processing pipeline shipped beside this module
(``pipeline.yml``); the parsed detection tree (and/or/not, field = value) is then walked into one
``pl.Expr``. Supported values: strings (case-insensitive, as Sigma wants, with ``*``/``?`` wildcards,
so ``contains``/``startswith``/``endswith``/``all`` work), ``re``, ``cidr`` (IPv4/IPv6 prefixes),
numbers, booleans (``'No'``/``'yes'`` on a true/false column) and null.

A field with no canonical column (``requestParameters.containerDefinitions.command``, ``ResultType``,
``riskEventType``...) and a keyword search read the source record itself: the optional ``raw`` column
(:data:`RAW_COLUMN`) holds it as one JSON object of dotted paths to text (:func:`raw_record`; values
of a list are joined by new lines and any of them may match). Batches without that column read it as
empty, so such a rule simply does not fire there. The cloud and audit feeds' mappings keep the record
(``keep_raw: true``, :mod:`finsecure.ingest.source_record`), so these rules run on live events too.
Anything else (field references, placeholders, log sources FinSecure does not know) is reported with
the reason: :class:`SigmaUnsupported`, never a crash.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.exceptions import SigmaError
from sigma.processing.pipeline import ProcessingPipeline
from sigma.rule import SigmaRule
from sigma.types import (
    SigmaBool,
    SigmaCIDRExpression,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SpecialChars,
)

from finsecure.detection.frames import domain_schema
from finsecure.detection.rule import Rule
from finsecure.event.schemas import Domain
from finsecure.ingest.source_record import RAW_COLUMN, flat_record

__all__ = [
    "LOGSOURCE_DOMAINS",
    "PIPELINE_PATH",
    "RAW_COLUMN",
    "SigmaUnsupported",
    "compile_sigma",
    "load_pipeline",
    "raw_fields",
    "raw_record",
    "sigma_rule_from_path",
]

PIPELINE_PATH = Path(__file__).with_name("pipeline.yml")
LOGSOURCE_DOMAINS: dict[tuple[str, str], Domain] = {
    ("aws", "cloudtrail"): Domain.cloud,
    ("azure", "signinlogs"): Domain.auth,
    ("azure", "auditlogs"): Domain.cloud,
    ("azure", "activitylogs"): Domain.cloud,
    ("azure", "riskdetection"): Domain.auth,
    ("azure", "pim"): Domain.cloud,
}
"""Sigma log sources (product, service) that FinSecure normalises, and the domain they land in."""

_LEVELS = {"informational": "low", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}
_STATUSES = {"stable": "stable", "test": "test"}
_TRUE = frozenset({"yes", "true", "1"})
_FALSE = frozenset({"no", "false", "0"})
_REGEX_META = frozenset("\\.^$|?*+()[]{}")


class SigmaUnsupported(ValueError):
    """A Sigma rule (or part of one) that cannot be compiled, with the reason in plain words."""


@functools.cache
def load_pipeline() -> ProcessingPipeline:
    """The shipped field-mapping pipeline (``pipeline.yml``)."""
    return ProcessingPipeline.from_yaml(PIPELINE_PATH.read_text(encoding="utf-8"))


def sigma_rule_from_path(path: Path) -> SigmaRule:
    """Load one Sigma rule file unchanged.

    Raises
    ------
    SigmaUnsupported
        When pySigma cannot read it (the first error, with the file).
    """
    try:
        rule = SigmaRule.from_yaml(path.read_text(encoding="utf-8"), collect_errors=True)
    except (SigmaError, ValueError, OSError) as exc:
        raise SigmaUnsupported(f"{path}: cannot be read as a Sigma rule: {exc}") from None
    if rule.errors:
        raise SigmaUnsupported(f"{path}: {rule.errors[0]}")
    return rule


def raw_record(record: Mapping[str, Any]) -> str:
    r"""A source record as the ``raw`` column holds it (:func:`finsecure.ingest.source_record.flat_record`):
    dotted paths to text, lists flattened (values joined by new lines), JSON text inside a value opened up.

    >>> raw_record({"a": {"b": [{"c": 1}, {"c": "x"}]}, "d": '{"e": true}', "f": None})
    '{"a.b.c": "1\\nx", "d.e": "true"}'
    """
    return flat_record(record)


def raw_fields(rule: Rule) -> tuple[str, ...]:
    """The Sigma fields a compiled rule reads from the raw record (``(keywords)`` for a keyword search)."""
    return tuple(tag.removeprefix("raw:") for tag in rule.tags if tag.startswith("raw:"))


def _raw_value(field: str) -> pl.Expr:
    quoted = field.replace("\\", "\\\\").replace("'", "\\'")
    return pl.col(RAW_COLUMN).str.json_path_match(f"$['{quoted}']")


def _raw_pattern(value: SigmaString) -> str:
    """A regular expression matching one whole line of a raw value (case-insensitive, Sigma wildcards)."""
    body = "".join(
        _escape(part)
        if isinstance(part, str)
        else ("[^\\n]*" if part == SpecialChars.WILDCARD_MULTI else ".")
        for part in value.s
    )
    return f"(?im)^{body}$"


def _raw_expr(field: str, value: object) -> pl.Expr:
    """A Sigma value compared with a field read from the raw record (any of its lines may match)."""
    text = _raw_value(field)
    if isinstance(value, SigmaNull):
        return text.is_null()
    if isinstance(value, SigmaString):
        if value.contains_placeholder():
            raise SigmaUnsupported(f"placeholder values ({field}) are not supported")
        return text.str.contains(_raw_pattern(value))
    if isinstance(value, SigmaBool):
        return text.str.contains(f"(?im)^{str(value.boolean).lower()}$")
    if isinstance(value, SigmaNumber):
        return text.str.contains(f"(?m)^{_escape(str(value.number))}(\\.0+)?$")
    if isinstance(value, SigmaRegularExpression):
        return _regex_expr(field, text, value)
    if isinstance(value, SigmaCIDRExpression):
        prefixes = [_escape(prefix.rstrip("*")) for prefix in value.expand()]
        return text.str.contains(f"(?m)^({'|'.join(prefixes)})")
    raise SigmaUnsupported(f"{field}: values of type {type(value).__name__} are not supported")


def _keyword_expr(value: object) -> pl.Expr:
    """A keyword search (a value without a field): anywhere in the raw record's values."""
    if isinstance(value, SigmaString):
        if value.contains_placeholder():
            raise SigmaUnsupported("placeholder values in keywords are not supported")
        body = "".join(
            _escape(part) if isinstance(part, str) else (".*" if part == SpecialChars.WILDCARD_MULTI else ".")
            for part in value.s
        )
        return pl.col(RAW_COLUMN).str.contains(f"(?i){body}")
    if isinstance(value, SigmaNumber):
        return pl.col(RAW_COLUMN).str.contains(_escape(str(value.number)), literal=False)
    raise SigmaUnsupported(f"keyword values of type {type(value).__name__} are not supported")


def _regex_expr(field: str, column: pl.Expr, value: SigmaRegularExpression) -> pl.Expr:
    names = {"IGNORECASE": "i", "MULTILINE": "m", "DOTALL": "s"}
    flags = "".join(sorted(names.get(str(flag.name), "") for flag in value.flags))
    raw = value.regexp.to_plain() if isinstance(value.regexp, SigmaString) else str(value.regexp)
    pattern = f"(?{flags}){raw}" if flags else raw
    try:
        pl.DataFrame({"x": ["probe"]}).select(pl.col("x").str.contains(pattern))
    except pl.exceptions.PolarsError:
        raise SigmaUnsupported(f"{field}: regular expression not supported by the engine") from None
    return column.cast(pl.String).str.contains(pattern)


def _escape(text: str) -> str:
    return "".join(f"\\{char}" if char in _REGEX_META else char for char in text)


def _string_expr(column: pl.Expr, dtype: pl.DataType, value: SigmaString, field: str) -> pl.Expr:
    if value.contains_placeholder():
        raise SigmaUnsupported(f"placeholder values ({field}) are not supported")
    if dtype == pl.Boolean():
        plain = value.to_plain().lower()
        if plain in _TRUE:
            return column.eq(True)
        if plain in _FALSE:
            return column.eq(False)
        raise SigmaUnsupported(f"{field}: {plain!r} is not a yes/no value")
    if dtype.is_numeric():
        try:
            return column.cast(pl.Float64).eq(float(value.to_plain()))
        except ValueError:
            raise SigmaUnsupported(f"{field}: {value.to_plain()!r} is not a number") from None
    parts = list(value.s)
    lowered = column.str.to_lowercase()
    if all(isinstance(part, str) for part in parts):
        return lowered.eq(value.to_plain().lower())
    is_multi = [part == SpecialChars.WILDCARD_MULTI for part in parts]
    if len(parts) == 3 and is_multi[0] and is_multi[2] and isinstance(parts[1], str):
        return lowered.str.contains(parts[1].lower(), literal=True)
    if len(parts) == 2 and is_multi[1] and isinstance(parts[0], str):
        return lowered.str.starts_with(parts[0].lower())
    if len(parts) == 2 and is_multi[0] and isinstance(parts[1], str):
        return lowered.str.ends_with(parts[1].lower())
    pattern = "".join(
        _escape(part) if isinstance(part, str) else (".*" if part == SpecialChars.WILDCARD_MULTI else ".")
        for part in parts
    )
    return column.str.contains(f"(?is)^{pattern}$")


def _value_expr(field: str, column_name: str, dtype: pl.DataType, value: object) -> pl.Expr:
    column = pl.col(column_name)
    if isinstance(value, SigmaNull):
        return column.is_null()
    if isinstance(value, SigmaString):
        return _string_expr(column, dtype, value, field)
    if isinstance(value, SigmaBool):
        return (
            column.eq(value.boolean)
            if dtype == pl.Boolean()
            else column.cast(pl.String).str.to_lowercase().eq(str(value.boolean).lower())
        )
    if isinstance(value, SigmaNumber):
        if dtype.is_numeric():
            return column.eq(value.number)
        return column.cast(pl.String).eq(str(value.number))
    if isinstance(value, SigmaRegularExpression):
        return _regex_expr(field, column, value)
    if isinstance(value, SigmaCIDRExpression):
        prefixes = [prefix.rstrip("*") for prefix in value.expand()]
        return pl.any_horizontal([column.str.starts_with(prefix) for prefix in prefixes])
    raise SigmaUnsupported(f"{field}: values of type {type(value).__name__} are not supported")


def _walk(node: object, schema: pl.Schema, raw: list[str]) -> pl.Expr:
    """The Polars expression of a parsed condition; fields read from the raw record go to ``raw``."""
    if isinstance(node, ConditionAND):
        return pl.all_horizontal([_walk(arg, schema, raw) for arg in node.args])
    if isinstance(node, ConditionOR):
        return pl.any_horizontal([_walk(arg, schema, raw) for arg in node.args])
    if isinstance(node, ConditionNOT):
        return ~_walk(node.args[0], schema, raw)
    if isinstance(node, ConditionFieldEqualsValueExpression):
        field = str(node.field)
        if field not in schema:
            raw.append(field)
            return _raw_expr(field, node.value).fill_null(False)
        return _value_expr(field, field, schema[field], node.value).fill_null(False)
    if isinstance(node, ConditionValueExpression):
        raw.append("(keywords)")
        return _keyword_expr(node.value).fill_null(False)
    raise SigmaUnsupported(f"condition element {type(node).__name__} is not supported")


def _domain(rule: SigmaRule) -> Domain:
    key = (str(rule.logsource.product or ""), str(rule.logsource.service or ""))
    domain = LOGSOURCE_DOMAINS.get(key)
    if domain is None:
        raise SigmaUnsupported(f"log source {key[0]}/{key[1]} is not normalised by FinSecure")
    return domain


def compile_sigma(rule: SigmaRule, *, location: str = "<sigma>") -> Rule:
    """Map a loaded Sigma rule's fields with the pipeline and compile it to a match :class:`Rule`.

    Raises
    ------
    SigmaUnsupported
        With the reason the rule cannot run on canonical events.
    """
    domain = _domain(rule)
    try:
        load_pipeline().apply(rule)
        trees = [condition.parse() for condition in rule.detection.parsed_condition]
    except SigmaError as exc:
        raise SigmaUnsupported(f"cannot be processed: {exc}") from None
    schema = domain_schema(domain)
    raw: list[str] = []
    try:
        parts = [_walk(tree, schema, raw) for tree in trees]
    except (TypeError, AttributeError) as exc:
        # pySigma value types this converter does not know yet: report, never crash the caller.
        raise SigmaUnsupported(f"cannot be converted: {exc}") from None
    expr = parts[0] if len(parts) == 1 else pl.any_horizontal(parts)
    try:
        pl.DataFrame(schema={**schema, RAW_COLUMN: pl.String()}).select(expr)
    except pl.exceptions.PolarsError as exc:
        raise SigmaUnsupported(f"does not fit the column types: {str(exc).splitlines()[0]}") from None
    attack = tuple(
        f"T{tag.name[1:].upper()}"
        for tag in rule.tags
        if tag.namespace == "attack" and re.match(r"t\d{4}", tag.name)
    )
    level = rule.level.name.lower() if rule.level is not None else "medium"
    status = rule.status.name.lower() if rule.status is not None else "experimental"
    entity = "user_id"
    return Rule(
        id=str(rule.id),
        title=rule.title,
        description=(rule.description or rule.title).strip(),
        severity=_LEVELS.get(level, "medium"),  # type: ignore[arg-type]  # values of _LEVELS are severities
        domain=domain,
        kind="match",
        triage="Sigma rule: check the false positives it lists: "
        + "; ".join(str(item) for item in (rule.falsepositives or ["none listed"])),
        status=_STATUSES.get(status, "experimental"),
        explain=f"{rule.title} (Sigma rule)",
        entity=entity,
        expr=expr,
        condition_columns=frozenset({RAW_COLUMN}) if raw else frozenset(),
        attack=attack,
        typology=None,
        origin="sigma",
        path=location,
        tags=tuple(f"raw:{name}" for name in sorted(set(raw))),
    )
