"""Options shared by several commands, declared once: each group is a dataclass whose fields are the options.

`@option_groups(mo=ModelOptions)` on a command with a parameter `mo: ModelOptions = MODEL_DEFAULTS` gives that command
every field of `ModelOptions` as a CLI option (in the parameter's place in --help) and hands them to it as one
`ModelOptions`. A new option common to every model-loading command is one field in `ModelOptions`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer

from ..core.options import LoadOptions

if TYPE_CHECKING:
    from ..api import MedGemma
    from ..imaging import ImageOptions
    from ..scale import ScalePlan

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="Variant name, hub id, checkpoint directory or .gguf file; default: best found, else the demo model",
    ),
]
BackendOpt = Annotated[str, typer.Option(help="auto, transformers, or another registered backend")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")]
DTypeOpt = Annotated[
    str,
    typer.Option(
        help="auto (bf16 on GPU and on CPUs with AMX/AVX512-BF16, else fp32, or bfloat16-weights where fp32 does not "
        "fit), float32, bfloat16, float16, or bfloat16-weights (CPU: bf16 weights, fp32 arithmetic)"
    ),
]
QuantizeOpt = Annotated[str, typer.Option(help="none, 8bit or 4bit (CUDA only)")]
DownloadOpt = Annotated[bool, typer.Option("--allow-download", help="Allow fetching weights from the Hugging Face Hub")]
PresetOpt = Annotated[Optional[str], typer.Option(help="Prompt preset (default: the model's own convention)")]
WindowOpt = Annotated[
    Optional[str],
    typer.Option(
        help="DICOM window: 'container' (default: Google's serving container since 71a1135, whole range, no window), 'container-windowed' (the container before 71a1135: the file's window if it has one), 'file', 'voi', 'full' or 'CENTER,WIDTH'"
    ),
]
FrameOpt = Annotated[Optional[int], typer.Option(help="DICOM multi-frame: frame index (default: middle)")]
SlicesOpt = Annotated[
    int, typer.Option("--max-slices", help="CT/MR series: slices sampled uniformly (MedGemma 1.5: 85)")
]
SliceOrderOpt = Annotated[
    str,
    typer.Option(
        "--slice-order",
        help="CT/MR series: 'instance_number' (Google's notebook; position when numbers are missing or repeated) or 'position'",
    ),
]
SliceSamplingOpt = Annotated[
    str,
    typer.Option(
        "--slice-sampling",
        help="CT/MR series: 'notebook' (round(i/k*(n-1)), i=1..k) or 'linspace' (first and last included)",
    ),
]
CTWindowsOpt = Annotated[str, typer.Option("--ct-windows", help="CT series: RGB window preset, 'notebook' or 'server'")]
PatchesOpt = Annotated[int, typer.Option("--max-patches", help="Whole-slide images: tissue patches sampled")]
PatchSeedOpt = Annotated[int, typer.Option("--patch-seed", help="Whole-slide images: sampling seed")]
PatchOrderOpt = Annotated[str, typer.Option("--patch-order", help="Whole-slide images: 'random' or 'spatial'")]
PadOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--pad/--no-pad",
        help="2D images: pad to a square before resizing, or stretch; default: the preset's (padded, except "
        "cxr-longitudinal: unpadded, as Google's longitudinal notebook sends them)",
    ),
]


UpstreamOpt = Annotated[
    Optional[str],
    typer.Option(
        help="OpenAI-compatible server URL (vLLM, SGLang, Ollama, llama.cpp) to forward to; implies --backend openai. Key: $MEDGEMMA_UPSTREAM_API_KEY"
    ),
]
MmprojOpt = Annotated[
    Optional[str], typer.Option(help="llama.cpp: vision projector GGUF (default: an mmproj*.gguf beside the model)")
]
MemoryCheckOpt = Annotated[
    bool,
    typer.Option(
        "--memory-check/--no-memory-check",
        help="Refuse to load a model whose estimated peak memory exceeds what is available (see `medgemma models`)",
    ),
]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="llama.cpp: CPU threads (default: physical cores)")]
ParallelOpt = Annotated[
    Optional[int],
    typer.Option(
        help="llama.cpp: sequences decoded together in one batch (default: as many as the job has, up to 4 per physical core and 16); serve gives them one KV pool of 2048 x N tokens"
    ),
]
VisionRuntimeOpt = Annotated[
    str,
    typer.Option(
        help="transformers: who runs the image tower: auto (OpenVINO on a CPU with bf16 weights, else torch), openvino, torch"
    ),
]


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Which model, and how it is loaded: the options of `ask`, `chat`, `eval`, `batch` and `serve`."""

    model: ModelOpt = None
    backend: BackendOpt = "auto"
    device: DeviceOpt = "auto"
    dtype: DTypeOpt = "auto"
    quantize: QuantizeOpt = "none"
    allow_download: DownloadOpt = False
    upstream: UpstreamOpt = None
    mmproj: MmprojOpt = None
    threads: ThreadsOpt = None
    memory_check: MemoryCheckOpt = True
    parallel: ParallelOpt = None
    vision_runtime: VisionRuntimeOpt = "auto"

    def load_options(self, **extra: Any) -> LoadOptions:
        """These options as the one `LoadOptions` every engine reads; `extra` sets the fields a command decides
        itself (`max_batch_size`, `workload`)."""
        backend = "openai" if self.upstream and self.backend == "auto" else self.backend
        return LoadOptions(
            backend=backend,
            device=self.device,
            dtype=self.dtype,
            quantize=self.quantize,
            upstream=self.upstream,
            mmproj=self.mmproj,
            threads=self.threads,
            memory_check=self.memory_check,
            parallel=self.parallel,
            vision_runtime=self.vision_runtime,
        ).with_overrides(**extra)

    def load(self, preset: str | None = None, quiet: bool = False, **extra: Any) -> MedGemma:
        """Resolve, print the demo notice (stderr) before the wait when the demo model stands in, then load."""
        from ..api import MedGemma
        from ..models.demo import DEMO_NOTICE
        from ..models.resolve import resolve_model

        options = self.load_options(**extra)
        if options.backend == "openai":  # the model lives upstream; --model is its name there
            return MedGemma.load(self.model, options, preset=preset)
        resolved = resolve_model(self.model, allow_download=self.allow_download)
        if resolved.is_demo and not quiet:
            print(DEMO_NOTICE, file=sys.stderr, flush=True)
        return MedGemma.load(resolved, options, preset=preset)


