"""A pool of worker processes on this machine (`--workers N`).

`spawn`, not `fork`: a forked copy of a process that has loaded torch, opened threads or a CUDA context is unsafe,
and `spawn` behaves the same on Linux, macOS and Windows. Each process builds its worker once in the pool's
initializer (where a model would load) and then handles chunks of units; at most a few chunks per process are in
flight, so memory does not grow with the number of units.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any

from ..errors import MedGemmaError
from .errors import WorkerFailed, worker_error

_worker: Callable[[Any], Any] | None = None


def _init(make_worker: Callable[[], Callable[[Any], Any]]) -> None:
    global _worker
    _worker = make_worker()


def _apply(chunk: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    assert _worker is not None, "pool initializer did not run"
    return [(i, _worker(unit)) for i, unit in chunk]


def _chunks(items: Iterable[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def run_pool(
    items: Iterable[tuple[int, Any]],
    make_worker: Callable[[], Callable[[Any], Any]],
    workers: int,
    chunk_size: int,
    on_done: Callable[[int, Any], None],
) -> None:
    """Apply the worker to every (index, unit) in `workers` processes; `on_done(index, result)` in the driver, in
    completion order. A unit's exception stops the run (a `MedGemmaError` as itself, anything else as
    `WorkerFailed` naming only its type: the message may quote file contents)."""
    ctx = multiprocessing.get_context("spawn")
    window = 4 * workers
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(make_worker,)) as pool:
        chunks = _chunks(items, chunk_size)
        running: set[Future[list[tuple[int, Any]]]] = set()
        try:
            for chunk in islice(chunks, window):
                running.add(pool.submit(_apply, chunk))
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    for i, result in fut.result():
                        on_done(i, result)
                    nxt = next(chunks, None)
                    if nxt is not None:
                        running.add(pool.submit(_apply, nxt))
        except BrokenProcessPool:
            raise WorkerFailed(
                "a worker process died (killed, or out of memory); what was written is complete: re-run to finish"
            ) from None
        except MedGemmaError:
            raise
        except Exception as e:
            raise worker_error(e) from e
        finally:
            for fut in running:
                fut.cancel()
