"""`localize --batch --workers N / --ray`: the table's rows spread over workers, each with its own model.

The unit of work is one row (an image and its objects). A worker loads the model once (or opens its client to the
one shared `--upstream`), reads the image where it runs (the files must be on storage every worker reads), draws
its overlay if asked, and returns the row's record; the driver writes the records in the table's order, as one
process does, as soon as every earlier row is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.scatter import Scatter
from ..errors import BadInput
from ..imaging import ImageOptions
from .table import BatchRow, localize_row, read_table

if TYPE_CHECKING:
    from ..api import MedGemma


@dataclass(frozen=True)
class RowUnit:
    n: int  # 1-based row number (names the overlay file)
    row: BatchRow


@dataclass(frozen=True)
class LocalizeWorker:
    """Picklable: built in the driver, called once in each worker process or actor (where the model loads)."""

    load: Callable[[], MedGemma]
    options: ImageOptions
    overlays: Path | None = None
    max_new_tokens: int | None = None

    def __call__(self) -> Callable[[RowUnit], dict[str, Any]]:
        mg = self.load()

        def work(unit: RowUnit) -> dict[str, Any]:
            return localize_row(mg, unit.n, unit.row, self.options, self.overlays, self.max_new_tokens)

        return work


def run_table_scattered(
    scatter: Scatter,
    worker: LocalizeWorker,
    path: Path,
    default_objects: Sequence[str],
    write: Callable[[dict[str, Any]], None],
) -> tuple[int, int]:
    """`run_table` with the rows localised by `scatter`'s workers; records reach `write` in the table's order."""
    units = [RowUnit(n, row) for n, row in enumerate(read_table(path, default_objects), 1)]
    if not units:
        raise BadInput(f"{path}: no rows")
    held: dict[int, dict[str, Any]] = {}
    state = {"next": 1, "failed": 0}

    def done(unit: RowUnit, rec: dict[str, Any]) -> None:
        held[unit.n] = rec
        while state["next"] in held:  # a reorder buffer: only rows ahead of a missing one wait
            r = held.pop(state["next"])
            state["failed"] += "error" in r
            write(r)
            state["next"] += 1

    scatter(units, worker, done)
    return len(units), state["failed"]