@dataclasses.dataclass(frozen=True)
class ImageArgs:
    """How image sources become model images: the options of `ask` and `preview`."""

    window: WindowOpt = None
    frame: FrameOpt = None
    max_slices: SlicesOpt = 85
    slice_order: SliceOrderOpt = "instance_number"
    slice_sampling: SliceSamplingOpt = "notebook"
    ct_windows: CTWindowsOpt = "notebook"
    max_patches: PatchesOpt = 125
    patch_seed: PatchSeedOpt = 0
    patch_order: PatchOrderOpt = "random"
    pad: PadOpt = None

    def options(self) -> ImageOptions:
        """The checked `ImageOptions` (a bad value is one `BadInput` line)."""
        from ..imaging import ImageOptions, parse_window
        from ..imaging.options import check_options

        rest = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("window", "frame")}
        return check_options(ImageOptions(window=parse_window(self.window), frame=self.frame, **rest))


def check_sources(sources: list[str] | None, flag: str = "--image") -> None:
    """Fail in one line on an image path that does not exist, before any model loads (a typo must not cost a
    model load first, nor print the demo notice). URIs (dicomweb://, http://) and globs are checked by their
    readers; everything else is a local path."""
    from pathlib import Path

    from ..errors import BadInput

    for src in sources or []:
        if "://" in src or any(c in src for c in "*?["):
            continue
        try:
            exists = Path(src).expanduser().exists()
        except (OSError, ValueError):  # too long for the file system, or with NUL
            raise BadInput(f"{flag} {src[:60]}...: not a usable file path") from None
        if not exists:
            raise BadInput(f"{flag} {src}: file not found")


MODEL_DEFAULTS = ModelOptions()
IMAGE_DEFAULTS = ImageArgs()
F = TypeVar("F", bound=Callable[..., Any])


def option_groups(**groups: type) -> Callable[[F], F]:
    """Expand each named parameter whose type is an options dataclass into that dataclass's fields (for typer), and
    pack them back into one instance when the command runs."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        fields = {name: dataclasses.fields(cls) for name, cls in groups.items()}
        params: list[inspect.Parameter] = []
        for p in sig.parameters.values():
            if p.name not in groups:
                params.append(p)
                continue
            hints = typing.get_type_hints(groups[p.name], include_extras=True)
            params += [
                inspect.Parameter(f.name, p.kind, default=f.default, annotation=hints[f.name]) for f in fields[p.name]
            ]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            for name, cls in groups.items():
                kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in fields[name]})
            return fn(*args, **kwargs)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return command  # type: ignore[return-value]

    return wrap


WorkersOpt = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        metavar="N",
        help="Worker processes on this machine (default 1: this process); with --ray, Ray actors (default: one per CPU of the cluster)",
    ),
]
RayOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Run on a Ray cluster: 'auto' (the one this machine joined), HOST:PORT of its head, or 'local'; needs the ray extra",
    ),
]


@dataclasses.dataclass(frozen=True)
class ScaleArgs:
    """Where batch work runs: `--workers N` (a local process pool) and `--ray ADDRESS` (Ray actors)."""

    workers: WorkersOpt = None
    ray: RayOpt = None

    def plan(self) -> ScalePlan:
        """The checked `ScalePlan` (a bad value, or --ray without Ray installed, is one line)."""
        from ..scale import ScalePlan, require_ray

        default = 0 if self.ray is not None else 1
        plan = ScalePlan(workers=default if self.workers is None else self.workers, ray_address=self.ray)
        if plan.ray_address is not None:
            require_ray()
        return plan


SCALE_DEFAULTS = ScaleArgs()
