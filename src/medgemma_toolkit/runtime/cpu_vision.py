"""The CPU fast path for MedGemma's vision tower: SigLIP run by OpenVINO instead of torch.

Why: at 896 px the tower is 4,096 tokens x 27 layers and its attention has heads of 72. torch's CPU attention kernels
run that shape at 25-50 GFLOP/s, a fraction of the cores' bf16 matmul rate, so the tower was most of an image
question's time on a CPU. OpenVINO's CPU plugin fuses the attention and runs it in bf16 where the CPU has bf16
instructions (measured in benchmarks/cpu_4b.py; the table is in docs/guides/ask.md, "CPUs: the image tower").

How: the tower (not the projector, which is a small matmul) is exported once per set of weights with
`torch.export`, converted with `openvino.convert_model` and saved as OpenVINO IR in the user's cache, keyed by a
fingerprint of the weights actually loaded (a merged adapter gets its own conversion). Later loads compile the saved
IR in seconds. The torch tower stays in place: anything the fast path does not cover (gradients, hidden states asked
for, another image size) and any conversion failure go through it, the failure with one warning line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable, BadInput

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VISION_RUNTIMES = ("auto", "openvino", "torch")
# Bump when the exported graph changes (wrapper, export options): old cache folders are then ignored.
EXPORT_VERSION = "1"


@dataclass
class VisionPath:
    """Which runtime runs the vision tower, and how often it did: the backend reports it in its load info, and tests
    check `images` grows, so a fast path that is silently skipped fails them."""

    runtime: str  # "openvino" or "torch"
    reason: str  # why this runtime (shown by `--json` load info and the benchmark)
    images: int = 0  # images encoded by the OpenVINO tower so far
    fallbacks: int = 0  # calls the OpenVINO tower handed to torch (unsupported arguments)
    cache_dir: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def import_openvino() -> Any:
    """`openvino`, imported with its usage telemetry declined for this process.

    Importing `openvino` imports its model converter, which sends a Google Analytics event at import (and on each
    conversion) unless a consent file in the user's home says no: by default it phones home. Nothing in this toolkit
    may, so before the first import the consent check of `openvino_telemetry` answers "declined" for this process —
    nothing is sent and nothing is written under the user's home. The user's own consent file is left untouched.
    """
    try:
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:  # a build without the telemetry package has nothing to decline
        pass
    else:
        declined = opt_in_checker.ConsentCheckResult.DECLINED
        opt_in_checker.OptInChecker.check = lambda self, *a, **k: declined  # type: ignore[method-assign]
    import openvino

    return openvino


def cache_base() -> Path:
    """Where converted towers live: beside the demo conversion, in the user's cache."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "medgemma_toolkit" / "openvino"


def check_vision_runtime(name: str) -> str:
    if name not in VISION_RUNTIMES:
        raise BadInput(f"--vision-runtime must be one of {', '.join(VISION_RUNTIMES)}; got {name!r}")
    return name


def siglip_tower(model: Any) -> Any | None:
    """The SigLIP vision tower of a Gemma 3 multimodal model, or None (text-only models, other towers)."""
    inner = getattr(model, "model", None)
    tower = getattr(inner, "vision_tower", None)
    config = getattr(tower, "config", None)
    return tower if getattr(config, "model_type", None) == "siglip_vision_model" else None


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A cheap fingerprint of `module`'s weights: every tensor's name, shape and dtype plus a strided sample of its
    values (about 4k per tensor) and their sum. Any conversion-relevant change (another checkpoint, a merged LoRA,
    which moves whole matrices) changes it; hashing the full 0.9 GB would cost seconds on every load."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(module.state_dict().items()):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].float().contiguous()
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{float(flat.float().sum())}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:20]


def install(model: Any, device: torch.device, dtype: torch.dtype, choice: str) -> VisionPath:
    """Route `model`'s vision tower through OpenVINO when `choice` asks for it ("openvino") or, for "auto", where it
    was measured faster (a CPU, bf16 weights). Conversion happens lazily, at the first image, so text-only use never
    pays for it. Returns what was chosen; "openvino" asked for but impossible is a one-line `BackendUnavailable`."""
    import torch

    check_vision_runtime(choice)
    tower = siglip_tower(model)
    if tower is None:
        return VisionPath("torch", "no SigLIP vision tower")
    if choice == "torch":
        return VisionPath("torch", "asked for")
    if device.type != "cpu":
        if choice == "openvino":
            raise BackendUnavailable(f"--vision-runtime openvino runs on the CPU only; the model is on {device}")
        return VisionPath("torch", f"not on a CPU ({device.type})")
    if dtype not in (torch.bfloat16, torch.float32):
        if choice == "openvino":
            raise BackendUnavailable(f"--vision-runtime openvino takes bfloat16 or float32 weights, not {dtype}")
        return VisionPath("torch", f"{dtype} weights")
    if choice == "auto" and dtype != torch.bfloat16:
        return VisionPath("torch", "float32 weights (the OpenVINO tower is measured faster in bfloat16)")
    try:
        import_openvino()
    except ImportError:
        if choice == "openvino":
            raise BackendUnavailable("--vision-runtime openvino needs OpenVINO: pip install openvino") from None
        return VisionPath("torch", "OpenVINO not installed")
    path = VisionPath("openvino", "CPU fast path" if choice == "auto" else "asked for")
    _OpenVinoTower(tower, dtype, path).attach()
    return path


