"""Mappings as data: how one raw format becomes canonical events.

A mapping is a YAML file (``finsecure/ingest/mappings/<name>.yml``) or a dict, turned into frozen
dataclasses by :meth:`Mapping.from_dict`. It says how to read the raw file (``read``), which domain
each record goes to (``domain``, or ``domains`` with conditions), and how to build each canonical
field (``fields``). :class:`finsecure.ingest.normalise.Normaliser` compiles it into Polars
expressions; nothing here runs per record.

A field is a *value* (exactly one of ``column``, ``const``, ``template``, ``when``, ``cases``)
followed by optional *steps*, applied in this order: ``regex`` (extract the first matching group),
``strip``, ``lower`` / ``upper``, ``null_if``, ``null_unless`` (regex), ``map`` (+ ``default``),
``cast``, ``scale``, ``timestamp``, ``hash``, ``truncate``; then ``default`` fills what is still null
(with ``map`` or ``cases``, ``default`` is instead the value for anything unmapped). A plain string
or list is short for ``column``.

Column names may be nested paths (``userIdentity.sessionContext.attributes.mfaAuthenticated``,
``resources.0.ARN``); a path that runs into JSON text (Azure's ``InitiatedBy``) continues inside it.
``$offset`` (the record's position in the source), ``$source`` (the source name) and ``$<var>``
(a value defined under ``vars``) can be used wherever a column can.

Example
-------
>>> mapping = Mapping.from_dict({
...     "name": "tiny",
...     "source": "tiny_feed",
...     "read": {"format": "csv"},
...     "domain": "payment",
...     "fields": {
...         "event_id": "id",
...         "ts": {"column": "when", "timestamp": {"unit": "s"}},
...         "amount": {"column": "amt", "cast": "float"},
...         "terminal_id": {"template": "T{term}"},
...     },
... })
>>> mapping.rules[0].domain.value, sorted(mapping.rules[0].fields)
('payment', ['amount', 'event_id', 'terminal_id', 'ts'])
>>> Mapping.from_dict({"name": "bad", "read": {"format": "xml"}, "domain": "payment", "fields": {}})
Traceback (most recent call last):
...
finsecure.ingest.mapping.MappingError: <dict>: read.format: must be one of csv, ndjson, json-records, parquet
"""

from __future__ import annotations

import datetime as dt
import re
import string
import zoneinfo
from collections.abc import Mapping as AbcMapping
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from finsecure.event.schemas import ARROW_SCHEMAS, Domain

__all__ = [
    "FIELD_TYPES",
    "FORMATS",
    "Condition",
    "DomainRule",
    "FieldSpec",
    "Mapping",
    "MappingError",
    "ReadSpec",
    "TimestampSpec",
    "available_mappings",
    "load_mapping",
]

FORMATS: tuple[str, ...] = ("csv", "ndjson", "json-records", "parquet")
"""Raw formats a mapping can read."""

CASTS: tuple[str, ...] = ("str", "int", "float", "bool")
FIELD_TYPES: tuple[str, ...] = CASTS
"""JSON types a ``read.fields`` hint may name."""
TIME_UNITS: tuple[str, ...] = ("s", "ms", "us", "ns")
COMPARISONS: tuple[str, ...] = (
    "equals",
    "ne",
    "in",
    "not_in",
    "matches",
    "is_null",
    "not_null",
    "gt",
    "ge",
    "lt",
    "le",
)
VALUE_KEYS: tuple[str, ...] = ("column", "const", "template", "when", "cases")
STEP_KEYS: tuple[str, ...] = (
    "regex",
    "strip",
    "lower",
    "upper",
    "null_if",
    "null_unless",
    "map",
    "default",
    "cast",
    "scale",
    "timestamp",
    "hash",
    "truncate",
)
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNMATCHED = "matches none of the mapping's domain rules"


