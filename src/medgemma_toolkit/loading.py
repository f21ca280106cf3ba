"""Resolve a model spec and load it into a backend: the one layer that knows both `models` (where a checkpoint is,
what it needs) and `backends` (the engines), above both."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from .backends.base import Backend
from .backends.registry import backend_class
from .core.options import LoadOptions
from .errors import BackendUnavailable, CapabilityError
from .models.checkpoint import info_hint
from .models.demo import DEMO_WIDTH, demo_checkpoint_dir
from .models.footprint import Need, available_bytes, checkpoint_need, gguf_need, refusal
from .models.resolve import ResolvedModel, resolve_model
from .models.variants import find_variant
from .runtime.bf16_weights import MODE as BF16_WEIGHTS
from .runtime.torch_setup import BF16_CPU_FLAGS, cpu_auto_dtype, cpu_flags

log = logging.getLogger(__name__)


def choose_backend(resolved: ResolvedModel, backend: str, options: LoadOptions | None = None) -> str:
    """`--backend auto`: llama.cpp for a GGUF (where installed), else transformers. The demo model is the exception
    for throughput work (eval, batch) where torch runs it in bf16 or on a GPU: batched bf16 matmuls outrun llama.cpp's
    int8 CPU kernels (demo eval, 64 MCQ items on 2 Zen 4 cores: 5.3 vs 3.1 items/s), and its converted checkpoint is
    cached (`demo_checkpoint_dir`), so the load costs about 2 s after the first time."""
    if backend != "auto":
        return backend
    if resolved.is_demo and options is not None and options.workload == "throughput" and _torch_fast(options):
        return "transformers"
    if resolved.format == "gguf":
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is not None:
            return "llamacpp"
        return "transformers"  # works everywhere, ~50x slower to load a GGUF
    return "transformers"


def _torch_fast(options: LoadOptions) -> bool:
    """Would torch run the demo on a GPU, or in bf16 on a CPU with bf16 matrix instructions?"""
    device, dtype = options.device, options.dtype
    if not device.startswith(("auto", "cpu")) or _gpu_present(device):
        return dtype in ("auto", "bfloat16", "float16")
    flags = cpu_flags()
    if dtype == "auto":
        dtype = cpu_auto_dtype(flags, DEMO_WIDTH)
    return dtype == "bfloat16" and bool(flags & BF16_CPU_FLAGS)


def remote_model(model: str | ResolvedModel | None) -> ResolvedModel:
    """`--model` for a remote backend is the upstream's model name (empty: the upstream's first model)."""
    name = model.name if isinstance(model, ResolvedModel) else (model or os.environ.get("MEDGEMMA_MODEL") or "")
    return ResolvedModel(name, Path(name or "."), "hf", find_variant(name) if name else None, "remote")


def load_backend(
    model: str | ResolvedModel | None = None, options: LoadOptions | None = None, allow_download: bool = False
) -> tuple[Backend, ResolvedModel, float]:
    """Return (backend, resolved model, load seconds); `options.backend` names the engine (or auto)."""
    backend = options.backend if options is not None else "auto"
    if backend == "auto" and options is not None and options.upstream:
        backend = "openai"
    if backend != "auto" and backend_class(backend).remote:
        resolved = remote_model(model)  # the upstream holds the weights: nothing to find on disk
    else:
        resolved = model if isinstance(model, ResolvedModel) else resolve_model(model, allow_download=allow_download)
    if resolved.variant is not None and resolved.variant.modality == "embedding":
        raise CapabilityError(
            f"{resolved.name} is an embedding model (MedSigLIP), not a generative one: use `medgemma embed`, "
            f"`classify` or `probe` (Python: MedSigLIP.load)"
        )
    opts = options or LoadOptions()
    name = choose_backend(resolved, backend, opts)
    if name == "transformers" and resolved.is_demo:
        # transformers reads a GGUF in Python on every load (~1 min); the demo's converted folder loads in ~2 s
        resolved = dataclasses.replace(resolved, path=demo_checkpoint_dir(), format="hf")
    if opts.memory_check:
        opts = fit_cpu_dtype(resolved, name, opts)
        check_memory(resolved, name, opts)
    cls = backend_class(name)
    t0 = time.perf_counter()
    be = cls.from_options(resolved.path, info_hint(resolved), opts)
    return be, resolved, time.perf_counter() - t0


def fit_cpu_dtype(
    resolved: ResolvedModel, backend: str, options: LoadOptions, available: int | None = None
) -> LoadOptions:
    """`--dtype auto` where it means float32 on a CPU (no bf16 instructions) for a checkpoint whose float32 load
    would not fit the memory available (`available`, default: now) but whose bf16 weights would: keep the weights in
    bf16 and compute in float32 (`--dtype bfloat16-weights`, runtime/bf16_weights.py), rather than refusing the
    load. MedGemma 4B on a 16-24 GB AVX2 machine: ~26 GiB in float32, ~10 GiB so. Where neither fits, the same
    (so that `check_memory`'s refusal states the smaller need). Other options come back as given."""
    if backend != "transformers" or resolved.format != "hf" or options.dtype != "auto":
        return options
    if not options.device.startswith(("auto", "cpu")) or _gpu_present(options.device):
        return options
    if cpu_auto_dtype(cpu_flags(), _hidden_size(resolved.path)) != "float32":
        return options
    full, half = checkpoint_need(resolved.path, "float32"), checkpoint_need(resolved.path, "bfloat16")
    free = available_bytes() if available is None else available
    if full is None or half is None or free is None or full.peak <= free:
        return options
    if half.peak > free:  # neither fits: the refusal that follows states the smaller need
        return dataclasses.replace(options, dtype=BF16_WEIGHTS)
    log.warning(
        "%s in float32 needs about %.1f GiB, %.1f GiB is available: weights kept in bf16, arithmetic in float32 "
        "(--dtype %s)",
        resolved.name,
        full.peak_gib,
        free / 1024**3,
        BF16_WEIGHTS,
    )
    return dataclasses.replace(options, dtype=BF16_WEIGHTS)


def _gpu_present(device: str) -> bool:
    """Would `--device auto` put the model on a GPU (CUDA or MPS)? False for any named device."""
    if device != "auto":
        return False
    import torch

    return bool(torch.cuda.is_available() or torch.backends.mps.is_available())


def memory_need(resolved: ResolvedModel, backend: str, options: LoadOptions) -> tuple[Need, str] | None:
    """(estimated need, the hint for a refusal) of loading `resolved` into host memory with `backend`; None when
    it is not host memory that the weights fill (a GPU, a remote server) or nothing can be estimated."""
    if backend == "llamacpp" and resolved.format == "gguf":
        from .backends.llamacpp_backend import PER_SEQUENCE_CONTEXT, find_mmproj

        mmproj = Path(options.mmproj) if options.mmproj else find_mmproj(resolved.path)
        # The pool it starts with: --context-length, else --parallel slots as serve sizes them, else one question
        slots = options.parallel or 1
        cells = options.context_length or (PER_SEQUENCE_CONTEXT * slots if options.parallel else None)
        return (
            gguf_need(resolved.path, mmproj, cells, slots),
            "try a smaller quantisation (medgemma export gguf --outtype q4_k_m), a smaller --context-length or --parallel, or more memory",
        )
    if backend != "transformers" or resolved.format != "hf" or not options.device.startswith(("auto", "cpu")):
        return None
    dtype = "bfloat16" if options.dtype == BF16_WEIGHTS else options.dtype  # what the weights are held in
    if _gpu_present(options.device):
        return None  # GPU placement checks its own memory
    if dtype == "auto":
        dtype = cpu_auto_dtype(cpu_flags(), _hidden_size(resolved.path))
    need = checkpoint_need(resolved.path, dtype)
    if need is None:
        return None
    # bf16 arithmetic is emulated without bf16 instructions: there, bf16 weights with fp32 arithmetic are faster
    half = "bfloat16" if cpu_flags() & BF16_CPU_FLAGS else BF16_WEIGHTS
    hint = f"try --dtype {half} or a GGUF export (medgemma export gguf --outtype q4_k_m)"
    return need, hint if dtype == "float32" else "try a GGUF export (medgemma export gguf --outtype q4_k_m)"


def check_memory(resolved: ResolvedModel, backend: str, options: LoadOptions, available: int | None = None) -> None:
    """Refuse in one line, before loading, a model whose estimated peak exceeds the available memory."""
    est = memory_need(resolved, backend, options)
    if est is None:
        return
    need, hint = est
    log.info("estimated peak memory of %s through %s: %.1f GiB", resolved.name, backend, need.peak_gib)
    line = refusal(
        need, f"{resolved.name} through {backend}", available_bytes() if available is None else available, hint
    )
    if line is not None:
        raise BackendUnavailable(line)


def _hidden_size(path: Path) -> int | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = cfg.get("text_config") or cfg
    return text.get("hidden_size")
