"""`Scatter`: how a command hands its units of work to workers without knowing where they run.

`embed`, `batch`, `eval` and `localize --batch` describe their work as picklable units and a picklable
`make_worker` (called once per worker process or Ray actor: where a model loads, returning the function that
handles one unit). Whoever runs them, a local process pool or Ray (`scale/`), is a `Scatter`; the results come back
to the driver through `on_done(unit, result)` in completion order, and the driver writes them with the command's
own writer. `in_process` is the trivial one (one worker, here), for tests and the Python API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

MakeWorker = Callable[[], Callable[[Any], Any]]


class Scatter(Protocol):
    def __call__(self, units: Sequence[Any], make_worker: MakeWorker, on_done: Callable[[Any, Any], None]) -> None: ...


def in_process(units: Sequence[Any], make_worker: MakeWorker, on_done: Callable[[Any, Any], None]) -> None:
    """Every unit by one worker built here, in order."""
    work = make_worker()
    for unit in units:
        on_done(unit, work(unit))
