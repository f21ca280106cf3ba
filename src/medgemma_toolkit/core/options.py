"""How to load a model (`LoadOptions`) and how to sample from it (`SamplingParams`): one definition each.

Every engine reads its settings from the one `LoadOptions` (torch backends ignore the llama.cpp and upstream fields,
and the other way round), so the CLI, the Python API and the server build it once and pass it down unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput


@dataclass(frozen=True)
class LoadOptions:
    """Everything that decides how a model is loaded, for every engine: `MedGemma.load`, the CLI's model options and
    the server build one of these and `loading.load_backend` hands it to the chosen `Backend.from_options`."""

    backend: str = "auto"  # transformers, llamacpp, openai, or auto (llama.cpp for a GGUF, openai with `upstream`)
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    max_batch_size: int = 8  # 0: the backend picks (transformers: by device and memory, `AUTO_BATCH` in eval)
    # Read by the non-torch backends only (llamacpp, openai); torch backends ignore them.
    threads: int | None = None  # llama.cpp CPU threads (default: physical cores)
    mmproj: str | None = None  # llama.cpp vision projector GGUF (default: an mmproj*.gguf beside the model)
    context_length: int | None = None  # llama.cpp KV pool shared by the parallel sequences (default 8192, or more)
    parallel: int | None = None  # llama.cpp sequences decoded together (default from cores and context)
    upstream: str | None = None  # openai backend: base URL of an OpenAI-compatible server
    # transformers backend: a PEFT adapter applied on load; merged into the weights unless the base is quantised
    # (merging into 4-bit weights would re-quantise them; QLoRA adapters stay unmerged over the same 4-bit base).
    adapter: str | None = None
    # Refuse before loading when the estimated peak memory exceeds what is available (models.footprint).
    memory_check: bool = True
    # What the model is loaded for: "interactive" (ask, chat, serve: load time and latency count) or "throughput"
    # (eval, batch: items per second count). `--backend auto` may pick another backend for the demo model.
    workload: str = "interactive"
    # transformers backend: who runs the SigLIP vision tower. "auto": OpenVINO on a CPU with bf16 weights (measured
    # faster, runtime/cpu_vision.py), torch elsewhere; "openvino" or "torch" to choose.
    vision_runtime: str = "auto"

    def with_overrides(self, **overrides: Any) -> LoadOptions:
        """A copy with `overrides` (field names of this class) applied; an unknown name is a one-line `BadInput`."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise BadInput(f"unknown load option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides) if overrides else self


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings. Greedy (temperature 0) is MedGemma's documented default for every protocol."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0
