"""Out-of-memory as an ordinary outcome: recognise it, drop what held the memory, report it as a typed error.

Why the care: an exception's traceback keeps every frame of the failed forward pass alive, and with them the
activations and KV cache that filled the GPU. `torch.cuda.empty_cache()` called while that exception is still
referenced (inside its `except` block, or stored for later) frees nothing. So callers leave the `except` block
first, then `release_memory()`, then raise a fresh `DeviceOutOfMemory` that carries no traceback of the failure.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

from ..errors import DeviceOutOfMemory

T = TypeVar("T")


def is_oom(e: BaseException) -> bool:
    """CUDA's `torch.OutOfMemoryError`, an MPS/XPU "out of memory" RuntimeError, or our own typed error."""
    if isinstance(e, DeviceOutOfMemory):
        return True
    try:
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    # "CUDA error: out of memory" from a kernel launch; cuBLAS/cuDNN failing to get their workspace.
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text.lower() or "_ALLOC_FAILED" in text)


def release_memory() -> None:
    """Collect unreachable tensors (tracebacks form cycles) and give cached blocks back to the driver."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def call_or_oom(fn: Callable[[], T], message: str) -> T:
    """`fn()`, or, if it runs out of memory, free what it held and raise `DeviceOutOfMemory(message)`."""
    try:
        return fn()
    except Exception as e:
        if not is_oom(e):
            raise
    # Outside the except block: the failed call's frames (and tensors) are unreachable now.
    release_memory()
    raise DeviceOutOfMemory(message)
