"""`run`: apply a worker to every unit in one process, a local pool or on Ray, and stream the results back.

The caller (a command) owns the inputs and the outputs: it lists the units, says how a worker is built
(`make_worker`, called once per process or actor: where a model loads), and receives every result in the driver
through `on_result` (where rows files are appended and reports merged). This package never imports models,
backends or loading: it moves callables and results, nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from .plan import ScalePlan, require_ray

U = TypeVar("U")
R = TypeVar("R")


@dataclass(frozen=True)
class RunStats:
    """What `run` did: units handed to workers, and the number of workers (processes or actors) asked for."""

    units: int
    workers: int


@contextmanager
def progress(total: int, quiet: bool, what: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr (a terminal only, like `embed`'s): call the yielded function per unit done."""
    if quiet or total < 2 or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task, 1)


def run(
    units: Sequence[U],
    make_worker: Callable[[], Callable[[U], R]],
    plan: ScalePlan,
    on_result: Callable[[U, R], None],
    *,
    quiet: bool = False,
    what: str = "units",
    num_cpus: float = 1.0,
    num_gpus: float | None = 0.0,
    batch_size: int = 8,
) -> RunStats:
    """Apply `make_worker()` to every unit; `on_result(unit, result)` runs in this process, in completion order.

    - `plan.parallel` False: here, in this process (the worker built once) and in input order: the default path.
    - `plan.workers` > 1 without Ray: a process pool (`local.py`; forked where that is safe, else spawned).
    - `plan.ray_address`: Ray actors fed chunks by this process (`ray_actors.py`), `num_cpus`/`num_gpus` reserved by each (derive
      `num_gpus` from `--device` with `gpus_for_device`: 1 for a model on a GPU, 0 on CPU, None for "auto":
      one each when the cluster has GPUs).

    `make_worker` and the units must pickle (a module-level function or a `functools.partial` of one with plain
    arguments), as must the results. Workers must be idempotent: Ray re-runs a batch whose actor was lost, and a
    re-run of a command redoes what was not recorded as done. `batch_size`: units per message to a worker (more
    amortises the transfer; fewer balances the load). Restart-safe outputs are the caller's: write atomically.

    Example:
        >>> run(paths, functools.partial(make_deid_worker, options), ScalePlan(workers=2), write_entry)
    """
    if plan.ray_address is not None:
        require_ray()
    n = len(units)
    if n == 0:  # e.g. a resumed run with nothing left: no worker is started, no model loaded
        return RunStats(0, 0)
    if plan.parallel and plan.ray_address is None:
        from .local import LocalPool

        workers = min(plan.workers, n)
        chunk = max(1, min(batch_size, n // (workers * 4) or 1))
        # The pool first: it may fork its workers, which must happen before the progress bar starts a thread.
        with LocalPool(make_worker, workers) as pool, progress(n, quiet, what) as tick:
            for i, result in pool.imap(enumerate(units), chunk):
                on_result(units[i], result)
                tick()
        return RunStats(n, workers)
    with progress(n, quiet, what) as tick:

        def done(i: int, result: Any) -> None:
            on_result(units[i], result)
            tick()

        if not plan.parallel:
            worker = make_worker()
            for i, unit in enumerate(units):
                done(i, worker(unit))
            return RunStats(n, 1)
        from .ray_actors import run_ray

        run_ray(units, make_worker, plan, done, num_cpus, num_gpus, batch_size)
        return RunStats(n, plan.workers)
