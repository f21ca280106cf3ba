"""`medgemma localize --batch images.csv`: the same localisation over a table of images.

Rows (CSV/TSV with a header, or JSON lines): `image` (a path, relative to the table's folder) and optionally
`objects` (several separated by ";"), else the objects given on the command line. One JSON line per row goes to
the output as each row finishes; a row that fails gets `"error"` and the rest still run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInput, MedGemmaError
from ..imaging import ImageOptions, load_image
from ..rowfile import read_rows
from .overlay import save_overlay
from .run import check_objects, localize

if TYPE_CHECKING:
    from ..api import MedGemma


@dataclass(frozen=True)
class BatchRow:
    where: str  # "file:line", never the row's contents
    image: str  # as written in the table
    path: Path | None
    objects: list[str]
    error: str | None = None


def read_table(path: Path, default_objects: Sequence[str]) -> Iterator[BatchRow]:
    if not path.is_file():
        raise BadInput(f"{path}: batch file not found")
    for r in read_rows(path):
        if r.error is not None or not isinstance(r.row, dict):
            yield BatchRow(r.where, "", None, [], r.error or "each row must be an object with an 'image'")
            continue
        image = str(r.row.get("image") or r.row.get("path") or "").strip()
        raw = r.row.get("objects")
        names = [s.strip() for s in raw.split(";")] if isinstance(raw, str) and raw.strip() else list(raw or [])
        objects = [n for n in names if n] or list(default_objects)
        if not image:
            yield BatchRow(r.where, "", None, objects, "the row has no 'image'")
            continue
        p = Path(image)
        yield BatchRow(r.where, image, p if p.is_absolute() else path.parent / p, objects)


def localize_row(
    mg: MedGemma,
    n: int,
    row: BatchRow,
    options: ImageOptions,
    overlays: Path | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """The record of the `n`-th row (1-based; it names the overlay file): its boxes, or its "error"."""
    rec: dict[str, Any] = {"row": row.where, "image": row.image}
    try:
        if row.error is not None or row.path is None:
            raise BadInput(row.error or "no image")
        img = load_image(row.path, options)
        result = localize(mg, img, check_objects(row.objects), max_new_tokens)
        rec.update(result.to_dict())
        if overlays is not None:
            out = overlays / f"{n:05d}-{row.path.stem}.png"
            save_overlay(img, [(b.label, b.xyxy) for b in result.boxes], out)
            rec["overlay"] = str(out)
    except MedGemmaError as e:
        rec["error"] = str(e)
    return rec


def run_table(
    mg: MedGemma,
    path: Path,
    default_objects: Sequence[str],
    options: ImageOptions,
    write: Callable[[dict[str, Any]], None],
    overlays: Path | None = None,
    max_new_tokens: int | None = None,
) -> tuple[int, int]:
    """Localise every row; `write` gets one record per row. Returns (rows, rows that failed)."""
    rows = failed = 0
    for row in read_table(path, default_objects):
        rows += 1
        rec = localize_row(mg, rows, row, options, overlays, max_new_tokens)
        failed += "error" in rec
        write(rec)
    if rows == 0:
        raise BadInput(f"{path}: no rows")
    return rows, failed
