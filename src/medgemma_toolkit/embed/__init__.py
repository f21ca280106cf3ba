"""MedSigLIP: image and text embeddings, zero-shot scores and linear probes (`medgemma embed/classify/probe`)."""

from __future__ import annotations

from .model import Embeddings, MedSigLIP

__all__ = ["Embeddings", "MedSigLIP"]
