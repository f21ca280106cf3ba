"""The work as a Ray Data pipeline on a Ray cluster (`--ray ADDRESS`).

`from_items` over (index, unit) -> `map_batches` with an actor class, so each actor builds its worker once (where a
model loads) and keeps it for every batch; `concurrency` actors, each reserving `num_cpus`/`num_gpus`. Results are
iterated in the driver as blocks finish, in completion order (`preserve_order` off). Ray Data gives its actors
`max_restarts=-1` and `max_task_retries=-1`: an actor lost with its node is restarted elsewhere and its batch
retried, so a worker must be idempotent (same unit -> same output, written atomically), which ours are.

Units and results travel pickled as bytes columns: Arrow would otherwise try to infer a schema from arbitrary
Python objects (dicts whose keys differ from row to row).

Every node needs the toolkit installed at the driver's version (workers import `medgemma_toolkit.scale.ray_data`
to run `_Actor`), and every path in a unit must be readable on every node (shared storage).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import MedGemmaError
from .errors import WorkerFailed, worker_error
from .plan import ScalePlan, require_ray


class _Actor:
    """One Ray Data actor: builds the worker once, then applies it to each batch of pickled units."""

    def __init__(self, make_worker: bytes) -> None:
        self.fn = pickle.loads(make_worker)()

    def _one(self, unit: Any) -> tuple[bool, Any]:
        """(True, result), or (False, the error as the user should see it): caught here, not left to Ray, whose
        wrappers lose the exception's type and whose logs would print its message (which may quote a header)."""
        try:
            return True, self.fn(unit)
        except Exception as e:
            return False, worker_error(e)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        results = [pickle.dumps(self._one(pickle.loads(u)), protocol=pickle.HIGHEST_PROTOCOL) for u in batch["unit"]]
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {"i": batch["i"], "result": out}


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
    import ray.data
    from ray.exceptions import RayError

    assert plan.ray_address is not None
    payload = pickle.dumps(make_worker, protocol=pickle.HIGHEST_PROTOCOL)
    joined = connect(plan.ray_address, plan.workers, num_cpus)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours is shown instead (stderr, rich), and only on a terminal
        ctx.execution_options.preserve_order = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its "Full stack trace" would quote messages
        if num_gpus is None:  # --device auto: a GPU per actor where the cluster has GPUs
            num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        n = actors(plan.workers, num_cpus, num_gpus)
        rows = [{"i": i, "unit": pickle.dumps(u, protocol=pickle.HIGHEST_PROTOCOL)} for i, u in enumerate(units)]
        blocks = max(1, min(len(rows), -(-len(rows) // batch_size)))
        ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _Actor,
            fn_constructor_args=(payload,),
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=n,
            num_cpus=num_cpus,
            num_gpus=num_gpus or None,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, result in zip(batch["i"], batch["result"]):
                ok, value = pickle.loads(result)
                if not ok:
                    raise value
                on_done(int(i), value)
    except MedGemmaError:
        raise
    except RayError as e:
        raise worker_error(_root(e)) from e
    except Exception as e:
        raise worker_error(e) from e
    finally:
        if joined:
            ray.shutdown()
