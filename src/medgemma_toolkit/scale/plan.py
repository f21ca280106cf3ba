"""Where batch work runs: one process (the default), a local pool of worker processes, or a Ray cluster.

A `ScalePlan` is the checked form of `--workers N` and `--ray ADDRESS`; everything that scales out (deid, embed,
batch, eval, localize) takes one and passes it to `scale.run`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import BackendUnavailable, BadInput

RAY_EXTRA = "pip install 'medgemma-toolkit[ray]'"
# "auto": the cluster this machine belongs to (RAY_ADDRESS or the one `ray start` left a record of); "local": a
# private one-machine Ray instance for this run; HOST:PORT: the head node's GCS address (`ray start --head --port`).
# Overrides how a local pool starts its workers (scale/local.py's `start_method`): "fork" or "spawn".
START_ENV = "MEDGEMMA_POOL_START"
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))?:(\d{1,5})$")


@dataclass(frozen=True)
class ScalePlan:
    """How many workers, and where.

    `workers`: worker processes on this machine, or with `ray_address` the number of Ray actors (0 there: one per
    CPU, or per GPU when each worker takes GPUs, of the whole cluster). `ray_address`: "auto", "local" or
    "HOST:PORT". The default (1 worker, no Ray) is the plain single-process path.
    """

    workers: int = 1
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int):
            raise BadInput("--workers must be a whole number")
        if self.ray_address is None and self.workers < 1:
            raise BadInput(f"--workers {self.workers}: give 1 or more")
        if self.ray_address is not None:
            if self.workers < 0:
                raise BadInput(f"--workers {self.workers}: give 0 (the whole cluster) or more with --ray")
            check_address(self.ray_address)
        elif self.workers > 1:
            forced_start()  # a bad override is said now, before the command creates any output

    @property
    def parallel(self) -> bool:
        """True when the work leaves this process (a pool or Ray); False for the unchanged single-process path."""
        return self.ray_address is not None or self.workers > 1

    @property
    def describe(self) -> str:
        """A short phrase for messages ("2 local workers", "Ray at 10.0.0.5:6379")."""
        if self.ray_address is not None:
            n = f"{self.workers} actor(s)" if self.workers else "one actor per CPU"
            return f"Ray ({self.ray_address}, {n})"
        return "1 process" if self.workers == 1 else f"{self.workers} local workers"


def forced_start() -> str | None:
    """`MEDGEMMA_POOL_START`'s start method ("fork" or "spawn"), None when unset; anything else is one `BadInput`
    line. Read when the plan is checked, so `deid --workers 2` with a typo fails before it writes its journal."""
    forced = os.environ.get(START_ENV, "").strip().lower()
    if forced and forced not in ("fork", "spawn"):
        raise BadInput(f"{START_ENV}={forced[:20]}: give fork or spawn")
    return forced or None


def check_address(address: str) -> str:
    """`address` if it is "auto", "local" or HOST:PORT (port 1-65535), else one `BadInput` line."""
    if address in ("auto", "local"):
        return address
    m = _HOST_PORT.match(address)
    if not m or not 0 < int(m.group(1)) < 65536 or address.startswith(":"):
        raise BadInput(f"--ray {address[:80]}: give auto, local or HOST:PORT (the head node's address)")
    return address


def require_ray() -> None:
    """Fail in one line when Ray is not installed (before any work starts)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise BackendUnavailable(f"--ray needs Ray: {RAY_EXTRA}") from None


def gpus_for_device(device: str) -> float | None:
    """GPUs each Ray actor reserves for a model on `device` (the commands' `--device`): 1 for "cuda"/"cuda:N",
    0 for "cpu" and "mps" (no Ray GPU resource), None for "auto": one per actor when the cluster has GPUs."""
    d = device.strip().lower()
    if d.startswith("cuda"):
        return 1.0
    if d == "auto":
        return None
    return 0.0
