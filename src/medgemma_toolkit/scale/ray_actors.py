"""The work on a Ray cluster (`--ray ADDRESS`): plain Ray actors fed chunks of units by the driver.

Each actor builds its worker once (where a model loads) and keeps it; the driver keeps two chunks in flight per
actor (one running, one queued, so an actor never waits for the driver) and hands the next chunk to whichever
actor finishes, so results come back in completion order and a slow node gets less work.

Why not Ray Data (the first version used `from_items` -> `map_batches` with an actor class): on a two-CPU machine
it cost +150% over the local pool at 2,000 files. Ray Data plans a streaming pipeline, starts its own helper actors,
turns every batch into Arrow/NumPy blocks in the object store and back, and polls its operators; a `deid` worker
needs none of that, only "apply this function to these units on that node". Actors and `ray.wait` are Ray's core
API, present wherever Ray Data is.

Worker loss: an actor that dies (its node lost, its process killed, out of memory) fails its pending chunks with
`RayActorError`; the driver puts them back at the head of the queue, hands them to the other actors, and starts a
replacement actor (which comes up when the cluster has room for it). Workers are idempotent and write atomically,
so a chunk that was half done when its actor died is simply done again, identically. A run that has had no live
actor for `WAIT_S` seconds stops with one line (what was written is complete; `--resume` finishes it). An actor
whose constructor fails (e.g. a model that does not load) stops the run at once: a replacement would fail alike.

Every node needs the toolkit installed at the driver's version (actors import `medgemma_toolkit.scale.ray_actors`),
and every path in a unit must be readable on every node (shared storage).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import MedGemmaError
from .errors import WorkerFailed, worker_error
from .plan import ScalePlan, require_ray

WAIT_S = 300.0  # how long a run waits for a replacement actor when it has no live one
IN_FLIGHT = 2  # chunks per actor: one running, one waiting in the actor's queue


class _Worker:
    """One Ray actor: builds the worker once, then applies it to chunks of (index, unit)."""

    def __init__(self, make_worker: bytes) -> None:
        self.fn = pickle.loads(make_worker)()

    def ready(self) -> bool:
        """Returns once the constructor has run (the driver's signal that a replacement is up)."""
        return True

    def apply(self, chunk: list[tuple[int, Any]]) -> list[tuple[int, bool, Any]]:
        """(index, True, result) or (index, False, the error as the user should see it): caught here, not left to
        Ray, whose wrappers lose the exception's type and whose logs would print its message (it may quote a
        header)."""
        out: list[tuple[int, bool, Any]] = []
        for i, unit in chunk:
            try:
                out.append((i, True, self.fn(unit)))
            except Exception as e:
                out.append((i, False, worker_error(e)))
        return out


def _root(e: BaseException) -> BaseException:
    """The worker's own exception inside Ray's wrappers (`RayTaskError(UserCodeException)` caused by it): the
    first `MedGemmaError` in the chain, else the innermost exception."""
    seen: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in seen and len(seen) < 20:
        if isinstance(cur, MedGemmaError):
            return cur
        seen.append(cur)
        nxt = getattr(cur, "cause", None)
        cur = nxt if isinstance(nxt, BaseException) else cur.__cause__
    return seen[-1]


def connect(address: str, workers: int, num_cpus: float) -> bool:
    """Join the cluster at `address` (or start a private one for "local"); True when this call connected (and
    should disconnect at the end). One `MedGemmaError` line when no cluster answers."""
    import ray

    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
    try:
        if address == "local":
            ray.init(num_cpus=max(1, round(max(workers, 1) * num_cpus)), include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise WorkerFailed(f"--ray {address}: cannot join the Ray cluster ({type(e).__name__})") from e
    return True


def actors(workers: int, num_cpus: float, num_gpus: float) -> int:
    """`workers`, or with 0 one actor per CPU (per GPU when each takes GPUs) of the cluster as it is now."""
    if workers:
        return workers
    import ray

    total = ray.cluster_resources()
    per = (total.get("GPU", 0) / num_gpus) if num_gpus else (total.get("CPU", 1) / max(num_cpus, 1e-3))
    return max(1, int(per))


@dataclass(eq=False)  # slots are told apart by identity
class _Slot:
    """One actor as the driver sees it: its handle, whether it is up, and the chunks it holds (by object ref)."""

    handle: Any
    ready: Any = None  # the ref of `ready()` until the actor is up
    pending: dict[Any, list[tuple[int, Any]]] = field(default_factory=dict)


class _Driver:
    """Feeds chunks to actors, collects results, replaces lost actors (see the module docstring)."""

    def __init__(self, cls: Any, payload: bytes, n: int, chunks: deque[list[tuple[int, Any]]]) -> None:
        self.cls, self.payload, self.queue = cls, payload, chunks
        self.slots = [self._start() for _ in range(n)]
        self.by_ref: dict[Any, _Slot] = {}
        self.alone_since: float | None = None

    def _start(self) -> _Slot:
        handle = self.cls.remote(self.payload)
        return _Slot(handle, ready=handle.ready.remote())

    def _feed(self, slot: _Slot) -> None:
        while slot.ready is None and self.queue and len(slot.pending) < IN_FLIGHT:
            chunk = self.queue.popleft()
            ref = slot.handle.apply.remote(chunk)
            slot.pending[ref] = chunk
            self.by_ref[ref] = slot

    def _lost(self, slot: _Slot, e: BaseException) -> None:
        """`slot`'s actor died: its chunks go back first in line, and a replacement is started."""
        from ray.exceptions import RayActorError

        if isinstance(e, RayActorError) and e.actor_init_failed:
            raise worker_error(_root(e)) from e
        for ref, chunk in slot.pending.items():  # the failed chunk included
            self.by_ref.pop(ref, None)
            self.queue.appendleft(chunk)
        self.slots[self.slots.index(slot)] = self._start()

    def results(self) -> Iterator[tuple[int, bool, Any]]:
        """Yields (index, ok, value) as chunks complete."""
        import ray

        self._feed_all()
        while self.by_ref or self.queue:
            waiting = [s.ready for s in self.slots if s.ready is not None]
            done, _ = ray.wait([*self.by_ref, *waiting], num_returns=1, timeout=5.0)
            if not done:
                self._check_alone()
            elif done[0] in self.by_ref:
                yield from self._chunk_done(done[0])
            else:
                self._actor_up(done[0])

    def _feed_all(self) -> None:
        for slot in self.slots:
            self._feed(slot)

    def _actor_up(self, ref: Any) -> None:
        """A `ready()` answered: that actor is up (or its constructor failed, or it died starting)."""
        import ray
        from ray.exceptions import RayActorError

        slot = next(s for s in self.slots if s.ready == ref)
        try:
            ray.get(ref)
            slot.ready = None
        except RayActorError as e:
            self._lost(slot, e)
        self._feed_all()

    def _chunk_done(self, ref: Any) -> list[tuple[int, bool, Any]]:
        """The results of the chunk behind `ref`; none when its actor died (the chunk is queued again)."""
        import ray
        from ray.exceptions import ObjectLostError, RayActorError

        slot = self.by_ref.pop(ref)
        try:
            out: list[tuple[int, bool, Any]] = ray.get(ref)
        except RayActorError as e:
            self._lost(slot, e)
            self._feed_all()
            return []
        except ObjectLostError:  # a large result stored on a node that died before it was read: redo it
            self.queue.appendleft(slot.pending.pop(ref))
            self._feed(slot)
            return []
        slot.pending.pop(ref)
        self.alone_since = None
        self._feed(slot)
        return out

    def stop(self) -> None:
        """Kill every actor of this run (a replacement still waiting for room included)."""
        import ray

        for slot in self.slots:
            ray.kill(slot.handle, no_restart=True)

    def _check_alone(self) -> None:
        """No answer for a while: fail once no actor has been up (or running work) for `WAIT_S` seconds."""
        if any(s.ready is None for s in self.slots):
            self.alone_since = None
            return
        now = time.monotonic()
        self.alone_since = self.alone_since or now
        if now - self.alone_since > WAIT_S:
            raise WorkerFailed(
                f"no Ray actor could start for {WAIT_S:.0f} s (the cluster lost its nodes or has no room); what "
                "was written is complete: re-run to finish"
            )


def run_ray(
    units: Sequence[Any],
    make_worker: Callable[[], Callable[[Any], Any]],
    plan: ScalePlan,
    on_done: Callable[[int, Any], None],
    num_cpus: float,
    num_gpus: float | None,
    batch_size: int,
) -> None:
    """Apply the worker to every unit on the Ray cluster of `plan`; `on_done(index, result)` in the driver."""
    require_ray()
    import ray
    from ray.exceptions import RayError

    assert plan.ray_address is not None
    payload = pickle.dumps(make_worker, protocol=pickle.HIGHEST_PROTOCOL)
    joined = connect(plan.ray_address, plan.workers, num_cpus)
    try:
        if num_gpus is None:  # --device auto: a GPU per actor where the cluster has GPUs
            num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        n = actors(plan.workers, num_cpus, num_gpus)
        # Chunks small enough that every actor gets several (balance), large enough to amortise a round trip.
        size = max(1, min(batch_size, len(units) // (n * IN_FLIGHT * 2) or 1))
        items = list(enumerate(units))
        chunks = deque(items[k : k + size] for k in range(0, len(items), size))
        cls = ray.remote(_Worker).options(
            num_cpus=num_cpus,
            num_gpus=num_gpus or None,
            max_restarts=0,  # a lost actor is replaced by the driver, its chunks handed to the others
            scheduling_strategy="SPREAD",
        )
        driver = _Driver(cls, payload, n, chunks)
        try:
            for i, ok, value in driver.results():
                if not ok:
                    raise value
                on_done(i, value)
        finally:
            driver.stop()
    except MedGemmaError:
        raise
    except RayError as e:
        raise worker_error(_root(e)) from e
    except Exception as e:
        raise worker_error(e) from e
    finally:
        if joined:
            ray.shutdown()
