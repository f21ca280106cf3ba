"""Resolve a model spec and load it into a backend."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..backends.base import Backend
from ..backends.registry import backend_class
from ..backends.torch_setup import LoadOptions
from ..errors import CapabilityError
from .checkpoint import ModelHint, variant_from_card
from .resolve import ResolvedModel, resolve_model
from .variants import find_variant

log = logging.getLogger(__name__)


def info_hint(resolved: ResolvedModel) -> ModelHint:
    """What is known about `resolved` before loading: the demo's, or its variant's (by name, else its model card)."""
    if resolved.is_demo:
        return ModelHint(resolved.name, pretrained=True, thinking=False, default_preset="pretrained")
    v = resolved.variant or (None if resolved.source == "remote" else variant_from_card(resolved.path))
    return ModelHint(resolved.name).with_variant(v)


def choose_backend(resolved: ResolvedModel, backend: str) -> str:
    if backend != "auto":
        return backend
    if resolved.format == "gguf":
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is not None:
            return "llamacpp"
        return "transformers"  # works everywhere, ~50x slower to load a GGUF
    return "transformers"


def remote_model(model: str | ResolvedModel | None) -> ResolvedModel:
    """`--model` for a remote backend is the upstream's model name (empty: the upstream's first model)."""
    name = model.name if isinstance(model, ResolvedModel) else (model or os.environ.get("MEDGEMMA_MODEL") or "")
    return ResolvedModel(name, Path(name or "."), "hf", find_variant(name) if name else None, "remote")


def load_backend(
    model: str | ResolvedModel | None = None,
    backend: str = "auto",
    options: LoadOptions | None = None,
    allow_download: bool = False,
) -> tuple[Backend, ResolvedModel, float]:
    """Return (backend, resolved model, load seconds)."""
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
    name = choose_backend(resolved, backend)
    cls = backend_class(name)
    t0 = time.perf_counter()
    be = cls(resolved.path, info_hint(resolved), options or LoadOptions())  # type: ignore[call-arg]
    return be, resolved, time.perf_counter() - t0
