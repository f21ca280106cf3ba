"""Options shared by every command that loads a model, declared once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Variant name, hub id, checkpoint directory or .gguf file; default: best found, else the demo model"),
]
BackendOpt = Annotated[str, typer.Option(help="auto, transformers, or another registered backend")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")]
DTypeOpt = Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16")]
QuantizeOpt = Annotated[str, typer.Option(help="none, 8bit or 4bit (CUDA only)")]
DownloadOpt = Annotated[bool, typer.Option("--allow-download", help="Allow fetching weights from the Hugging Face Hub")]
PresetOpt = Annotated[Optional[str], typer.Option(help="Prompt preset (default: the model's own convention)")]
WindowOpt = Annotated[Optional[str], typer.Option(help="DICOM window: 'voi' (the file's), 'full' (whole range) or 'CENTER,WIDTH'; default: the file's VOI window if it has one, else full range")]
FrameOpt = Annotated[Optional[int], typer.Option(help="DICOM multi-frame: frame index (default: middle)")]
SlicesOpt = Annotated[int, typer.Option("--max-slices", help="CT/MR series: slices sampled uniformly (MedGemma 1.5: 85)")]
SliceOrderOpt = Annotated[str, typer.Option("--slice-order", help="CT/MR series: 'instance_number' (Google's notebook; position when numbers are missing or repeated) or 'position'")]
SliceSamplingOpt = Annotated[str, typer.Option("--slice-sampling", help="CT/MR series: 'notebook' (round(i/k*(n-1)), i=1..k) or 'linspace' (first and last included)")]
CTWindowsOpt = Annotated[str, typer.Option("--ct-windows", help="CT series: RGB window preset, 'notebook' or 'server'")]
PatchesOpt = Annotated[int, typer.Option("--max-patches", help="Whole-slide images: tissue patches sampled")]
PatchSeedOpt = Annotated[int, typer.Option("--patch-seed", help="Whole-slide images: sampling seed")]
PatchOrderOpt = Annotated[str, typer.Option("--patch-order", help="Whole-slide images: 'random' or 'spatial'")]


UpstreamOpt = Annotated[
    Optional[str],
    typer.Option(help="OpenAI-compatible server URL (vLLM, SGLang, Ollama, llama.cpp) to forward to; implies --backend openai. Key: $MEDGEMMA_UPSTREAM_API_KEY"),
]
MmprojOpt = Annotated[Optional[str], typer.Option(help="llama.cpp: vision projector GGUF (default: an mmproj*.gguf beside the model)")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="llama.cpp: CPU threads (default: physical cores)")]


def load_model(model, backend, device, dtype, quantize, allow_download, preset, quiet: bool = False,
               upstream: str | None = None, mmproj: str | None = None, threads: int | None = None):
    """Resolve, print the demo notice (stderr) before the wait when the demo model stands in, then load."""
    import sys

    from ..api import MedGemma
    from ..models.demo import DEMO_NOTICE
    from ..models.resolve import resolve_model

    extra = {"upstream": upstream, "mmproj": mmproj, "threads": threads}
    if upstream or backend == "openai":  # the model lives upstream; --model is its name there
        return MedGemma.load(model, backend="openai" if backend == "auto" else backend, preset=preset, **extra)
    resolved = resolve_model(model, allow_download=allow_download)
    if resolved.is_demo and not quiet:
        print(DEMO_NOTICE, file=sys.stderr, flush=True)
    return MedGemma.load(resolved, backend=backend, device=device, dtype=dtype, quantize=quantize, preset=preset,
                         **extra)
