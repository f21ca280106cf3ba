"""How much host memory a model needs to run, per backend and precision, known before anything loads.

One estimate serves `medgemma models` (from a variant's parameter count) and the loader (from the checkpoint's
safetensors headers or the GGUF files' sizes), which refuses early, in one line, when the estimate exceeds the
memory this machine has available: a model that does not fit otherwise swaps or is killed minutes into loading.

Peak = resident weights + what loading holds on top of them + the runtime's working memory:
* transformers: weights at the run dtype. Loading a checkpoint stored in another dtype (MedGemma's bf16
  safetensors run in fp32) touches every page of the mapped file while converting, so the stored copy counts too —
  that is why fp32 MedGemma 4B peaks near 24 GiB on CPU and bf16 near 8.
* llama.cpp: the GGUF files (text + mmproj when images are used), the KV cache of the job (`kv_bytes`: one sequence
  of DEFAULT_JOB_CELLS for `ask`, sliding-window layers at their window) and the compute buffers.
The working-memory terms are calibrated on the real-size MedGemma 4B runs of `benchmarks/cpu_4b.py` (README); the
llama.cpp estimate is checked against a measured peak on the test GGUFs (tests/test_llamacpp_memory.py).
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
# llama.cpp: ~0.1 GiB of Python and libraries, and compute buffers that grow with the model (measured: the demo GGUF
# and the tiny test GGUF in tests/test_llamacpp_memory.py, MedGemma 4B Q4_K_M + mmproj in benchmarks/cpu_4b.py).
RUNTIME_GIB = {"transformers": 1.5, "llamacpp": 0.1}
RUNTIME_FRACTION = {"transformers": 0.05, "llamacpp": 0.25}
# How far above a measured llama.cpp peak the estimate may lie (it must never lie below): tests hold it to this.
TOLERANCE_GIB = 0.25
# The job a llama.cpp estimate is for: one question (an image's 256 tokens, its text and a 512-token answer) in one
# sequence, whose KV pool llamacpp_backend rounds up to this many cells (its JOB_STEP).
DEFAULT_JOB_CELLS = 1024
N_UBATCH = 512  # llama.cpp's micro-batch in our engine: the windowed SWA cache keeps this many cells more
# The precisions `medgemma models` shows, as (backend, precision) pairs; GGUF ones include the f16 mmproj.
SHOWN = (
    ("transformers", "bfloat16"),
    ("transformers", "float32"),
    ("llamacpp", "q8_0"),
    ("llamacpp", "q4_k_m"),
)


@dataclass(frozen=True)
class KvShape:
    """What one KV cell costs a model in llama.cpp (f16 K and V), and which layers only keep a sliding window."""

    layers: int
    kv_dim: int  # K plus V elements per cell and layer: kv heads x (key length + value length)
    window: int = 0  # sliding window of the local layers; 0: every layer keeps the whole pool
    global_every: int = 0  # one global layer in this many (Gemma 3: 6, as llama.cpp's swa pattern); 0: none local

    def bytes(self, cells: int, slots: int = 1) -> int:
        """KV bytes of a pool of `cells` shared by `slots` sequences; local layers keep their window per sequence
        plus one micro-batch (llama.cpp's non-full SWA cache), both padded to 256 cells as llama.cpp does."""
        pool = _pad256(cells)
        if not self.window or not self.global_every:
            return 2 * self.kv_dim * self.layers * pool
        n_global = self.layers // self.global_every
        local = min(pool, _pad256(self.window * slots + N_UBATCH))
        return 2 * self.kv_dim * (n_global * pool + (self.layers - n_global) * local)


def _pad256(n: int) -> int:
    return -(-n // 256) * 256


# MedGemma's text models (their config.json): 4B = Gemma 3 4B, 27B = Gemma 3 27B; both slide a 1024 window.
GEMMA3_4B_KV = KvShape(layers=34, kv_dim=4 * (256 + 256), window=1024, global_every=6)
GEMMA3_27B_KV = KvShape(layers=62, kv_dim=16 * (128 + 128), window=1024, global_every=6)
GLOBAL_EVERY = {"gemma3": 6, "gemma2": 2}  # llama.cpp's sliding-window patterns, by GGUF architecture


def gguf_kv_shape(path: Path) -> KvShape | None:
    """The KV shape from a GGUF's metadata (no tensor data read); None for a file that is not a readable GGUF."""
    meta = gguf_scalars(path)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None

    def value(key: str) -> int:
        v = meta.get(f"{arch}.{key}")
        return int(v) if isinstance(v, (int, float)) else 0

    layers, heads, embd = value("block_count"), value("attention.head_count"), value("embedding_length")
    if not layers or not heads or not embd:
        return None
    kv_heads = value("attention.head_count_kv") or heads
    k = value("attention.key_length") or embd // heads
    v = value("attention.value_length") or embd // heads
    window = value("attention.sliding_window")
    return KvShape(layers, kv_heads * (k + v), window, GLOBAL_EVERY.get(arch, 0) if window else 0)


# GGUF metadata value types (ggml's gguf.h): fixed sizes; 8 = string, 9 = array
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_scalars(path: Path) -> dict[str, int | float | bool | str]:
    """A GGUF's scalar and string metadata, arrays skipped (the 262k-token vocabulary costs nothing): `gguf`'s
    GGUFReader would build a Python object per token, ~350 MB for Gemma's vocabulary, before the model loads."""
    import struct

    out: dict[str, int | float | bool | str] = {}
    try:
        with open(path, "rb") as f:
            magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF":
                return {}

            def string() -> str:
                (n,) = struct.unpack("<Q", f.read(8))
                return f.read(n).decode("utf-8", errors="replace")

            for _ in range(n_kv):
                key = string()
                (t,) = struct.unpack("<I", f.read(4))
                if t == 8:
                    out[key] = string()
                elif t == 9:
                    et, count = struct.unpack("<IQ", f.read(12))
                    if et == 8:
                        for _ in range(count):
                            (n,) = struct.unpack("<Q", f.read(8))
                            f.seek(n, 1)
                    elif et in _GGUF_SIZES:
                        f.seek(_GGUF_SIZES[et] * count, 1)
                    else:
                        return out  # nested arrays: not in the metadata we read
                elif t in _GGUF_SIZES:
                    (out[key],) = struct.unpack(_GGUF_FORMATS[t], f.read(_GGUF_SIZES[t]))
                else:
                    return out
    except (OSError, struct.error):
        return out
    return out


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
    params: int,
    backend: str,
    precision: str,
    vision_params: int = 0,
    stored: str | None = "bfloat16",
    kv: KvShape | None = None,
) -> Need:
    """Need for `params` parameters (vision included) run by `backend` at `precision` (a torch dtype name for
    transformers, a GGUF type for llama.cpp); `stored` is the checkpoint's dtype (transformers' load transient);
    `kv` the llama.cpp KV shape (the default job's pool is added)."""
    if backend == "llamacpp":
        weights = (params - vision_params) * BYTES_PER_PARAM[precision] + vision_params * BYTES_PER_PARAM["f16"]
        return _with_runtime(backend, int(weights), kv.bytes(DEFAULT_JOB_CELLS) if kv else 0)
    weights = int(params * BYTES_PER_PARAM[precision])
    loading = int(params * BYTES_PER_PARAM[stored]) if stored and stored != precision else 0
    return _with_runtime(backend, weights, loading)


def variant_needs(params_b: float, multimodal: bool, gguf: bool = True) -> dict[str, float]:
    """Peak GiB of a variant for each shown (backend, precision), keyed like "transformers bfloat16"; `gguf=False`
    (a model llama.cpp does not run, like MedSigLIP) leaves out the GGUF ones."""
    vision = VISION_PARAMS if multimodal else 0
    p = int(params_b * 1e9)
    kv = GEMMA3_4B_KV if params_b < 10 else GEMMA3_27B_KV
    return {f"{b} {q}": params_need(p, b, q, vision, kv=kv).peak_gib for b, q in SHOWN if gguf or b != "llamacpp"}


def llamacpp_breakdown(params_b: float, multimodal: bool, precision: str = "q4_k_m") -> dict[str, float]:
    """The parts of a variant's GGUF estimate at the default job (GiB): weights (text + f16 mmproj), KV, runtime."""
    vision = VISION_PARAMS if multimodal else 0
    kv = GEMMA3_4B_KV if params_b < 10 else GEMMA3_27B_KV
    need = params_need(int(params_b * 1e9), "llamacpp", precision, vision, kv=kv)
    kv_bytes = kv.bytes(DEFAULT_JOB_CELLS)
    return {
        "weights": round(need.weights / GIB, 2),
        "kv": round(kv_bytes / GIB, 2),
        "runtime": round((need.peak - need.weights - kv_bytes) / GIB, 2),
        "peak": round(need.peak / GIB, 2),
    }


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


def gguf_need(
    model: Path, mmproj: Path | None = None, cells: int | None = None, slots: int = 1, kv: KvShape | None = None
) -> Need:
    """Need of a GGUF (and its vision projector) run by llama.cpp: the files (read whole), the KV pool of `cells`
    shared by `slots` sequences (default: the default job's, DEFAULT_JOB_CELLS for one sequence), and the runtime."""
    weights = model.stat().st_size + (mmproj.stat().st_size if mmproj is not None and mmproj.is_file() else 0)
    kv = kv or gguf_kv_shape(model)
    return _with_runtime("llamacpp", weights, kv.bytes(cells or DEFAULT_JOB_CELLS, slots) if kv else 0)


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
