"""Failures of scaled-out work, as one line without PHI."""

from __future__ import annotations

from ..errors import MedGemmaError


class WorkerFailed(MedGemmaError):
    """A worker process or actor failed in a way the unit's own code did not turn into a result."""

    exit_code = 3
    http_status = 500
    code = "worker_failed"


def worker_error(e: BaseException) -> MedGemmaError:
    """A worker's exception for the user: a `MedGemmaError` unchanged (it is written to be shown), anything else
    named by its type only (its message may quote a file's header)."""
    if isinstance(e, MedGemmaError):
        return e
    return WorkerFailed(f"a worker failed ({type(e).__name__}); rerun with --debug for details")
