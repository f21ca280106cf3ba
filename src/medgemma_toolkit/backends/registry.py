"""Backends registered lazily as "module:Class" strings, so an optional engine is imported only when chosen."""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailable, BadInput
from .base import Backend

_BACKENDS: dict[str, str] = {
    "transformers": "medgemma_toolkit.backends.transformers_backend:TransformersBackend",
    "llamacpp": "medgemma_toolkit.backends.llamacpp_backend:LlamaCppBackend",
    "openai": "medgemma_toolkit.backends.openai_backend:OpenAIBackend",
}


def register_backend(name: str, target: str) -> None:
    """Add a backend ("package.module:Class") under `name`."""
    _BACKENDS[name] = target


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(name: str) -> type[Backend]:
    if name not in _BACKENDS:
        raise BadInput(f"unknown backend {name!r}; choose one of: {', '.join(available_backends())}")
    module_name, cls_name = _BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailable(f"backend {name!r} needs a package that is not installed ({e.name})") from e
    return getattr(module, cls_name)
