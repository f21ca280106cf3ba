"""One reader for the row files the commands take (JSON lines, CSV, TSV), with one small adapter per format.

`read_rows` yields a `RowLine` per data row: where it is ("file:line", never its contents: rows may hold patient
data) and either the parsed row or why the line is not one, so each caller decides whether a bad line fails the
run, is skipped, or is collected into one message. Used by `eval` (whose release layouts — a JSON document, MMLU's
header-less CSV, parquet, Hugging Face datasets — are further adapters in `eval/rows.py`), `eval --batch`,
`finetune` and `rl`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from .errors import BadInput

Row = dict[str, Any]
Format = Literal["jsonl", "csv", "tsv"]


@dataclass(frozen=True)
class RowLine:
    line: int  # 1-based; in CSV/TSV the header is line 1 and the first row line 2
    where: str  # "name:line"
    row: Any = None  # a dict for CSV/TSV; whatever the line holds for JSON lines (callers check it is an object)
    error: str | None = None  # why the line is not a row, e.g. "not valid JSON (Expecting value)"


def _jsonl(f: IO[str], path: Path) -> Iterator[RowLine]:
    for i, line in enumerate(f, 1):
        if not line.strip():
            continue
        where = f"{path.name}:{i}"
        try:
            yield RowLine(i, where, json.loads(line))
        except json.JSONDecodeError as e:
            yield RowLine(i, where, error=f"not valid JSON ({e.msg})")


def _delimited(delimiter: str) -> Callable[[IO[str], Path], Iterator[RowLine]]:
    def read(f: IO[str], path: Path) -> Iterator[RowLine]:
        rdr = csv.DictReader(f, delimiter=delimiter)
        if rdr.fieldnames is None:
            raise BadInput(f"{path}: CSV has no header row")
        for i, row in enumerate(rdr, 2):
            # Surplus cells land under the key None; header names are stripped and blank ones dropped.
            yield RowLine(i, f"{path.name}:{i}", {k.strip(): v for k, v in row.items() if k is not None and k.strip()})

    return read


ADAPTERS: dict[str, Callable[[IO[str], Path], Iterator[RowLine]]] = {
    "jsonl": _jsonl,
    "csv": _delimited(","),
    "tsv": _delimited("\t"),
}


def row_format(path: Path) -> Format:
    """By suffix: .csv and .tsv are delimited with a header row; anything else is read as JSON lines."""
    suffix = path.suffix.lower()
    return "csv" if suffix == ".csv" else "tsv" if suffix == ".tsv" else "jsonl"


def read_rows(path: Path, fmt: Format | None = None) -> Iterator[RowLine]:
    """The rows of `path` in file order (UTF-8, a byte-order mark ignored); unreadable files raise `BadInput`."""
    fmt = fmt or row_format(path)
    try:
        with open(path, newline="" if fmt != "jsonl" else None, encoding="utf-8-sig") as f:
            yield from ADAPTERS[fmt](f, path)
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: cannot read ({type(e).__name__})") from None
