"""Generation backends behind one interface; optional engines are imported only when chosen."""

from __future__ import annotations

from .base import Backend, Completion, GenerationRequest, ModelInfo, SamplingParams
from .registry import available_backends, backend_class

__all__ = [
    "Backend",
    "Completion",
    "GenerationRequest",
    "ModelInfo",
    "SamplingParams",
    "available_backends",
    "backend_class",
]
