"""`batch --workers N / --ray`: the rows in batches, each batch answered by a worker with its own model.

The unit of work is one batch of rows, cut from the pending rows sorted as one process sorts them (longest first),
so each worker decodes exactly the batches one process would, and greedy answers are the same. A worker loads
the model once (or opens its client to the one shared `--upstream`), builds each row's request (images are read
where the worker runs: the files must be on storage every worker reads) and returns the outcomes; the driver turns
them into output rows and appends them to the one `--out` file, flushed per batch, as one process does, so
`--resume` works the same. With `--sr` the workers also send back what each prompt held (see `batch/sr.py`): the
driver never loads a model and no image is decoded twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.scatter import Scatter
from ..eval.generation import AUTO_BATCH_CEILING, Outcome, auto_batch_size, run_batches
from ..imaging.manifest import prompt_manifest
from .run import BatchRow, open_log, records_of, row_request
from .sr import Evidence, Seen, describe_rows

if TYPE_CHECKING:
    from ..api import MedGemma
    from ..sr.algorithm import AlgorithmInfo


def row_length(r: BatchRow) -> tuple[int, int]:
    """The sort key of `run_batch`: rows with more images, then longer questions, first."""
    return (len(r.images), len(r.question))


@dataclass(frozen=True)
class RowsUnit:
    """One message to a worker: a batch of rows to answer, or (`answer` False, `batch --sr` only) rows answered by
    an earlier run whose request is built again only for the manifest its SR cites."""

    rows: tuple[BatchRow, ...]
    answer: bool = True


@dataclass
class RowsDone:
    """What a worker sends back: the outcomes, and with `--sr` each built row's manifest and the model's identity
    (so the driver writes the SRs without a model of its own)."""

    outcomes: list[Outcome[BatchRow]]
    seen: Seen = field(default_factory=dict)
    algorithm: AlgorithmInfo | None = None


@dataclass(frozen=True)
class BatchWorker:
    """Picklable: built in the driver, called once in each worker process or actor (where the model loads). Every
    field is one of `run_batch`'s settings; `tests/test_scale_options.py` checks that each of the command's options
    reaches a field (or is the driver's)."""

    load: Callable[[], MedGemma]
    think: bool = False
    max_new_tokens: int | None = None
    batch_size: int | None = None  # None: `auto_batch_size` of the worker's backend, as one process picks it
    images: bool = False  # whether any pending row has images (the auto batch size depends on it)
    schema: dict[str, Any] | None = None  # `batch --schema`: each answer decoded under it (validated by the driver)
    sr: bool = False  # `batch --sr`: send back each row's manifest and the model's identity

    def __call__(self) -> Callable[[RowsUnit], RowsDone]:
        mg = self.load()
        size = self.batch_size or auto_batch_size(mg.backend, images=self.images)
        algorithm = None
        if self.sr:
            from ..sr import algorithm_of

            algorithm = algorithm_of(mg)

        def work(unit: RowsUnit) -> RowsDone:
            done = RowsDone([], algorithm=algorithm)
            if not unit.answer:
                done.seen = describe_rows(mg, list(unit.rows), self.think, self.max_new_tokens)
                return done

            def build(r: BatchRow) -> Any:
                req = row_request(mg, r, self.think, self.max_new_tokens, self.schema)
                if self.sr:
                    done.seen[r.id] = prompt_manifest(req.prompt)
                return req

            run_batches(mg.backend, unit.rows, build, done.outcomes.extend, size, sort_key=row_length, progress=False)
            return done

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
    evidence: Evidence | None = None,
) -> dict[str, Any]:
    """`run_batch` with the generation done by `scatter`'s workers; the same output file and statistics.
    `evidence` (`batch --sr`): filled with what the SRs cite, from the workers: the asked rows' manifests, those of
    earlier answers that an SR to be written again cites (built by the workers in the same run), and the model's
    identity."""
    rows, log = open_log(input_path, out_path, resume, on_error)
    pending = sorted((r for r in rows if r.id not in log.done), key=row_length, reverse=True)
    # Chunks of the batch size one process would use (auto: the largest it picks, which its smaller choices divide).
    step = batch_size or AUTO_BATCH_CEILING
    units = [RowsUnit(tuple(pending[i : i + step])) for i in range(0, len(pending), step)]
    if evidence is not None:
        again = evidence.to_describe(out_path, {r.id for r in pending})
        units += [RowsUnit(tuple(again[i : i + step]), answer=False) for i in range(0, len(again), step)]
    images = any(r.images for r in pending)
    worker = BatchWorker(load, think, max_new_tokens, batch_size, images, schema, evidence is not None)

    def done(_unit: RowsUnit, result: RowsDone) -> None:
        if evidence is not None:
            evidence.seen.update(result.seen)
            evidence.algorithm = evidence.algorithm or result.algorithm
        if _unit.answer:
            log.append(records_of(result.outcomes, on_error, schema))

    t0 = time.perf_counter()
    try:
        scatter(units, worker, done)
    finally:
        log.close()
    return {
        "rows": len(rows),
        "generated": len(pending),
        "resumed": len(rows) - len(pending),
        "seconds": round(time.perf_counter() - t0, 3),
    }
