"""How much host memory a model needs to run, per backend and precision, known before anything loads.

One estimate serves `medgemma models` (from a variant's parameter count) and the loader (from the checkpoint's
safetensors headers or the GGUF files' sizes), which refuses early, in one line, when the estimate exceeds the
memory this machine has available: a model that does not fit otherwise swaps or is killed minutes into loading.

Peak = resident weights + what loading holds on top of them + the runtime's working memory:
* transformers: weights at the run dtype. Loading a checkpoint stored in another dtype (MedGemma's bf16
  safetensors run in fp32) touches every page of the mapped file while converting, so the stored copy counts too —
  that is why fp32 MedGemma 4B peaks near 24 GiB on CPU and bf16 near 8.
* llama.cpp: the GGUF files (text + mmproj when images are used) and its KV cache and compute buffers.
The working-memory terms are calibrated on the real-size MedGemma 4B runs of `benchmarks/cpu_4b.py` (README).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
# Parameters of MedGemma's vision side (SigLIP-so400m at 896 px without its pooling head + the multimodal projector),
# counted on a meta-device model of medgemma-4b-it's config; the same encoder in every multimodal variant. A GGUF
# export keeps it in the f16 `mmproj` file, whatever the text's quantisation.
VISION_PARAMS = 416_866_032 + 2_950_272
# Bytes per parameter as stored: llama.cpp's Q8_0 is 34 bytes per block of 32; Q4_K_M mixes Q4_K and Q6_K blocks
# (5.1 bits per weight over Gemma 3 4B's text tensors: 2.49 GB, measured on our export).
BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "q8_0": 34 / 32, "q4_k_m": 0.64, "f16": 2.0}
# Working memory beyond the weights, calibrated on MedGemma 4B's architecture (benchmarks/cpu_4b.py): transformers
# bf16 peaked at 10.0 GiB for an image question (8.0 GiB of weights; SigLIP's 4,096-token activations at 896 px), the
# llama.cpp Q4_K_M export at 6.4 GiB (3.1 GiB of files; its 8,192-token KV cache, compute and CLIP buffers, torch).
RUNTIME_GIB = {"transformers": 1.5, "llamacpp": 3.0}
RUNTIME_FRACTION = {"transformers": 0.05, "llamacpp": 0.10}
# The precisions `medgemma models` shows, as (backend, precision) pairs; GGUF ones include the f16 mmproj.
SHOWN = (
    ("transformers", "bfloat16"),
    ("transformers", "float32"),
    ("llamacpp", "q8_0"),
    ("llamacpp", "q4_k_m"),
)


@dataclass(frozen=True)
class Need:
    """Estimated bytes: the weights held while running, and the peak (loading + working memory)."""

    weights: int
    peak: int

    @property
    def peak_gib(self) -> float:
        return round(self.peak / GIB, 1)


def _with_runtime(backend: str, weights: int, loading: int = 0) -> Need:
    work = RUNTIME_GIB.get(backend, 1.0) * GIB + RUNTIME_FRACTION.get(backend, 0.05) * weights
    return Need(weights, int(weights + loading + work))


def params_need(
    params: int, backend: str, precision: str, vision_params: int = 0, stored: str | None = "bfloat16"
) -> Need:
    """Need for `params` parameters (vision included) run by `backend` at `precision` (a torch dtype name for
    transformers, a GGUF type for llama.cpp); `stored` is the checkpoint's dtype (transformers' load transient)."""
    if backend == "llamacpp":
        weights = (params - vision_params) * BYTES_PER_PARAM[precision] + vision_params * BYTES_PER_PARAM["f16"]
        return _with_runtime(backend, int(weights))
    weights = int(params * BYTES_PER_PARAM[precision])
    loading = int(params * BYTES_PER_PARAM[stored]) if stored and stored != precision else 0
    return _with_runtime(backend, weights, loading)


def variant_needs(params_b: float, multimodal: bool, gguf: bool = True) -> dict[str, float]:
    """Peak GiB of a variant for each shown (backend, precision), keyed like "transformers bfloat16"; `gguf=False`
    (a model llama.cpp does not run, like MedSigLIP) leaves out the GGUF ones."""
    vision = VISION_PARAMS if multimodal else 0
    p = int(params_b * 1e9)
    return {f"{b} {q}": params_need(p, b, q, vision).peak_gib for b, q in SHOWN if gguf or b != "llamacpp"}


def checkpoint_need(path: Path, dtype: str) -> Need | None:
    """Need of a safetensors checkpoint run by transformers at `dtype`, from its headers (no weights read)."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    params = 0
    stored_bytes = 0
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for k, v in header.items():
            if k == "__metadata__":
                continue
            n = 1
            for s in v.get("shape", []):
                n *= int(s)
            params += n
            begin, end = v.get("data_offsets", [0, 0])
            if names.get(v.get("dtype", "")) != dtype:  # pages converted while loading stay mapped
                stored_bytes += int(end) - int(begin)
    weights = int(params * BYTES_PER_PARAM.get(dtype, 4.0))
    return _with_runtime("transformers", weights, stored_bytes)


def gguf_need(model: Path, mmproj: Path | None = None) -> Need:
    """Need of a GGUF (and its vision projector) run by llama.cpp: the files are mapped whole."""
    weights = model.stat().st_size + (mmproj.stat().st_size if mmproj is not None and mmproj.is_file() else 0)
    return _with_runtime("llamacpp", weights)


def available_bytes(meminfo: str | None = None, cgroup_dir: str = "/sys/fs/cgroup") -> int | None:
    """Memory this process can still use: the kernel's MemAvailable, capped by a cgroup (container) limit; None
    where neither can be read (then nothing is refused)."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            meminfo = ""
    avail: int | None = None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            avail = int(line.split()[1]) * 1024
    try:
        limit = Path(cgroup_dir, "memory.max").read_text().strip()
        used = int(Path(cgroup_dir, "memory.current").read_text().strip())
        if limit != "max":
            room = max(0, int(limit) - used)
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def refusal(need: Need, what: str, available: int | None, hint: str) -> str | None:
    """The one-line refusal when `need` exceeds `available`, else None."""
    if available is None or need.peak <= available:
        return None
    return (
        f"{what} needs about {need.peak / GIB:.1f} GiB of memory, but only {available / GIB:.1f} GiB is available "
        f"on this machine ({hint}; --no-memory-check loads it anyway)"
    )