class MappingError(ValueError):
    """A mapping that cannot be used; the message starts with the file and the key path."""


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """How to read the raw file.

    Attributes
    ----------
    format
        One of :data:`FORMATS`.
    header
        CSV: whether the first line names the columns.
    columns
        CSV without header: the column names, in order.
    separator
        CSV field separator.
    records_path
        JSON: where the list of records sits in each document (``Records`` for CloudTrail); a
        document without it is taken as one record.
    fields
        NDJSON: the top-level fields records are expected to carry and their JSON types (one of
        :data:`FIELD_TYPES`). A hint that lets the reader parse whole chunks with a fixed schema;
        never a filter: records with other fields or other types are still read in full.
    """

    format: str
    header: bool = True
    columns: tuple[str, ...] | None = None
    separator: str = ","
    records_path: str | None = None
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    """A test on a record: a comparison of one column, or ``all`` / ``any`` / ``not`` of others."""

    op: str
    column: str | None = None
    value: Any = None
    children: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class TimestampSpec:
    """How to turn a value into a UTC time.

    Exactly one style: ``format`` (``iso8601`` or a strftime pattern; text without an offset is read
    in ``timezone``, and rejected when no ``timezone`` is given) or ``unit`` (a number of
    ``s``/``ms``/``us``/``ns`` since the Unix epoch, or since ``start`` when given, plus
    ``days_column`` whole days when given).
    """

    format: str | None = None
    timezone: str | None = None
    unit: str | None = None
    start: dt.datetime | None = None
    days_column: str | None = None


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """How to build one canonical field (see the module docstring for the order of steps)."""

    columns: tuple[str, ...] = ()
    const: Any = None
    has_const: bool = False
    template: str | None = None
    when: Condition | None = None
    cases: tuple[tuple[Condition, Any], ...] = ()
    cases_default: Any = None
    regex: str | None = None
    strip: bool = False
    lower: bool = False
    upper: bool = False
    null_if: tuple[str, ...] = ()
    null_unless: str | None = None
    map: tuple[tuple[str, Any], ...] | None = None
    map_default: Any = "keep"
    cast: str | None = None
    scale: float | None = None
    timestamp: TimestampSpec | None = None
    hash: bool = False
    hash_prefix: str = ""
    truncate: int | None = None
    fill: Any = None

    def references(self) -> set[str]:
        """Every column or ``$name`` this field reads."""
        found = set(self.columns)
        if self.template is not None:
            found.update(template_columns(self.template))
        for condition in [self.when, *(c for c, _ in self.cases)]:
            if condition is not None:
                found.update(condition_columns(condition))
        if self.timestamp is not None and self.timestamp.days_column is not None:
            found.add(self.timestamp.days_column)
        return found


@dataclass(frozen=True, slots=True)
class DomainRule:
    """Rows matching ``when`` (all rows when ``None``) become events of ``domain`` with ``fields``."""

    domain: Domain
    when: Condition | None
    fields: AbcMapping[str, FieldSpec]


