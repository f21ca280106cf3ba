"""`medgemma export`: adapters merged into a checkpoint (fine-tuning) and GGUF files (llama.cpp / Ollama)."""

from __future__ import annotations

import typer

from . import app

export_app = typer.Typer(
    help="Export models: merge a LoRA adapter (--adapter DIR --merge -o OUT) or write GGUF (export gguf).",
    invoke_without_command=True,
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")
