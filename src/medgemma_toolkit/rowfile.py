"""One reader for the row files the commands take (JSON lines, CSV, TSV), with one small adapter per format.

`read_rows` yields a `RowLine` per data row: where it is ("file:line", never its contents: rows may hold patient
data) and either the parsed row or why the line is not one, so each caller decides whether a bad line fails the
run, is skipped, or is collected into one message. Used by `eval` (whose release layouts — a JSON document, MMLU's
header-less CSV, parquet, Hugging Face datasets — are further adapters in `eval/rows.py`), `eval --batch`,
`finetune` and `rl`. Every row is bounded: at most `MAX_ROW_CHARS` characters and JSON nested at most 64 deep
(`jsondepth.py`), each refused as that row's error.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from .errors import BadInput
from .jsondepth import loads_bounded

Row = dict[str, Any]
# One row at most this many characters (32 Mi: as large as a server request body). Rows hold questions and paths;
# a longer line is one error naming its line, read past in bounded pieces rather than held whole.
MAX_ROW_CHARS = 32 * 1024**2
Format = Literal["jsonl", "csv", "tsv"]


@dataclass(frozen=True)
class RowLine:
    line: int  # 1-based; in CSV/TSV the header is line 1 and the first row line 2
    where: str  # "name:line"
    row: Any = None  # a dict for CSV/TSV; whatever the line holds for JSON lines (callers check it is an object)
    error: str | None = None  # why the line is not a row, e.g. "not valid JSON (Expecting value)"


class _TooLong(str):
    """A line cut at `MAX_ROW_CHARS`: what is left of it was skipped without being kept."""


def bounded_lines(f: IO[str], limit: int | None = None) -> Iterator[str]:
    """The lines of `f`, none longer than `limit` characters: a longer one is yielded cut as a `_TooLong` and the
    rest of it skipped in `limit`-sized reads, so a 300 MB line never sits in memory whole."""
    limit = limit or MAX_ROW_CHARS
    while line := f.readline(limit + 1):
        if len(line) <= limit or line.endswith("\n"):
            yield line
            continue
        while (rest := f.readline(limit)) and not rest.endswith("\n"):
            pass
        yield _TooLong(line[:80])


def _too_long(path: Path, i: int) -> str:
    return f"line {i} is longer than {MAX_ROW_CHARS:,} characters"


def _jsonl(f: IO[str], path: Path) -> Iterator[RowLine]:
    for i, line in enumerate(bounded_lines(f), 1):
        if isinstance(line, _TooLong):
            yield RowLine(i, f"{path.name}:{i}", error=_too_long(path, i))
            continue
        if not line.strip():
            continue
        where = f"{path.name}:{i}"
        try:
            yield RowLine(i, where, loads_bounded(line, "the row"))
        except json.JSONDecodeError as e:
            yield RowLine(i, where, error=f"not valid JSON ({e.msg})")
        except BadInput as e:
            yield RowLine(i, where, error=str(e))


def _delimited(delimiter: str) -> Callable[[IO[str], Path], Iterator[RowLine]]:
    def read(f: IO[str], path: Path) -> Iterator[RowLine]:
        def lines() -> Iterator[str]:
            for i, line in enumerate(bounded_lines(f), 1):
                if isinstance(line, _TooLong):
                    raise BadInput(f"{path.name}: {_too_long(path, i)}")
                yield line

        rdr = csv.DictReader(lines(), delimiter=delimiter)
        try:
            if rdr.fieldnames is None:
                raise BadInput(f"{path}: CSV has no header row")
            for i, row in enumerate(rdr, 2):
                # Surplus cells land under the key None; header names are stripped and blank ones dropped.
                yield RowLine(
                    i, f"{path.name}:{i}", {k.strip(): v for k, v in row.items() if k is not None and k.strip()}
                )
        except csv.Error as e:  # e.g. a field over csv's own size limit
            raise BadInput(f"{path.name}: not a readable CSV/TSV file ({e})") from None

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
