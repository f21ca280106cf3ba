"""Device, dtype and quantisation choices for torch-based backends."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from ..errors import BackendUnavailable, BadInput
from .placement import bf16_note, cuda_index

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda", "mps"] | str
DType = Literal["auto", "float32", "bfloat16", "float16"]
Quantize = Literal["none", "8bit", "4bit"]


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    max_batch_size: int = 8
    # Read by the non-torch backends only (llamacpp, openai); torch backends ignore them.
    threads: int | None = None  # llama.cpp CPU threads (default: physical cores)
    mmproj: str | None = None  # llama.cpp vision projector GGUF (default: an mmproj*.gguf beside the model)
    context_length: int | None = None  # llama.cpp context window (default 8192)
    upstream: str | None = None  # openai backend: base URL of an OpenAI-compatible server
    # transformers backend: a PEFT adapter applied on load; merged into the weights unless the base is quantised
    # (merging into 4-bit weights would re-quantise them; QLoRA adapters stay unmerged over the same 4-bit base).
    adapter: str | None = None


def pick_device_dtype(device: str, dtype: str):
    """bf16 on GPU (MedGemma's native precision); fp32 on CPU, where bf16 matmuls are often slower."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(
            "--device cuda asked for, but torch sees no CUDA GPU (is a CUDA build of torch installed?)"
        )
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith(("cuda", "mps")) else "float32"
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise BadInput(f"--dtype must be one of auto, {', '.join(table)}; got {dtype!r}")
    if device.startswith("cuda") and dtype == "bfloat16":
        idx = cuda_index(device) or 0
        if idx < torch.cuda.device_count():
            note = bf16_note(torch.cuda.get_device_capability(idx), torch.cuda.get_device_name(idx))
            if note:
                log.warning(note)
    return torch.device(device), table[dtype]
