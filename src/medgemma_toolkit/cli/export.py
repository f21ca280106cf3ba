"""`medgemma export`: adapters merged into a checkpoint (fine-tuning) and GGUF files (llama.cpp / Ollama)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import BadInput
from ..export.gguf_export import DEFAULT_MMPROJ_TYPE
from . import app

export_app = typer.Typer(invoke_without_command=True, no_args_is_help=True)  # help: export's docstring
app.add_typer(export_app, name="export")


@export_app.callback()
def export(
    ctx: typer.Context,
    adapter: Annotated[
        Optional[Path], typer.Option("--adapter", help="LoRA adapter folder (e.g. RUN/adapter from finetune)")
    ] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Fold the adapter into the base weights")] = False,
    output: Annotated[
        Optional[Path], typer.Option("--out", "-o", "--output", help="Folder for the merged checkpoint")
    ] = None,
    base: Annotated[
        Optional[str], typer.Option(help="Base model (default: the one named in adapter_config.json)")
    ] = None,
) -> None:
    """Export models: merge a LoRA adapter (--adapter DIR --merge -o OUT) or write GGUF (export gguf).

    With --adapter DIR --merge -o OUT: write a merged checkpoint that loads anywhere.

    Example: medgemma export --adapter runs/path1/adapter --merge -o medgemma-4b-path1
    Example: medgemma export gguf medgemma-4b-path1 -o gguf/ --outtype q8_0
    """
    if ctx.invoked_subcommand is not None:
        return
    if adapter is None:
        raise BadInput("give --adapter DIR --merge -o OUT, or a subcommand (see: medgemma export --help)")
    if not merge:
        raise BadInput("--adapter needs --merge (adapters themselves already load with PEFT)")
    if output is None:
        raise BadInput("--merge needs -o OUT, the folder for the merged checkpoint")
    from ..train.merge import merge_adapter

    dest = merge_adapter(adapter, output, base)
    print(f"wrote merged checkpoint {dest} (load it with: medgemma ask --model {dest} ...)")


@export_app.command("gguf")
def export_gguf_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help="MedGemma(-architecture) checkpoint folder, e.g. a merged fine-tune")
    ],
    output: Annotated[
        Path, typer.Option("--out", "-o", "--output", help="Folder for the GGUF files and the Ollama Modelfile")
    ],
    outtype: Annotated[
        str, typer.Option(help="Text model weights: f32, f16, bf16, q8_0 or q4_k_m (q4_k_m needs llama-cpp-python)")
    ] = "f16",
    mmproj_outtype: Annotated[
        str,
        typer.Option(
            help="Vision projector weights: f32, f16, bf16 or q8_0 (default: the fastest exact one on CPUs, "
            "measured in docs/guides/llamacpp.md)"
        ),
    ] = DEFAULT_MMPROJ_TYPE,
    name: Annotated[Optional[str], typer.Option(help="File name stem (default: the checkpoint folder's name)")] = None,
    text_only: Annotated[bool, typer.Option("--text-only", help="Skip the vision projector (mmproj)")] = False,
    llama_cpp_source: Annotated[
        Optional[str],
        typer.Option(
            help="llama-cpp-python sdist (.tar.gz) or llama.cpp tree to take the converter from; default: pip download, cached"
        ),
    ] = None,
) -> None:
    """Write a text GGUF + an mmproj GGUF (vision kept) + an Ollama Modelfile, with llama.cpp's own converter.

    Example: medgemma export gguf medgemma-4b-path1 -o gguf/ --outtype q8_0
    """
    from ..export import export_gguf

    r = export_gguf(
        checkpoint,
        output,
        name=name,
        outtype=outtype,  # type: ignore[arg-type]
        mmproj_outtype=mmproj_outtype,  # type: ignore[arg-type]
        llama_cpp_source=llama_cpp_source,
        vision=not text_only,
    )
    print(f"wrote {r.model}")
    if r.mmproj is not None:
        print(f"wrote {r.mmproj}")
    print(f"wrote {r.modelfile} (ollama create NAME -f {r.modelfile})")
    print(f'run it: medgemma ask --model {r.model} --image XRAY.png "Describe this X-ray."')
