"""Readers: chunking, compression by magic bytes, and bad NDJSON lines isolated into dead letters."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finsecure.ingest import readers
from finsecure.ingest.mapping import ReadSpec
from finsecure.ingest.readers import (
    OFFSET_COLUMN,
    RawChunk,
    ReadError,
    compression_of,
    parse_records,
    read_csv,
    read_json_records,
    read_ndjson,
    read_parquet,
    read_raw,
)


def _collect(chunks: list[RawChunk]) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    frames = [c.frame for c in chunks if c.frame.height]
    rejects = [
        (offset, reason)
        for c in chunks
        if c.rejects is not None
        for offset, reason in zip(
            c.rejects.column("offset").to_pylist(), c.rejects.column("reason").to_pylist(), strict=True
        )
    ]
    return (pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()), sorted(rejects)


def test_compression_of__magic_bytes_not_names() -> None:
    assert compression_of(gzip.compress(b"x")) == "gzip"
    assert compression_of(b"PK\x03\x04rest") == "zip"
    assert compression_of(b"\0" * 257 + b"ustar\0") == "tar"
    assert compression_of(b"a,b\n1,2\n") is None


def test_read_csv__chunks_offsets_and_text_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(25)))
    chunks = list(read_csv(path, chunk_rows=10))
    assert [c.frame.height for c in chunks] == [10, 10, 5]
    assert [(c.first_offset, c.offset_end) for c in chunks] == [(0, 10), (10, 20), (20, 25)]
    assert chunks[1].frame[OFFSET_COLUMN].to_list() == list(range(10, 20))
    assert chunks[0].frame.schema["a"] == pl.String


def test_read_csv__gzip_detected_without_gz_name(tmp_path: Path) -> None:
    path = tmp_path / "plain-looking.csv"
    path.write_bytes(gzip.compress(b"a,b\n1,2\n3,4\n"))
    frame, _ = _collect(list(read_csv(path)))
    assert frame["a"].to_list() == ["1", "3"]


def test_read_csv__headerless_with_names_and_separator(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("1;x\n2;y\n")
    frame, _ = _collect(list(read_csv(path, header=False, columns=("n", "s"), separator=";")))
    assert frame.select("n", "s").rows() == [("1", "x"), ("2", "y")]


def test_read_csv__invalid_utf8_row_is_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,ok\n2,bad\xff\n3,ok\n")
    chunks = list(read_csv(path))
    frame, rejects = _collect(chunks)
    assert frame["a"].to_list() == ["1", "3"]
    assert rejects == [(1, "not valid UTF-8")]


def test_read_csv__missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"absent\.csv: cannot open"):
        list(read_csv(tmp_path / "absent.csv"))


def test_read_csv__zip_members_keep_counting(tmp_path: Path) -> None:
    path = tmp_path / "t.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("one.csv", "a\n1\n2\n")
        archive.writestr("two.csv", "a\n3\n")
    frame, _ = _collect(list(read_csv(path)))
    assert frame["a"].to_list() == ["1", "2", "3"]
    assert frame[OFFSET_COLUMN].to_list() == [0, 1, 2]


BAD_NDJSON = (
    b"\n".join(
        [
            b'{"id": 0, "v": 1}',
            b'{"id": 1, "v": ',  # broken JSON
            b"[1, 2]",  # not an object
            b"",  # blank: skipped, still counted
            b'{"id": 4, "v": "\xff"}',  # invalid UTF-8
            b'{"id": 5, "v": NaN}',  # NaN is not JSON
            b'{"id": 6, "v": "' + b"x" * 300 + b'"}',  # over the line limit
            b'{"id": 7, "v": 2}',
            b"42",
            b'{"id": 9, "v": 3}',
        ]
    )
    + b"\n"
)


def test_read_ndjson__bad_lines_become_dead_letters_good_lines_kept(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    path.write_bytes(BAD_NDJSON)
    frame, rejects = _collect(list(read_ndjson(path, max_line_bytes=200)))
    assert frame["id"].to_list() == [0, 7, 9]
    assert frame[OFFSET_COLUMN].to_list() == [0, 7, 9]
    assert rejects == [
        (1, "not valid JSON: Expecting value (column 16)"),
        (2, "not a JSON object but a list"),
        (4, "not valid UTF-8 (at byte 17)"),
        (5, "not valid JSON: NaN is not allowed in JSON"),
        (6, "line is 318 bytes, over the limit of 200"),
        (8, "not a JSON object but a number"),
    ]


def test_read_ndjson__huge_line_skipped_while_streaming(tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson.gz"
    huge = b'{"x": "' + b"a" * (9 << 20) + b'"}'
    path.write_bytes(gzip.compress(b'{"id": 0}\n' + huge + b'\n{"id": 2}\n', compresslevel=1))
    chunks = list(read_ndjson(path, max_line_bytes=1 << 20))
    frame, rejects = _collect(chunks)
    assert frame["id"].to_list() == [0, 2]
    assert frame[OFFSET_COLUMN].to_list() == [0, 2]
    assert rejects == [(1, f"line is {len(huge):,} bytes, over the limit of 1,048,576")]
    dead = next(c.rejects for c in chunks if c.rejects is not None)
    assert len(dead.column("raw")[0].as_py()) == 4096


def test_read_ndjson__chunks_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    lines = [json.dumps({"i": i}) if i % 7 else "" for i in range(51)]
    path.write_text("\n".join(lines))  # no final newline
    chunks = list(read_ndjson(path, chunk_rows=20))
    assert [(c.first_offset, c.offset_end) for c in chunks] == [(0, 20), (20, 40), (40, 51)]
    frame, rejects = _collect(chunks)
    assert rejects == []
    assert frame["i"].to_list() == [i for i in range(51) if i % 7]
    assert frame[OFFSET_COLUMN].to_list() == frame["i"].to_list()


def test_read_ndjson__clashing_types_kept_as_text(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    path.write_text('{"a": [1]}\n{"a": 2}\n{"a": {"b": 1}}\n')
    frame, rejects = _collect(list(read_ndjson(path)))
    assert rejects == []
    assert frame["a"].to_list() == ["[1]", "2", '{"b":1}']


def test_read_ndjson__records_path_unwraps_envelopes(tmp_path: Path) -> None:
    path = tmp_path / "ct.json"
    path.write_text(
        json.dumps({"Records": [{"e": 1}, {"e": 2}]}) + "\n" + json.dumps({"Records": [{"e": 3}]}) + "\n"
    )
    frame, _ = _collect(list(read_ndjson(path, records_path="Records")))
    assert frame["e"].to_list() == [1, 2, 3]
    assert frame[OFFSET_COLUMN].to_list() == [0, 1, 2]


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"Records": [{"e": 1}, {"e": 2}]}, indent=2).encode(),
        json.dumps([{"e": 1}, {"e": 2}]).encode(),
        (json.dumps({"e": 1}) + "\n" + json.dumps({"e": 2}) + "\n").encode(),
    ],
    ids=["pretty-envelope", "array", "ndjson"],
)
def test_read_json_records__shapes(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(gzip.compress(body))
    frame, rejects = _collect(list(read_json_records(path, records_path="Records")))
    assert rejects == []
    assert frame["e"].to_list() == [1, 2]


def test_read_parquet__chunks_gzip_and_tar(tmp_path: Path) -> None:
    frame = pl.DataFrame({"a": list(range(30))})
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    (tmp_path / "p.parquet").write_bytes(buffer.getvalue())
    chunks = list(read_parquet(tmp_path / "p.parquet", chunk_rows=10))
    assert sum(c.frame.height for c in chunks) == 30
    assert chunks[-1].offset_end == 30
    (tmp_path / "p.bin").write_bytes(gzip.compress(buffer.getvalue()))
    assert _collect(list(read_parquet(tmp_path / "p.bin")))[0]["a"].to_list() == list(range(30))
    with tarfile.open(tmp_path / "p.tar", "w") as tar:
        tar.add(tmp_path / "p.parquet", arcname="p.parquet")
    assert _collect(list(read_raw(tmp_path / "p.tar", ReadSpec(format="parquet"))))[0].height == 30


def test_read_parquet__reads_row_groups_as_asked(tmp_path: Path) -> None:
    frame = pl.DataFrame({"a": list(range(30)), "b": [f"x{i}" for i in range(30)]})
    frame.write_parquet(tmp_path / "small.parquet", row_group_size=7)  # 7, 7, 7, 7, 2
    chunks = list(read_parquet(tmp_path / "small.parquet", chunk_rows=10, keep={"a"}))
    assert [c.frame.height for c in chunks] == [7, 7, 7, 9]  # groups merged up to chunk_rows
    assert [(c.first_offset, c.offset_end) for c in chunks] == [(0, 7), (7, 14), (14, 21), (21, 30)]
    assert _collect(chunks)[0].columns == ["a", OFFSET_COLUMN]
    frame.write_parquet(tmp_path / "big.parquet", row_group_size=30)  # one group, bigger than a chunk
    chunks = list(read_parquet(tmp_path / "big.parquet", chunk_rows=8))
    assert [c.frame.height for c in chunks] == [8, 8, 8, 6]
    assert _collect(chunks)[0][OFFSET_COLUMN].to_list() == list(range(30))
    assert _collect(chunks)[0]["b"].to_list() == frame["b"].to_list()


def test_read_parquet__broken_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(ReadError, match=r"bad\.parquet"):
        list(read_parquet(tmp_path / "bad.parquet"))


def test_read_ndjson__chunks_cut_across_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "_READ_SIZE", 37)  # many small reads: chunks span several blocks
    records = [{"id": i, "s": "y" * (i % 13), "v": None if i % 3 else i / 4} for i in range(100)]
    lines = [json.dumps(r) for r in records]
    lines[40] = ""
    path = tmp_path / "b.ndjson"
    path.write_text("\n".join(lines) + "\n")
    chunks = list(read_ndjson(path, chunk_rows=7, fields=HINTS))
    assert [(c.first_offset, c.offset_end) for c in chunks] == [
        (i, min(i + 7, 100)) for i in range(0, 100, 7)
    ]
    frame, rejects = _collect(chunks)
    assert rejects == []
    assert frame[OFFSET_COLUMN].to_list() == [i for i in range(100) if i != 40]
    assert frame["s"].to_list() == [r["s"] for i, r in enumerate(records) if i != 40]


def test_read_ndjson__null_tokens_in_text_never_hide_a_field(tmp_path: Path) -> None:
    # Text values that hold ":null" look like extra null fields to a count of raw tokens: a field
    # outside the hints must still come out, not be dropped by the fixed-schema fast path.
    lines = [
        '{"id": 1, "s": "a:null"}',
        '{"id": 2, "s": "b: null", "zz": "here"}',
        '{"id": 3, "s": ":null:null", "v": null}',
    ]
    path = tmp_path / "n.ndjson"
    path.write_text("\n".join(lines) + "\n")
    frame, rejects = _collect(list(read_ndjson(path, fields=HINTS)))
    assert rejects == []
    assert frame["zz"].to_list() == [None, "here", None]
    assert frame["s"].to_list() == ["a:null", "b: null", ":null:null"]


def test_parse_records__ndjson_array_and_gzip() -> None:
    frame, rejects = parse_records(b'[{"a": 1}, 2, {"a": 3}]')
    assert frame["a"].to_list() == [1, 3]
    assert frame[OFFSET_COLUMN].to_list() == [0, 2]
    assert rejects.column("reason").to_pylist() == ["not a JSON object but a number"]
    frame, rejects = parse_records(gzip.compress(b'{"a": 1}\n{"a": 2}\n'))
    assert (frame.height, rejects.num_rows) == (2, 0)


def test_parse_records__single_pretty_object_and_garbage() -> None:
    frame, rejects = parse_records(b'{\n  "a": 1\n}\n')
    assert frame["a"].to_list() == [1]
    assert rejects.num_rows == 0
    frame, rejects = parse_records(b"[1, 2")
    assert frame.height == 0
    assert rejects.column("reason")[0].as_py().startswith("not valid JSON")
    frame, rejects = parse_records(b"\x1f\x8b broken gzip")
    assert rejects.column("reason").to_pylist() == ["broken gzip data"]


def test_parse_records__line_limit() -> None:
    frame, rejects = parse_records(
        b'{"a": "' + b"x" * 100 + b'"}\n{"a": "y"}\n', max_line_bytes=50, source="http:k1"
    )
    assert frame["a"].to_list() == ["y"]
    assert rejects.column("source").to_pylist() == ["http:k1"]
    assert rejects.column("offset").to_pylist() == [0]


def _quoted_csv() -> bytes:
    rows = [
        "id,note,amount\n",
        *(f'{i},"line one\nline two, with ""quotes"" {i}",{i}.5\n' for i in range(40)),
        "40,plain,1\n",
        '41,"ends with a newline\n",2\n',
    ]
    return "".join(rows).encode()


def test_read_csv__blocks_cut_only_outside_quotes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tiny reads put block ends everywhere, including inside quoted fields
    monkeypatch.setattr("finsecure.ingest.readers._READ_SIZE", 37)
    data = _quoted_csv()
    path = tmp_path / "q.csv.gz"
    path.write_bytes(gzip.compress(data))
    chunks = list(read_csv(path, chunk_rows=16))
    assert [c.frame.height for c in chunks] == [16, 16, 10]
    assert [(c.first_offset, c.offset_end) for c in chunks] == [(0, 16), (16, 32), (32, 42)]
    frame, rejects = _collect(chunks)
    assert rejects == []
    expected = pl.read_csv(data, infer_schema=False)
    assert frame.drop(OFFSET_COLUMN).equals(expected)
    assert frame[OFFSET_COLUMN].to_list() == list(range(42))


def test_read_csv__keep_parses_only_those_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n1,x,7\n2,y,8\n")
    frame, _ = _collect(list(read_csv(path, keep={"c", "a", "absent"})))
    assert frame.columns == ["a", "c", OFFSET_COLUMN]
    assert frame.select("a", "c").rows() == [("1", "7"), ("2", "8")]
    path.write_text("1;x;7\n2;y;8\n")
    frame, _ = _collect(
        list(read_csv(path, header=False, columns=("n", "s", "k"), separator=";", keep={"k"}))
    )
    assert frame.select("k").to_series().to_list() == ["7", "8"]


def test_read_csv__valid_non_ascii_text_kept(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("a,b\n1,café\n2,\ufffd is a real character\n".encode())
    frame, rejects = _collect(list(read_csv(path)))
    assert rejects == []
    assert frame["b"].to_list() == ["café", "\ufffd is a real character"]


def test_read_csv__broken_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    body = b"a,b\n" + b"".join(b"%d,%s\n" % (i, b"%x" % (i * 7919 % 65521) * 3) for i in range(20_000))
    packed = gzip.compress(body)
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ReadError, match=r"t\.csv\.gz: cannot decompress"):
        list(read_csv(path))


HINTS = (("id", "int"), ("v", "float"), ("s", "str"), ("ok", "bool"))


def _present(frame: pl.DataFrame) -> list[set[str]]:
    """Each row's fields that hold a value (whatever its type), by offset order."""
    body = frame.drop(OFFSET_COLUMN)
    if body.width == 0:
        return [set() for _ in range(frame.height)]
    flags = body.select(pl.all().is_not_null()).to_dicts()
    return [{name for name, present in row.items() if present} for row in flags]


