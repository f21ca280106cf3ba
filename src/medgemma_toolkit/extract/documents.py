"""Which documents one `extract` run reads: files and folders given with `-i`, and rows of a CSV/TSV/JSONL file.

Each document has a `key`, what its output row is known by when a run resumes: a rows file's `id` column where it
has one, else the path as the user wrote it (a folder's files: the folder as given joined to the file's place in
it), so the same command line names the same documents on every re-run wherever it runs from. A row whose document
is missing becomes that document's error, not the run's: one bad row must not cost a night's extraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from ..rowfile import read_rows

# Files a folder contributes (by suffix; a PDF is recognised by its bytes wherever it is named directly).
DOCUMENT_SUFFIXES = frozenset({".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm"})
MAX_DOCUMENTS = 100_000  # one run's documents: a folder walk or rows file larger than this is refused up front


@dataclass(frozen=True)
class Document:
    key: str  # the output row's key (resume); never shown in errors beyond the source path itself
    source: str  # the file the model reads
    error: str | None = None  # why it cannot be read (a rows file's missing path), recorded as its result


def folder_documents(folder: Path) -> list[Document]:
    """A folder's documents, recursively, in sorted path order; hidden files and folders are skipped."""
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in DOCUMENT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return [Document(str(p), str(p)) for p in found]  # rglob joins the folder as given: the key is stable


def rows_documents(path: Path, column: str) -> list[Document]:
    """One document per row of a CSV/TSV/JSONL file: `column` names the file, relative to the rows file's folder
    (or absolute); an `id` column, where present, keys the row. A bad line is that row's error."""
    if not path.is_file():
        raise BadInput(f"--input {path}: file not found")
    docs: list[Document] = []
    for r in read_rows(path):
        raw = r.row if isinstance(r.row, dict) else None
        value = raw.get(column) if raw is not None else None
        key = str(raw["id"]) if raw is not None and raw.get("id") not in (None, "") else r.where
        if r.error is not None or raw is None:
            docs.append(Document(key, r.where, f"{r.where}: {r.error or 'each row is an object'}"))
        elif not isinstance(value, str) or not value.strip():
            docs.append(Document(key, r.where, f"{r.where}: no document path in column {column!r}"))
        else:
            key = key if raw.get("id") not in (None, "") else value.strip()
            full = Path(value.strip()).expanduser()
            full = full if full.is_absolute() else path.parent / full
            error = None if full.is_file() else f"{r.where}: document not found: {value.strip()}"
            docs.append(Document(key, str(full), error))
        if len(docs) > MAX_DOCUMENTS:
            raise BadInput(f"--input {path}: more than {MAX_DOCUMENTS:,} rows; split the file")
    return docs


def collect_documents(sources: list[str], rows: Path | None = None, column: str = "document") -> list[Document]:
    """Every document of one run, in order: `-i` files and folders first, then the rows file's. A key seen twice
    is refused (its output rows could not be told apart on resume)."""
    docs: list[Document] = []
    for src in sources:
        p = Path(src).expanduser()
        docs.extend(folder_documents(p) if p.is_dir() else [Document(src, src)])
    if rows is not None:
        docs.extend(rows_documents(rows, column))
    if not docs:
        raise BadInput("no documents: give -i FILE or FOLDER, or --input ROWS")
    if len(docs) > MAX_DOCUMENTS:
        raise BadInput(f"more than {MAX_DOCUMENTS:,} documents in one run; split it")
    seen: set[str] = set()
    for d in docs:
        if d.key in seen:
            raise BadInput(f"document {d.key!r} is listed twice (give rows an 'id' column to tell them apart)")
        seen.add(d.key)
    return docs
