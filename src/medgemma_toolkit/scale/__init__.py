"""Scale batch work out: a local pool of processes (`--workers N`) or a Ray cluster (`--ray ADDRESS`).

Commands pass callables in; this package never imports a model, a backend or the loading layer (checked by
`.importlinter`). See `run` for the contract, and docs/guides/scale.md for running on a cluster.
"""

from .errors import WorkerFailed
from .journal import Journal, write_bytes_atomic
from .order import InOrder
from .plan import RAY_EXTRA, ScalePlan, check_address, gpus_for_device, require_ray
from .runner import RunStats, progress, run

__all__ = [
    "RAY_EXTRA",
    "InOrder",
    "Journal",
    "RunStats",
    "ScalePlan",
    "WorkerFailed",
    "check_address",
    "gpus_for_device",
    "progress",
    "require_ray",
    "run",
    "write_bytes_atomic",
]
