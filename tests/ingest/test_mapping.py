"""Mappings as data: building from dicts and YAML, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finsecure.event.schemas import Domain
from finsecure.ingest.mapping import Mapping, MappingError, available_mappings, load_mapping

SHIPPED = [
    "aws-s3-honeybucket",
    "azure-ad",
    "cloudtrail",
    "fraud-handbook",
    "nsl-kdd",
    "office-activity",
    "sparkov",
]


def _mapping(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "read": {"format": "csv"},
        "domain": "payment",
        "fields": {"ts": {"column": "t", "timestamp": {"unit": "s"}}},
    }
    data.update(overrides)
    return data


def test_available_mappings__lists_every_shipped_file() -> None:
    assert available_mappings() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_load_mapping__every_shipped_mapping_loads(name: str) -> None:
    mapping = load_mapping(name)
    assert mapping.name == name
    assert mapping.rules
    assert mapping.origin.endswith(f"{name}.yml")


def test_load_mapping__azure_ad_emits_two_domains() -> None:
    assert load_mapping("azure-ad").domains == (Domain.auth, Domain.cloud)


def test_load_mapping__unknown_name_lists_shipped() -> None:
    with pytest.raises(MappingError, match="no mapping named 'nope'; shipped mappings: aws-s3-honeybucket"):
        load_mapping("nope")


def test_load_mapping__bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("name: x\nread: [unclosed\n")
    with pytest.raises(MappingError, match=r"broken\.yml: not valid YAML at line 3"):
        load_mapping(path)


def test_load_mapping__bad_key_names_file_and_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(
        "name: bad\nread: {format: csv}\ndomains:\n  - domain: cloud\n    fields:\n"
        "      ts: {column: t, timestamp: {format: iso8601}}\n      action: {column: a, cast: decimal}\n"
    )
    with pytest.raises(
        MappingError, match=r"bad\.yml: domains\[0\]\.fields\.action\.cast: must be one of str"
    ):
        load_mapping(path)


def test_load_mapping__missing_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read the mapping"):
        load_mapping(tmp_path / "absent.yml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"read": {"format": "xml"}}, "read.format: must be one of csv"),
        ({"read": {"format": "csv", "header": False}}, "read.columns: a CSV without header needs"),
        ({"read": {"format": "csv", "separator": ";;"}}, "read.separator: must be a single"),
        ({"domain": "host"}, "domain: must be one of network"),
        ({"fields": {}}, "fields.ts: is required"),
        ({"fields": {"ts": "t", "colour": "c"}}, "fields.colour: is not a field of the payment schema"),
        ({"fields": {"ts": "t", "domain": "d"}}, "fields.domain: is set by the mapping"),
        ({"fields": {"ts": {"column": "t", "const": 1}}}, "fields.ts: needs exactly one of column"),
        ({"fields": {"ts": {"column": "t", "colour": 1}}}, "fields.ts.colour: unknown key"),
        (
            {"fields": {"ts": "t", "amount": {"column": "a", "regex": "("}}},
            "fields.amount.regex: is not a valid",
        ),
        ({"fields": {"ts": "t", "amount": {"column": "a", "regex": "a+"}}}, "fields.amount.regex: needs a"),
        ({"fields": {"ts": {"column": "t", "timestamp": {}}}}, "fields.ts.timestamp: needs exactly one of"),
        (
            {"fields": {"ts": {"column": "t", "timestamp": {"format": "%Y"}}}},
            "fields.ts.timestamp.timezone: is needed",
        ),
        (
            {"fields": {"ts": {"column": "t", "timestamp": {"format": "iso8601", "timezone": "Mars/Base"}}}},
            "not a known time zone",
        ),
        (
            {"fields": {"ts": {"column": "t", "timestamp": {"unit": "s", "start": "2020-01-01"}}}},
            "must include a time zone",
        ),
        (
            {"fields": {"ts": "t", "label": {"when": {"column": "x", "equals": 1, "ne": 2}}}},
            "needs exactly one test",
        ),
        (
            {"fields": {"ts": "t", "label": {"when": {"column": "x", "in": []}}}},
            "label.when.in: must be a non-empty list",
        ),
        (
            {"fields": {"ts": "t", "channel": {"column": "c", "map": {True: "pos"}}}},
            "quote yes/no/true/false",
        ),
        ({"fields": {"ts": "t", "channel": {"template": "plain"}}}, "names no column"),
        ({"fields": {"ts": "t", "channel": {"column": "$nope"}}}, "unknown name \\$nope"),
        ({"unmatched": "drop"}, "unmatched: must be 'reject' or 'skip'"),
        ({"unknown_fields": "drop"}, "unknown_fields: must be 'ignore' or 'reject'"),
        ({"read": {"format": "ndjson", "fields": {"a": "text"}}}, "read.fields.a: must be one of str, int"),
        ({"read": {"format": "csv", "fields": {"a": "str"}}}, "read.fields: only NDJSON reading takes"),
        ({"domain": "payment", "domains": []}, "give exactly one of 'domain'"),
    ],
)
def test_from_dict__errors_name_the_key_path(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        Mapping.from_dict(_mapping(**overrides), origin="m.yml")


def test_from_dict__error_starts_with_origin() -> None:
    with pytest.raises(MappingError, match=r"^m\.yml: name: must be non-empty text$"):
        Mapping.from_dict(_mapping(name=""), origin="m.yml")


def test_from_dict__not_a_mapping() -> None:
    with pytest.raises(MappingError, match="must be a mapping"):
        Mapping.from_dict(["a"])


def test_from_dict__shorthands_and_sensitive_columns() -> None:
    mapping = Mapping.from_dict(
        _mapping(
            fields={
                "ts": ["t1", "t2"],
                "card_id": {"column": "pan", "hash": "tok_"},
                "terminal_id": {"template": "T{term}-{$offset}"},
            },
            vars={"double": {"column": "amt", "cast": "float", "scale": 2}},
        )
    )
    fields = mapping.rules[0].fields
    assert fields["ts"].columns == ("t1", "t2")
    assert fields["card_id"].hash
    assert fields["card_id"].hash_prefix == "tok_"
    assert mapping.sensitive == frozenset({"pan"})
    assert mapping.references() == {"t1", "t2", "pan", "term", "$offset", "amt"}


def test_from_dict__var_used_before_defined_is_refused() -> None:
    with pytest.raises(MappingError, match=r"vars\.a: uses \$b before it is defined"):
        Mapping.from_dict(_mapping(vars={"a": {"column": "$b"}, "b": {"column": "x"}}))


def test_from_dict__read_field_hints_and_unknown_fields() -> None:
    mapping = Mapping.from_dict(
        _mapping(read={"format": "ndjson", "fields": {"t": "int", "who": "str"}}, unknown_fields="reject")
    )
    assert mapping.read.fields == (("t", "int"), ("who", "str"))
    assert mapping.unknown_fields == "reject"
    assert Mapping.from_dict(_mapping()).unknown_fields == "ignore"


def test_read_columns__what_readers_may_skip_the_rest_for() -> None:
    mapping = Mapping.from_dict(
        _mapping(fields={"ts": {"column": "t", "timestamp": {"unit": "s"}}, "user_id": "who.name"})
    )
    assert mapping.read_columns() == frozenset({"t", "who", "who.name"})
    assert Mapping.from_dict(_mapping(unknown_fields="reject")).read_columns() is None
