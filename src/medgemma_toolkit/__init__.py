"""MedGemma toolkit: run, evaluate, fine-tune and serve Google's MedGemma models, offline by default."""

from __future__ import annotations

# Importing the package changes nothing in the host's environment and imports no torch. Offline-by-default is
# switched on where models are found and loaded (models/offline.py) and by the `medgemma` command.


_LAZY = {
    "MedGemma": "api",
    "Answer": "api",
    "Query": "api",
    "MedSigLIP": "embed",
    "evaluate": "shortcuts",
    "deidentify": "shortcuts",
    "localize_anatomy": "shortcuts",  # not `localize`: that name is the subpackage
}


def __getattr__(name: str) -> object:  # lazy: `import medgemma_toolkit` must not import torch
    if name == "__version__":  # read on first use (importlib.metadata costs tens of milliseconds)
        from .provenance import toolkit_version

        globals()["__version__"] = version = toolkit_version()
        return version
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'medgemma_toolkit' has no attribute {name!r}")


__all__ = ["Answer", "MedGemma", "MedSigLIP", "Query", "__version__", "deidentify", "evaluate", "localize_anatomy"]
