"""Exports for other runtimes: GGUF (llama.cpp, Ollama) with the vision projector kept as an mmproj file."""

from __future__ import annotations

from .gguf_export import GGUFExport, export_gguf

__all__ = ["GGUFExport", "export_gguf"]