@dataclass(frozen=True, slots=True)
class Mapping:
    """A whole mapping. Build it with :meth:`from_dict` or :func:`load_mapping`.

    Attributes
    ----------
    name
        Short id, e.g. ``sparkov``.
    source
        Value of the canonical ``source`` field (``aws_cloudtrail``...), unless a field sets it.
    read
        How to read the raw file.
    rules
        Domain rules, tried in order; a row goes to the first that matches.
    unmatched
        ``reject`` (dead letter) or ``skip`` rows that match no rule.
    unmatched_reason
        The dead-letter reason of rows that match no rule.
    vars
        Named intermediate values, usable as ``$name`` by later vars and by fields.
    sensitive
        Columns kept out of dead letters (the inputs of ``hash`` fields, e.g. card numbers).
    unknown_fields
        ``ignore`` raw fields the mapping does not read (the default: raw feeds carry plenty), or
        ``reject`` a record holding a non-null value in a field its domain rule does not read (for
        canonical events, where such a field is a sender's mistake that would otherwise vanish).
    keep_raw
        Keep each cloud or auth event's source record in an extra ``raw`` column
        (:mod:`finsecure.ingest.source_record`), for Sigma rules that read fields with no canonical column.
    description, origin
        Free text; the file it came from (for error messages).
    """

    name: str
    source: str
    read: ReadSpec
    rules: tuple[DomainRule, ...]
    unmatched: Literal["reject", "skip"] = "reject"
    unmatched_reason: str = _UNMATCHED
    vars: tuple[tuple[str, FieldSpec], ...] = ()
    sensitive: frozenset[str] = frozenset()
    unknown_fields: Literal["ignore", "reject"] = "ignore"
    description: str = ""
    origin: str = "<dict>"
    domains: tuple[Domain, ...] = field(default=())
    keep_raw: bool = False

    @classmethod
    def from_dict(cls, data: object, *, origin: str = "<dict>") -> Mapping:
        """Build and check a mapping; raise :class:`MappingError` naming ``origin`` and the key path."""
        return _Parser(origin).mapping(data)

    def read_columns(self) -> frozenset[str] | None:
        """The raw columns the mapping reads, or ``None`` when every column matters (``unknown_fields:
        reject`` looks at all of them). Readers may skip the others. A path names both its first part
        and itself, since a column may also be called ``a.b``.

        >>> sorted(Mapping.from_dict({
        ...     "name": "m", "read": {"format": "csv"}, "domain": "auth",
        ...     "fields": {"ts": {"column": "when.utc", "timestamp": {"unit": "s"}}, "user_id": "who"},
        ... }).read_columns() or [])
        ['when', 'when.utc', 'who']
        """
        if self.unknown_fields == "reject" or self.keep_raw:
            return None
        paths = {ref for ref in self.references() if not ref.startswith("$")}
        return frozenset(paths | {path.split(".", 1)[0] for path in paths})

    def references(self) -> set[str]:
        """Every raw column path (and ``$name``) the mapping reads."""
        found: set[str] = set()
        for _, spec in self.vars:
            found |= spec.references()
        for rule in self.rules:
            if rule.when is not None:
                found |= condition_columns(rule.when)
            for spec in rule.fields.values():
                found |= spec.references()
        return found


def template_columns(template: str) -> list[str]:
    """The column names inside a ``{...}`` template.

    >>> template_columns("T{TERMINAL_ID}-{$offset}")
    ['TERMINAL_ID', '$offset']
    """
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def condition_columns(condition: Condition) -> set[str]:
    """The column names a condition reads."""
    found = {condition.column} if condition.column is not None else set()
    for child in condition.children:
        found |= condition_columns(child)
    return found


