"""Device, dtype and quantisation choices for torch-based backends."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Literal

from ..errors import BackendUnavailable, BadInput
from .placement import bf16_note, cuda_index

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda", "mps"] | str
DType = Literal["auto", "float32", "bfloat16", "float16", "bfloat16-weights"]  # the last: runtime/bf16_weights.py
Quantize = Literal["none", "8bit", "4bit"]


# CPU feature flags (as /proc/cpuinfo names them) of bf16 matrix instructions that oneDNN uses for torch's bf16
# matmuls: Intel AMX (Sapphire Rapids on) and AVX512-BF16 (Cooper Lake, AMD Zen 4 on). Measured on a 2-core Zen 4
# (AVX512-BF16): a 1024x2048 @ 2048x2048 matmul 2.7x faster in bf16 than fp32, a batch-8 decode-shaped one 3.8x;
# on an AMX Xeon 6x and 1.5x. Without these flags bf16 is emulated and slower than fp32.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# Narrower models gain nothing: their steps are dominated by per-op overhead, which bf16 casts add to (the 64-wide
# test checkpoint decodes ~2x slower in bf16; Gemma 3 270M, 640 wide, and MedGemma 4B, 2560 wide, gain).
MIN_BF16_WIDTH = 512


def cpu_field(name: str, cpuinfo: str | None = None) -> str:
    """The value of /proc/cpuinfo's first `name` line (Linux); "" where there is none."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo's first `flags` line (Linux); empty where there is none."""
    return frozenset(cpu_field("flags", cpuinfo).split())


@functools.cache  # asked on every upcast matmul of bf16 weights; the answer is the build's and the machine's
def has_onednn() -> bool:
    """Whether torch runs oneDNN's x86 kernels here (an x86 CPU, a torch built with oneDNN)."""
    import platform

    import torch

    return platform.machine().lower() in ("x86_64", "amd64") and bool(torch.backends.mkldnn.is_available())


def cpu_auto_dtype(flags: frozenset[str], model_width: int | None) -> str:
    """`--dtype auto` for inference on a CPU: bf16 where the CPU has bf16 matrix instructions and the model is wide
    enough to gain (greedy answers stay those of fp32 except where two logits are within bf16's rounding; see
    benchmarks/cpu_bf16.py), else fp32."""
    if model_width is not None and model_width < MIN_BF16_WIDTH:
        return "float32"
    return "bfloat16" if flags & BF16_CPU_FLAGS else "float32"


def pick_device_dtype(
    device: str, dtype: str, model_width: int | None = None, inference: bool = False
) -> tuple[torch.device, torch.dtype]:
    """bf16 on GPU (MedGemma's native precision). On CPU, `auto` is fp32 for training; for inference
    (`inference=True`) it is `cpu_auto_dtype`'s choice for a model `model_width` wide (its hidden size)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(
            "--device cuda asked for, but torch sees no CUDA GPU (is a CUDA build of torch installed?)"
        )
    if dtype == "auto":
        if device.startswith(("cuda", "mps")):
            dtype = "bfloat16"
        else:
            dtype = cpu_auto_dtype(cpu_flags(), model_width) if inference else "float32"
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "bfloat16-weights":  # the transformers backend resolves it before calling here
        raise BadInput("--dtype bfloat16-weights is for MedGemma models through transformers on a CPU: use bfloat16")
    if dtype not in table:
        raise BadInput(f"--dtype must be one of auto, {', '.join(table)}, bfloat16-weights (CPU); got {dtype!r}")
    if device.startswith("cuda") and dtype == "bfloat16":
        idx = cuda_index(device) or 0
        if idx < torch.cuda.device_count():
            note = bf16_note(torch.cuda.get_device_capability(idx), torch.cuda.get_device_name(idx))
            if note:
                log.warning(note)
    return torch.device(device), table[dtype]
