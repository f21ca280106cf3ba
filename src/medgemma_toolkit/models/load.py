"""Resolve a model spec and load it into a backend."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..backends.registry import backend_class
from ..backends.torch_setup import LoadOptions
from .resolve import ResolvedModel, resolve_model
from .variants import BY_NAME, Variant

log = logging.getLogger(__name__)


def _sniff_variant(path: Path) -> Variant | None:
    """A hub snapshot copied under another name still carries its model card: recognise 1.5 vs v1 from it."""
    card = path / "README.md" if path.is_dir() else None
    if card is None or not card.is_file():
        return None
    try:
        head = card.read_text(errors="ignore")[:4000].lower()
    except OSError:
        return None
    for name in sorted(BY_NAME, key=len, reverse=True):  # longest first: "medgemma-27b-text-it" before "-27b-it"
        if name in head:
            return BY_NAME[name]
    return None


def info_hint(resolved: ResolvedModel) -> dict[str, Any]:
    v = resolved.variant or _sniff_variant(resolved.path)
    hint: dict[str, Any] = {"name": resolved.name}
    if resolved.is_demo:
        hint.update(pretrained=True, thinking=False, default_preset="pretrained")
    elif v is not None:
        hint.update(pretrained=not v.instruction_tuned, thinking=v.thinking, default_preset=v.default_preset)
    return hint


def choose_backend(resolved: ResolvedModel, backend: str) -> str:
    if backend != "auto":
        return backend
    if resolved.format == "gguf":
        try:
            backend_class("llamacpp")
            return "llamacpp"
        except Exception:
            return "transformers"  # works everywhere, ~50x slower to load a GGUF
    return "transformers"


def load_backend(
    model: str | ResolvedModel | None = None,
    backend: str = "auto",
    options: LoadOptions | None = None,
    allow_download: bool = False,
) -> tuple[Backend, ResolvedModel, float]:
    """Return (backend, resolved model, load seconds)."""
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model, allow_download=allow_download)
    name = choose_backend(resolved, backend)
    cls = backend_class(name)
    t0 = time.perf_counter()
    be = cls(resolved.path, info_hint(resolved), options or LoadOptions())  # type: ignore[call-arg]
    return be, resolved, time.perf_counter() - t0