class _Parser:
    """Turns plain data into the dataclasses above, with errors that carry their key path."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, path: str, message: str) -> MappingError:
        return MappingError(f"{self.origin}: {path}: {message}" if path else f"{self.origin}: {message}")

    def mapping_of(self, value: object, path: str) -> AbcMapping[str, Any]:
        if not isinstance(value, AbcMapping) or not all(isinstance(key, str) for key in value):
            raise self.fail(path, "must be a mapping of names to values")
        return value

    def text(self, value: object, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, "must be non-empty text")
        return value

    def unknown(self, data: AbcMapping[str, Any], allowed: Sequence[str], path: str) -> None:
        extra = sorted(set(data) - set(allowed))
        if extra:
            where = f"{path}." if path else ""
            raise self.fail(f"{where}{extra[0]}", f"unknown key; expected one of {', '.join(allowed)}")

    def mapping(self, raw: object) -> Mapping:
        data = self.mapping_of(raw, "")
        keys = (
            "name",
            "description",
            "source",
            "read",
            "domain",
            "domains",
            "fields",
            "vars",
            "unmatched",
            "unmatched_reason",
            "unknown_fields",
            "keep_raw",
        )
        self.unknown(data, keys, "")
        name = self.text(data.get("name"), "name")
        source = self.text(data.get("source", name), "source")
        read = self.read(data.get("read"), "read")
        unmatched = data.get("unmatched", "reject")
        if unmatched not in ("reject", "skip"):
            raise self.fail("unmatched", "must be 'reject' or 'skip'")
        unknown_fields = data.get("unknown_fields", "ignore")
        if unknown_fields not in ("ignore", "reject"):
            raise self.fail("unknown_fields", "must be 'ignore' or 'reject'")
        keep_raw = data.get("keep_raw", False)
        if not isinstance(keep_raw, bool):
            raise self.fail("keep_raw", "must be true or false")
        vars_: list[tuple[str, FieldSpec]] = []
        for var_name, spec in self.mapping_of(data.get("vars", {}), "vars").items():
            if _VAR_NAME.fullmatch(var_name) is None:
                raise self.fail(f"vars.{var_name}", "must be a plain name (letters, digits, '_')")
            vars_.append((var_name, self.field_spec(spec, f"vars.{var_name}")))
        common = self.mapping_of(data.get("fields", {}), "fields")
        if ("domain" in data) == ("domains" in data):
            raise self.fail("", "give exactly one of 'domain' (fixed) or 'domains' (chosen per row)")
        rules: list[DomainRule] = []
        if "domain" in data:
            domain = self.domain(data["domain"], "domain")
            rules.append(DomainRule(domain, None, self.fields(domain, common, {}, "fields")))
        else:
            entries = data["domains"]
            if not isinstance(entries, list) or not entries:
                raise self.fail("domains", "must be a non-empty list")
            for index, entry_raw in enumerate(entries):
                path = f"domains[{index}]"
                entry = self.mapping_of(entry_raw, path)
                self.unknown(entry, ("domain", "when", "fields"), path)
                domain = self.domain(entry.get("domain"), f"{path}.domain")
                when = self.condition(entry["when"], f"{path}.when") if "when" in entry else None
                own = self.mapping_of(entry.get("fields", {}), f"{path}.fields")
                rules.append(DomainRule(domain, when, self.fields(domain, common, own, f"{path}.fields")))
        known_vars = {f"${var}" for var, _ in vars_}
        self.check_refs(vars_, rules, known_vars)
        sensitive = frozenset(
            column
            for rule in rules
            for spec in [*rule.fields.values(), *(s for _, s in vars_)]
            if spec.hash
            for column in spec.columns
        )
        return Mapping(
            name=name,
            source=source,
            read=read,
            rules=tuple(rules),
            unmatched=unmatched,
            unmatched_reason=self.text(data.get("unmatched_reason", _UNMATCHED), "unmatched_reason"),
            vars=tuple(vars_),
            sensitive=sensitive,
            unknown_fields=unknown_fields,
            description=str(data.get("description", "")),
            origin=self.origin,
            domains=tuple(dict.fromkeys(rule.domain for rule in rules)),
            keep_raw=keep_raw,
        )

    def check_refs(
        self, vars_: list[tuple[str, FieldSpec]], rules: list[DomainRule], known_vars: set[str]
    ) -> None:
        defined = {"$offset", "$source"}
        for var_name, spec in vars_:
            for ref in spec.references():
                if ref.startswith("$") and ref not in defined:
                    raise self.fail(f"vars.{var_name}", f"uses {ref} before it is defined")
            defined.add(f"${var_name}")
        for index, rule in enumerate(rules):
            refs = condition_columns(rule.when) if rule.when is not None else set()
            for spec in rule.fields.values():
                refs |= spec.references()
            for ref in sorted(refs):
                if ref.startswith("$") and ref not in defined | known_vars:
                    raise self.fail(
                        f"domains[{index}]" if len(rules) > 1 else "fields", f"unknown name {ref}"
                    )

    def domain(self, value: object, path: str) -> Domain:
        try:
            return Domain(str(value))
        except ValueError:
            raise self.fail(path, f"must be one of {', '.join(d.value for d in Domain)}") from None

    def read(self, raw: object, path: str) -> ReadSpec:
        data = self.mapping_of(raw, path)
        self.unknown(data, ("format", "header", "columns", "separator", "records_path", "fields"), path)
        fmt = data.get("format")
        if fmt not in FORMATS:
            raise self.fail(f"{path}.format", f"must be one of {', '.join(FORMATS)}")
        header = data.get("header", True)
        if not isinstance(header, bool):
            raise self.fail(f"{path}.header", "must be true or false")
        columns = data.get("columns")
        if columns is not None and (
            not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns)
        ):
            raise self.fail(f"{path}.columns", "must be a non-empty list of column names")
        if fmt == "csv" and not header and columns is None:
            raise self.fail(f"{path}.columns", "a CSV without header needs its column names")
        separator = data.get("separator", ",")
        if not isinstance(separator, str) or len(separator.encode()) != 1:
            raise self.fail(f"{path}.separator", "must be a single one-byte character")
        records_path = data.get("records_path")
        if records_path is not None:
            records_path = self.text(records_path, f"{path}.records_path")
        hints = self.mapping_of(data.get("fields", {}), f"{path}.fields")
        for name, kind in hints.items():
            if kind not in FIELD_TYPES:
                raise self.fail(f"{path}.fields.{name}", f"must be one of {', '.join(FIELD_TYPES)}")
        if hints and fmt != "ndjson":
            raise self.fail(f"{path}.fields", "only NDJSON reading takes field hints")
        return ReadSpec(
            format=fmt,
            header=header,
            columns=tuple(columns) if columns is not None else None,
            separator=separator,
            records_path=records_path,
            fields=tuple(hints.items()),
        )

    def fields(
        self, domain: Domain, common: AbcMapping[str, Any], own: AbcMapping[str, Any], path: str
    ) -> AbcMapping[str, FieldSpec]:
        names = set(ARROW_SCHEMAS[domain].names)
        merged: dict[str, FieldSpec] = {}
        for source_path, table in (("fields", common), (path, own)):
            for name, raw in table.items():
                if name not in names:
                    raise self.fail(f"{source_path}.{name}", f"is not a field of the {domain} schema")
                if name == "domain":
                    raise self.fail(f"{source_path}.{name}", "is set by the mapping's domain rules")
                merged[name] = self.field_spec(raw, f"{source_path}.{name}")
        if "ts" not in merged:
            raise self.fail(f"{path}.ts", "is required: every event needs a time")
        return merged

    def field_spec(self, raw: object, path: str) -> FieldSpec:
        if isinstance(raw, str | list):
            raw = {"column": raw}
        data = self.mapping_of(raw, path)
        self.unknown(data, (*VALUE_KEYS, *STEP_KEYS), path)
        given = [key for key in VALUE_KEYS if key in data]
        if len(given) != 1:
            raise self.fail(path, f"needs exactly one of {', '.join(VALUE_KEYS)} (got {len(given)})")
        spec: dict[str, Any] = {}
        if "column" in data:
            columns = data["column"]
            columns = [columns] if isinstance(columns, str) else columns
            if (
                not isinstance(columns, list)
                or not columns
                or not all(isinstance(c, str) and c for c in columns)
            ):
                raise self.fail(
                    f"{path}.column", "must be a column name or a list of them (first non-null wins)"
                )
            spec["columns"] = tuple(columns)
        elif "const" in data:
            const = data["const"]
            if not isinstance(const, str | int | float | bool) or const is None:
                raise self.fail(f"{path}.const", "must be text, a number or true/false")
            spec["const"] = const
            spec["has_const"] = True
        elif "template" in data:
            template = self.text(data["template"], f"{path}.template")
            try:
                refs = template_columns(template)
            except ValueError as exc:
                raise self.fail(f"{path}.template", f"is not a valid template: {exc}") from None
            if not refs:
                raise self.fail(f"{path}.template", "names no column; use const for fixed text")
            spec["template"] = template
        elif "when" in data:
            spec["when"] = self.condition(data["when"], f"{path}.when")
        else:
            spec.update(self.cases(data["cases"], data, f"{path}.cases"))
        spec.update(self.steps(data, path))
        return FieldSpec(**spec)

    def cases(self, raw: object, data: AbcMapping[str, Any], path: str) -> dict[str, Any]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(path, "must be a non-empty list of {when, value}")
        cases: list[tuple[Condition, Any]] = []
        for index, entry_raw in enumerate(raw):
            entry = self.mapping_of(entry_raw, f"{path}[{index}]")
            self.unknown(entry, ("when", "value"), f"{path}[{index}]")
            if "when" not in entry or "value" not in entry:
                raise self.fail(f"{path}[{index}]", "needs both 'when' and 'value'")
            cases.append(
                (
                    self.condition(entry["when"], f"{path}[{index}].when"),
                    self.literal(entry["value"], f"{path}[{index}].value"),
                )
            )
        return {
            "cases": tuple(cases),
            "cases_default": self.literal(data.get("default"), f"{path[:-6]}.default"),
        }

    def literal(self, value: object, path: str) -> Any:
        if value is not None and not isinstance(value, str | int | float | bool):
            raise self.fail(path, "must be text, a number, true/false or null")
        return value

    def steps(self, data: AbcMapping[str, Any], path: str) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if "regex" in data:
            spec["regex"] = self.regex(data["regex"], f"{path}.regex", need_group=True)
        for flag in ("strip", "lower", "upper", "hash"):
            if flag in data:
                if not isinstance(data[flag], bool) and not (flag == "hash" and isinstance(data[flag], str)):
                    raise self.fail(f"{path}.{flag}", "must be true or false")
                spec[flag] = bool(data[flag])
        if isinstance(data.get("hash"), str):
            spec["hash_prefix"] = data["hash"]
        if "null_if" in data:
            values = data["null_if"]
            values = [values] if isinstance(values, str) else values
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise self.fail(f"{path}.null_if", "must be text or a list of texts")
            spec["null_if"] = tuple(values)
        if "null_unless" in data:
            spec["null_unless"] = self.regex(data["null_unless"], f"{path}.null_unless", need_group=False)
        if "map" in data:
            table = data["map"]
            if not isinstance(table, AbcMapping) or not table:
                raise self.fail(f"{path}.map", "must be a non-empty mapping of raw value to canonical value")
            for key in table:
                if isinstance(key, bool) or not isinstance(key, str | int | float):
                    # YAML reads unquoted yes/no/true/false as booleans: the raw text would be lost
                    raise self.fail(
                        f"{path}.map.{key}", "keys must be text or numbers; quote yes/no/true/false"
                    )
            spec["map"] = tuple((str(k), self.literal(v, f"{path}.map.{k}")) for k, v in table.items())
            if "default" in data:
                spec["map_default"] = self.literal(data["default"], f"{path}.default")
        elif "default" in data and "cases" not in data:
            spec["fill"] = self.literal(data["default"], f"{path}.default")
        if "cast" in data:
            if data["cast"] not in CASTS:
                raise self.fail(f"{path}.cast", f"must be one of {', '.join(CASTS)}")
            spec["cast"] = data["cast"]
        if "scale" in data:
            if isinstance(data["scale"], bool) or not isinstance(data["scale"], int | float):
                raise self.fail(f"{path}.scale", "must be a number")
            spec["scale"] = float(data["scale"])
        if "timestamp" in data:
            spec["timestamp"] = self.timestamp(data["timestamp"], f"{path}.timestamp")
        if "truncate" in data:
            if (
                isinstance(data["truncate"], bool)
                or not isinstance(data["truncate"], int)
                or data["truncate"] < 1
            ):
                raise self.fail(f"{path}.truncate", "must be a positive whole number of characters")
            spec["truncate"] = data["truncate"]
        return spec

    def regex(self, value: object, path: str, *, need_group: bool) -> str:
        pattern = self.text(value, path)
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise self.fail(path, f"is not a valid regular expression: {exc}") from None
        if need_group and compiled.groups < 1:
            raise self.fail(path, "needs a (group) to extract")
        return pattern

    def timestamp(self, raw: object, path: str) -> TimestampSpec:
        data = self.mapping_of(raw, path)
        self.unknown(data, ("format", "timezone", "unit", "start", "days_column"), path)
        if ("format" in data) == ("unit" in data):
            raise self.fail(path, "needs exactly one of format (text times) or unit (numbers)")
        timezone: str | None = None
        if "timezone" in data:
            timezone = self.text(data["timezone"], f"{path}.timezone")
            try:
                zoneinfo.ZoneInfo(timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise self.fail(
                    f"{path}.timezone", "is not a known time zone, e.g. 'UTC' or 'Europe/Paris'"
                ) from None
        unit = data.get("unit")
        if unit is not None and unit not in TIME_UNITS:
            raise self.fail(f"{path}.unit", f"must be one of {', '.join(TIME_UNITS)}")
        start: dt.datetime | None = None
        if "start" in data:
            start_raw = data["start"]
            try:
                start = (
                    start_raw
                    if isinstance(start_raw, dt.datetime)
                    else dt.datetime.fromisoformat(str(start_raw))
                )
            except ValueError:
                raise self.fail(
                    f"{path}.start", "must be an ISO 8601 time, e.g. '2018-04-01T00:00:00Z'"
                ) from None
            if start.tzinfo is None:
                raise self.fail(f"{path}.start", "must include a time zone, e.g. '2018-04-01T00:00:00Z'")
            if unit is None:
                raise self.fail(f"{path}.start", "only goes with unit")
        days_column = data.get("days_column")
        if days_column is not None:
            days_column = self.text(days_column, f"{path}.days_column")
            if start is None:
                raise self.fail(f"{path}.days_column", "needs a start")
        fmt = data.get("format")
        if fmt is not None:
            fmt = self.text(fmt, f"{path}.format")
            if (
                fmt != "iso8601"
                and "%z" not in fmt
                and "%#z" not in fmt
                and "%:z" not in fmt
                and timezone is None
            ):
                # a time without zone is ambiguous: the mapping must say which zone the feed writes in
                raise self.fail(
                    f"{path}.timezone", "is needed: the format has no %z, so say which zone the times are in"
                )
        return TimestampSpec(format=fmt, timezone=timezone, unit=unit, start=start, days_column=days_column)

    def condition(self, raw: object, path: str) -> Condition:
        data = self.mapping_of(raw, path)
        for combinator in ("all", "any"):
            if combinator in data:
                self.unknown(data, (combinator,), path)
                items = data[combinator]
                if not isinstance(items, list) or not items:
                    raise self.fail(f"{path}.{combinator}", "must be a non-empty list of conditions")
                children = tuple(
                    self.condition(item, f"{path}.{combinator}[{i}]") for i, item in enumerate(items)
                )
                return Condition(combinator, children=children)
        if "not" in data:
            self.unknown(data, ("not",), path)
            return Condition("not", children=(self.condition(data["not"], f"{path}.not"),))
        self.unknown(data, ("column", *COMPARISONS), path)
        column = self.text(data.get("column"), f"{path}.column")
        ops = [op for op in COMPARISONS if op in data]
        if len(ops) != 1:
            raise self.fail(path, f"needs exactly one test of {', '.join(COMPARISONS)}")
        op = ops[0]
        value = data[op]
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                raise self.fail(f"{path}.{op}", "must be a non-empty list")
            value = tuple(self.literal(v, f"{path}.{op}") for v in value)
        elif op == "matches":
            value = self.regex(value, f"{path}.matches", need_group=False)
        elif op in ("is_null", "not_null"):
            if value is not True:
                raise self.fail(f"{path}.{op}", "must be true")
        elif op in ("gt", "ge", "lt", "le"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(f"{path}.{op}", "must be a number")
        else:
            value = self.literal(value, f"{path}.{op}")
        return Condition(op, column=column, value=value)


def _mappings_dir() -> Path:
    return Path(str(resources.files("finsecure.ingest").joinpath("mappings")))


def available_mappings() -> list[str]:
    """Names of the mappings shipped with the package.

    >>> "sparkov" in available_mappings()
    True
    """
    return sorted(path.stem for path in _mappings_dir().glob("*.yml"))


def load_mapping(name_or_path: str | Path) -> Mapping:
    """Load a shipped mapping by name (``sparkov``) or any mapping file by path.

    Raises
    ------
    MappingError
        If the file is missing, is not valid YAML, or breaks a rule (the message names the file
        and the key path).
    """
    path = Path(name_or_path)
    if path.suffix not in (".yml", ".yaml"):
        path = _mappings_dir() / f"{name_or_path}.yml"
        if not path.is_file():
            names = ", ".join(available_mappings())
            raise MappingError(f"no mapping named {str(name_or_path)!r}; shipped mappings: {names}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{path}: cannot read the mapping: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise MappingError(f"{path}: not valid YAML{where}") from None
    return Mapping.from_dict(data, origin=str(path))
