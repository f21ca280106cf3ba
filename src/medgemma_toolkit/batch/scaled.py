"""`batch --workers N / --ray`: the rows in batches, each batch answered by a worker with its own model.

The unit of work is one batch of rows, cut from the pending rows sorted as one process sorts them (longest first),
so each worker decodes exactly the batches one process would, and greedy answers are the same. A worker loads
the model once (or opens its client to the one shared `--upstream`), builds each row's request (images are read
where the worker runs: the files must be on storage every worker reads) and returns the outcomes; the driver turns
them into output rows and appends them to the one `--out` file, flushed per batch, as one process does, so
`--resume` works the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.scatter import Scatter
from ..eval.generation import AUTO_BATCH_CEILING, Outcome, auto_batch_size, run_batches
from .run import BatchRow, open_log, records_of, row_request

if TYPE_CHECKING:
    from ..api import MedGemma


def row_length(r: BatchRow) -> tuple[int, int]:
    """The sort key of `run_batch`: rows with more images, then longer questions, first."""
    return (len(r.images), len(r.question))


@dataclass(frozen=True)
class BatchWorker:
    """Picklable: built in the driver, called once in each worker process or actor (where the model loads)."""

    load: Callable[[], MedGemma]
    think: bool = False
    max_new_tokens: int | None = None
    batch_size: int | None = None  # None: `auto_batch_size` of the worker's backend, as one process picks it
    images: bool = False  # whether any pending row has images (the auto batch size depends on it)
    schema: dict[str, Any] | None = None  # `batch --schema`: each answer decoded under it (validated by the driver)

    def __call__(self) -> Callable[[list[BatchRow]], list[Outcome[BatchRow]]]:
        mg = self.load()
        size = self.batch_size or auto_batch_size(mg.backend, images=self.images)

        def build(r: BatchRow) -> Any:
            return row_request(mg, r, self.think, self.max_new_tokens, self.schema)

        def work(rows: list[BatchRow]) -> list[Outcome[BatchRow]]:
            outs: list[Outcome[BatchRow]] = []
            run_batches(mg.backend, rows, build, outs.extend, size, sort_key=row_length, progress=False)
            return outs

        return work


def run_batch_scattered(
    scatter: Scatter,
    load: Callable[[], MedGemma],
    input_path: Path,
    out_path: Path,
    *,
    resume: bool = False,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    think: bool = False,
    on_error: str = "fail",
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`run_batch` with the generation done by `scatter`'s workers; the same output file and statistics."""
    rows, log = open_log(input_path, out_path, resume, on_error)
    pending = sorted((r for r in rows if r.id not in log.done), key=row_length, reverse=True)
    # Chunks of the batch size one process would use (auto: the largest it picks, which its smaller choices divide).
    step = batch_size or AUTO_BATCH_CEILING
    chunks = [pending[i : i + step] for i in range(0, len(pending), step)]
    worker = BatchWorker(load, think, max_new_tokens, batch_size, any(r.images for r in pending), schema)
    t0 = time.perf_counter()
    try:
        scatter(chunks, worker, lambda _chunk, outs: log.append(records_of(outs, on_error, schema)))
    finally:
        log.close()
    return {
        "rows": len(rows),
        "generated": len(pending),
        "resumed": len(rows) - len(pending),
        "seconds": round(time.perf_counter() - t0, 3),
    }
