"""MedGemma toolkit: run, evaluate, fine-tune and serve Google's MedGemma models, offline by default."""

from __future__ import annotations

import os

# Nothing we do may phone home: the Hub is consulted only when a user opts in to a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medgemma-toolkit")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str):  # lazy: `import medgemma_toolkit` must not import torch
    if name in ("MedGemma", "Answer", "Query"):
        from . import api

        return getattr(api, name)
    if name == "MedSigLIP":
        from .embed import MedSigLIP

        return MedSigLIP
    raise AttributeError(name)


__all__ = ["MedGemma", "MedSigLIP", "Answer", "Query", "__version__"]
