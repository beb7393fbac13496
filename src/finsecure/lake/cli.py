"""``finsecure query``: read-only SQL over the event lake from the command line."""

from __future__ import annotations

import csv
import datetime as dt
import enum
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from finsecure.core.settings import get_settings
from finsecure.lake.query import MAX_ROWS, LakeQuery, LakeQueryError, QueryRefused

console = Console()
err_console = Console(stderr=True)


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def lake_root() -> Path:
    """The lake directory: ``<data_dir>/lake`` from the settings."""
    return get_settings().data_dir / "lake"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


#: A spreadsheet reads a cell starting with one of these as a formula (CSV formula injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def _csv_cell(value: Any) -> str:
    """A CSV cell that a spreadsheet shows as text: text starting like a formula gets a leading ``'``.

    Numbers are left alone (``-12.5`` stays a number); only text, which may come from an event, is
    escaped, as OWASP advises.

    >>> _csv_cell("=1+1"), _csv_cell("@SUM(A1)"), _csv_cell(-12.5), _csv_cell("ok")
    ("'=1+1", "'@SUM(A1)", '-12.5', 'ok')
    """
    text = _text(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def query_command(
    sql: Annotated[str, typer.Argument(help='One read-only query, e.g. "SELECT count(*) FROM payment"')],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="How to print the rows: table, json or csv")
    ] = OutputFormat.table,
    limit: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="Print at most this many rows")] = 1000,
    timeout: Annotated[float, typer.Option(min=0.1, help="Stop the query after this many seconds")] = 60.0,
) -> None:
    """Query the event lake with SQL (views: network, cloud, auth, payment, dead_letter)."""
    try:
        root = lake_root()
    except ValidationError as exc:
        messages = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors())
        err_console.print(f"[bold red]Configuration error:[/] {messages}")
        raise typer.Exit(2) from exc
    try:
        with LakeQuery(root, timeout_s=timeout) as lake:
            result = lake.sql(sql, limit=limit)
    except QueryRefused as exc:
        err_console.print(f"[bold red]Refused:[/] {exc}")
        raise typer.Exit(1) from exc
    except LakeQueryError as exc:
        err_console.print(f"[bold red]Error:[/] {exc}")
        raise typer.Exit(1) from exc

    names = [str(n) for n in result.table.column_names]
    # Rows as tuples, not dicts: a query may return two columns with the same name.
    rows = list(zip(*(column.to_pylist() for column in result.table.columns), strict=True))
    if output_format is OutputFormat.json:
        records = [{n: _json_value(v) for n, v in zip(names, row, strict=True)} for row in rows]
        sys.stdout.write(json.dumps(records, ensure_ascii=False) + "\n")
    elif output_format is OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([_csv_cell(n) for n in names])
        writer.writerows([_csv_cell(v) for v in row] for row in rows)
    else:
        table = Table(*names)
        for row in rows:
            table.add_row(*(_text(v) for v in row))
        console.print(table)
    if result.truncated:
        err_console.print(f"[yellow]Showing the first {limit} rows; the query returned more.[/]")
