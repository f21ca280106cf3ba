"""Will this training run fit the device? Checked before loading anything, so users get one clear line instead
of an out-of-memory crash minutes later."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendUnavailable
from ..runtime.placement import checkpoint_params

__all__ = ["check_fits", "checkpoint_params", "estimate_bytes"]

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1024**3


def estimate_bytes(params: int, dtype: str, method: str) -> int:
    """Weights at the training dtype (NF4 ~0.55 byte/param for QLoRA) plus ~20% and 1 GiB for activations, LoRA
    weights, optimizer state and the runtime: a floor, not a promise."""
    per = 0.55 if method == "qlora" else _BYTES.get(dtype, 4)
    return int(params * per * 1.2 + GIB)


def check_fits(model_dir: Path, device: str, dtype: str, method: str) -> dict[str, float]:
    """Raise `BackendUnavailable` when the method needs what the device lacks; return the numbers checked."""
    if method == "qlora" and not device.startswith("cuda"):
        raise BackendUnavailable(
            f"--method qlora needs a CUDA GPU (4-bit NF4 via bitsandbytes); this run is on {device}: use --method lora"
        )
    if method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise BackendUnavailable("--method qlora needs bitsandbytes: pip install 'medgemma-toolkit[gpu]'") from None
    params = checkpoint_params(model_dir)
    if params is None:
        return {}
    need = estimate_bytes(params, dtype, method)
    if device.startswith("cuda"):
        import torch

        free = torch.cuda.mem_get_info(int(device.split(":")[1]) if ":" in device else None)[0]
        where = "free GPU memory"
    else:
        import psutil

        free = psutil.virtual_memory().available
        where = "available RAM"
    if need > free:
        hint = " (try --method qlora on a GPU)" if method == "lora" else ""
        raise BackendUnavailable(
            f"training this {params / 1e9:.1f}B-parameter model with --method {method} needs about "
            f"{need / GIB:.1f} GiB, but only {free / GIB:.1f} GiB {where} is free{hint}"
        )
    return {"params": params, "estimated_gib": round(need / GIB, 2), "free_gib": round(free / GIB, 2)}
