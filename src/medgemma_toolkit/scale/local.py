"""A pool of worker processes on this machine (`--workers N`).

How the workers start (`start_method`): `fork` where it is safe, else `spawn`. A spawned worker is a fresh
interpreter that imports the toolkit again (~0.3 s of CPU per worker before its first unit: 10% of a 2,000-file
`deid` on two cores), a forked one starts with everything the driver has imported. `fork` is chosen on Linux (macOS's
system libraries are not fork-safe) when the driver runs no Python thread besides the main one (a lock held by a
progress bar or executor thread would be copied held) and has not imported a library whose native threads or device
state do not survive a fork (`FORK_UNSAFE`: torch, with its OpenMP pools and CUDA context; TensorFlow, JAX, gRPC,
Ray). NumPy's OpenBLAS threads do not count: OpenBLAS re-creates them in the child (`pthread_atfork`; Python 3.12+
counts them and may emit a DeprecationWarning, hidden by default). The pool forks its workers as it opens, before
the progress bar's thread starts, with the driver's objects frozen (`gc.freeze`): the children's collections skip
them, so their pages stay shared instead of being copied. `MEDGEMMA_POOL_START=spawn` (or `fork`) overrides the
choice.

What is left of the cost of two workers over one process, measured on a shared 2-CPU machine: a pool of one forked
worker uses the same user CPU per file as one process (the driver ~3% beside it); two workers running at once use
15-20% more CPU in all than one process, two independent processes at once about 5% more. That last gap is not
explained yet (not the driver, result pickling, journal or report: ~20 us per file; not malloc trimming; not
copy-on-write after the fork, which `gc.freeze` trims).

Each process builds its worker once in the pool's initializer (where a model would load) and then handles chunks of
units; at most a few chunks per process are in flight, so memory does not grow with the number of units.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from types import TracebackType
from typing import Any

from ..errors import MedGemmaError
from .errors import WorkerFailed, worker_error
from .plan import START_ENV, forced_start

__all__ = ["START_ENV", "LocalPool", "start_method"]

_worker: Callable[[Any], Any] | None = None


def _init(make_worker: Callable[[], Callable[[Any], Any]]) -> None:
    global _worker
    _worker = make_worker()


def _apply(chunk: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    assert _worker is not None, "pool initializer did not run"
    return [(i, _worker(unit)) for i, unit in chunk]


def _ready() -> None:
    """A no-op task: submitting it makes a `fork` pool start its processes now."""


def _chunks(items: Iterable[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


FORK_UNSAFE = ("torch", "tensorflow", "jax", "grpc", "ray")


def start_method() -> str:
    """`fork` on Linux for a driver with one Python thread and none of `FORK_UNSAFE` imported, else `spawn`;
    `MEDGEMMA_POOL_START` overrides."""
    forced = forced_start()
    if forced:
        return forced
    if sys.platform != "linux" or threading.active_count() != 1 or any(m in sys.modules for m in FORK_UNSAFE):
        return "spawn"
    return "fork"


class LocalPool:
    """`with LocalPool(make_worker, workers) as pool: for i, result in pool.imap(items, chunk_size): ...`

    Entering starts the processes (forked ones at once, so the caller may start threads afterwards). Results come
    in completion order. A unit's exception stops the run (a `MedGemmaError` as itself, anything else as
    `WorkerFailed` naming only its type: the message may quote file contents)."""

    def __init__(self, make_worker: Callable[[], Callable[[Any], Any]], workers: int) -> None:
        self.workers = workers
        self.method = start_method()
        self._make_worker = make_worker
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalPool:
        ctx = multiprocessing.get_context(self.method)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init, initargs=(self._make_worker,))
        if self.method == "fork":
            sys.stdout.flush()  # a child must not inherit (and later flush again) what is buffered here
            sys.stderr.flush()
            gc.freeze()  # the driver's objects: out of the children's collections, so their pages stay shared
            try:
                self._pool.submit(_ready)  # launches every process now, while this one has a single thread
            finally:
                gc.unfreeze()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._pool is not None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def imap(self, items: Iterable[tuple[int, Any]], chunk_size: int) -> Iterator[tuple[int, Any]]:
        """(index, result) for every (index, unit), `4 * workers` chunks in flight at most."""
        assert self._pool is not None, "use LocalPool in a with block"
        pool = self._pool
        chunks = _chunks(items, chunk_size)
        running: set[Future[list[tuple[int, Any]]]] = set()
        try:
            for chunk in islice(chunks, 4 * self.workers):
                running.add(pool.submit(_apply, chunk))
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield from fut.result()
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