def test_read_ndjson__field_hints_read_what_inference_reads(tmp_path: Path) -> None:
    records = [{"id": i, "v": i / 2, "s": f"t{i}", "ok": i % 2 == 0} for i in range(300)]
    records[150] = {"id": 150, "late": "x"}  # a field first seen deep in the file
    records[200] = {"id": 200, "v": "oops"}  # a value of another type
    records[250] = {"id": 250, "s": 'back\\slash "quoted"'}  # escapes
    records[260] = {"id": 260, "s": None, "v": None}  # nulls written out
    lines = [json.dumps(r, separators=(",", ":") if i % 3 else (", ", ": ")) for i, r in enumerate(records)]
    lines[100] = ""  # a blank line keeps its number
    path = tmp_path / "h.ndjson"
    path.write_text("\n".join(lines) + "\n")
    fast = list(read_ndjson(path, chunk_rows=64, fields=HINTS))
    slow = list(read_ndjson(path, chunk_rows=64))
    assert [(c.first_offset, c.offset_end) for c in fast] == [(c.first_offset, c.offset_end) for c in slow]
    for hinted, inferred in zip(fast, slow, strict=True):
        assert hinted.frame[OFFSET_COLUMN].to_list() == inferred.frame[OFFSET_COLUMN].to_list()
        assert _present(hinted.frame) == _present(inferred.frame)
    frame, rejects = _collect(fast)
    assert rejects == []
    assert frame.filter(pl.col(OFFSET_COLUMN) == 150)["late"].to_list() == ["x"]
    assert frame.filter(pl.col(OFFSET_COLUMN) == 200)["v"].cast(pl.String).to_list() == ["oops"]
    assert frame.filter(pl.col(OFFSET_COLUMN) == 250)["s"].to_list() == ['back\\slash "quoted"']


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(alphabet=st.sampled_from('ab:" {}null,'), max_size=8),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.dictionaries(st.sampled_from(["k", "null", "a:b"]), inner, max_size=2)
    ),
    max_leaves=4,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    records=st.lists(
        st.dictionaries(
            st.sampled_from(["id", "v", "s", "ok", "extra", "x:y", "nul"]), _json_values, max_size=5
        ),
        min_size=1,
        max_size=12,
    ),
    spaced=st.booleans(),
)
def test_read_ndjson__field_hints_never_drop_a_field(
    tmp_path: Path, records: list[dict[str, object]], spaced: bool
) -> None:
    # The fast path parses with a schema, which would silently drop fields outside it: every field
    # holding a value must still come out, whatever the values, their types and the spacing.
    separators = (", ", " : ") if spaced else (",", ":")
    path = tmp_path / "p.ndjson"
    path.write_text("".join(json.dumps(r, separators=separators) + "\n" for r in records))
    seen: list[int] = []
    for chunk in read_ndjson(path, chunk_rows=5, fields=HINTS):
        assert chunk.rejects is None
        offsets = chunk.frame[OFFSET_COLUMN].to_list()
        for offset, present in zip(offsets, _present(chunk.frame), strict=True):
            assert present == {key for key, value in records[offset].items() if value is not None}
        seen.extend(offsets)
    assert seen == list(range(len(records)))


def test_parse_records__field_hints_give_the_same_records() -> None:
    body = b'{"id": 1, "s": "a"}\n\n{"id": 2, "zz": true}\n{"id": "x"}\nnot json\n'
    plain, plain_rejects = parse_records(body)
    hinted, hinted_rejects = parse_records(body, fields=HINTS)
    assert hinted[OFFSET_COLUMN].to_list() == plain[OFFSET_COLUMN].to_list() == [0, 2, 3]
    assert _present(hinted) == _present(plain) == [{"id", "s"}, {"id", "zz"}, {"id"}]
    assert hinted_rejects.column("offset").to_pylist() == plain_rejects.column("offset").to_pylist() == [4]