class _OpenVinoTower:
    """Replaces the tower's `forward` on this instance; the module, its weights and its state dict are unchanged."""

    def __init__(self, tower: Any, dtype: torch.dtype, path: VisionPath) -> None:
        import torch

        self.tower = tower
        self.dtype = dtype
        self.path = path
        self.reference = type(tower).forward.__get__(tower)  # the torch forward, for fallbacks
        size = int(tower.config.image_size)
        self.shape = (1, int(tower.config.num_channels), size, size)
        self.compiled: Any = None
        self.failed = False
        self.torch = torch

    def attach(self) -> None:
        self.tower.forward = self.forward

    def forward(self, pixel_values: Any = None, *args: Any, **kwargs: Any) -> Any:
        torch = self.torch
        unsupported = (
            args
            or kwargs.get("interpolate_pos_encoding")
            or kwargs.get("output_attentions")
            or kwargs.get("output_hidden_states")
            or torch.is_grad_enabled()
            and self.tower.training
            or pixel_values is None
            or tuple(pixel_values.shape[1:]) != self.shape[1:]
            or pixel_values.device.type != "cpu"
        )
        if unsupported or self.failed or not self._ready():
            with self.path._lock:
                self.path.fallbacks += 1
            return self.reference(pixel_values, *args, **kwargs)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        request = self.compiled.create_infer_request()  # one per call: calls may come from several threads
        rows = []
        for one in pixel_values.float().split(1):
            out = request.infer([one.contiguous().numpy()])[0]
            rows.append(torch.from_numpy(out.copy()))
        with self.path._lock:
            self.path.images += len(rows)
        hidden = torch.cat(rows).to(self.dtype)
        return BaseModelOutputWithPooling(last_hidden_state=hidden)

    def _ready(self) -> bool:
        if self.compiled is not None:
            return True
        with self.path._lock:
            if self.compiled is None and not self.failed:
                try:
                    self.compiled = self._compile()
                except Exception as e:
                    self.failed = True
                    self.path.runtime, self.path.reason = "torch", f"OpenVINO conversion failed: {type(e).__name__}"
                    log.warning(
                        "vision tower: OpenVINO conversion failed (%s: %s); using the torch tower",
                        type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "",
                    )
        return self.compiled is not None

    def _compile(self) -> Any:
        ov = import_openvino()

        xml = self._converted()
        self.path.cache_dir = str(xml.parent)
        hint = "bf16" if self.dtype == self.torch.bfloat16 else "f32"
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.torch.get_num_threads(),
        }
        return ov.Core().compile_model(str(xml), "CPU", config)

    def _converted(self) -> Path:
        """The tower's OpenVINO IR, converted once per weights/dtype/versions and saved atomically."""
        ov = import_openvino()
        import torch
        import transformers

        key_text = "|".join(
            (
                EXPORT_VERSION,
                weights_fingerprint(self.tower),
                str(self.dtype),
                str(self.shape),
                ov.__version__,
                torch.__version__,
                transformers.__version__,
            )
        )
        key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
        base = cache_base()
        target = base / f"siglip-{key}"
        xml = target / "vision_tower.xml"
        if xml.is_file():
            return xml
        print(
            "note: converting the vision tower for OpenVINO once (under a minute for MedGemma 4B); cached in "
            + str(base),
            file=sys.stderr,
            flush=True,
        )
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=base))
        try:
            # Outside inference mode: export cannot trace tensors created under it (the first image arrives inside
            # `generate`'s inference mode).
            # warnings: torch.export's pytree deprecation notes mean nothing to a user asking a question.
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                example = torch.zeros(self.shape, dtype=torch.float32)
                exported = torch.export.export(_tower_graph(self.tower, self.reference, self.dtype), (example,))
                graph = ov.convert_model(exported)
            ov.save_model(graph, str(tmp / "vision_tower.xml"), compress_to_fp16=False)
            del graph, exported
            try:
                tmp.rename(target)  # atomic: a folder is either complete or absent
            except OSError:  # another process finished first: keep its folder
                if not xml.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return xml


def _tower_graph(tower: Any, forward: Any, dtype: torch.dtype) -> torch.nn.Module:
    """What is exported: float32 pixels in (numpy has no bfloat16), the tower in its own dtype, float32 hidden states
    out. `forward` is the torch forward (the tower's own `forward` attribute is the fast path by now)."""
    import torch

    class TowerGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = tower  # a submodule, so that export lifts its weights

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return forward(pixel_values=pixel_values.to(dtype)).last_hidden_state.float()

    return TowerGraph().eval()
