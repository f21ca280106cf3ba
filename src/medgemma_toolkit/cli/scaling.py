"""`--workers N` / `--ray ADDRESS` for `embed`, `batch`, `eval` and `localize --batch`: the glue between a
command's units of work (`embed/scaled.py`, `batch/scaled.py`, `eval/scaled.py`, `localize/scaled.py`) and where
they run (`scale.run`: a local process pool or Ray actors).

Each worker loads its own model through a picklable loader built here (a `functools.partial` of the command's
options' `load`), so a worker process or Ray actor loads the model once and keeps it; with `--upstream` every
worker talks to the one shared server instead.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..api import MedGemma
    from ..core.scatter import MakeWorker, Scatter
    from ..scale import ScalePlan
    from .common import ModelOptions


def scatter_for(plan: ScalePlan, device: str, quiet: bool, what: str) -> Scatter | None:
    """The `Scatter` of `plan` (None for the unchanged single-process path). Units are already batches where
    batching matters, so each message to a worker carries one unit."""
    if not plan.parallel:
        return None
    from ..scale import gpus_for_device, run

    # Ray actors: 1 GPU each for `--device cuda[:N]`, 0 for cpu/mps, and for auto one each where the cluster has
    # GPUs (decided once connected). A local pool reserves nothing: its processes share this machine's devices.
    gpus = gpus_for_device(device) if plan.ray_address is not None else 0.0

    def scatter(units: Sequence[Any], make_worker: MakeWorker, on_done: Callable[[Any, Any], None]) -> None:
        if not units:  # a re-run with everything done starts no workers (and loads no model)
            return
        sized = plan
        if plan.ray_address is not None:
            # No more actors than units: the Ray runner starts every actor it is given, and each loads a model (one unit,
            # e.g. `eval`'s describing worker, gets one actor even where --ray's default is one per CPU). A local
            # pool is sized by `scale.run` itself, and must stay a pool (1 worker there means this process).
            n = 1 if len(units) == 1 else (min(plan.workers, len(units)) if plan.workers else 0)
            sized = dataclasses.replace(plan, workers=n)
        run(units, make_worker, sized, on_done, quiet=quiet, what=what, num_gpus=gpus, batch_size=1)

    return scatter


def model_loader(mo: ModelOptions, notice: bool = True, **extra: Any) -> Callable[[], MedGemma]:
    """A picklable `mo.load(quiet=True, **extra)` for the workers; the demo notice is printed once, here (unless
    the driver loads the model itself and has printed it)."""
    from .common import ModelOptions

    if notice and not mo.upstream:
        from ..models.demo import DEMO_NOTICE
        from ..models.resolve import resolve_model

        if resolve_model(mo.model, allow_download=mo.allow_download).is_demo:
            print(DEMO_NOTICE, file=sys.stderr, flush=True)
    return functools.partial(ModelOptions.load, mo, None, True, **extra)
