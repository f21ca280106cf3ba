"""Where weights and inputs go, decided by pure functions of what the machine has.

Every command (ask, chat, eval, serve, finetune, rl) places models through these, so one GPU, several GPUs and
4/8-bit models behave the same everywhere, and the decisions are tested on a CPU with made-up GPU lists.

Rules (read against transformers 5 / accelerate / the HF Trainer):
* `--device cuda:N` loads straight onto GPU N (`device_map={"": N}`), quantised or not; never spread elsewhere.
* `--device cuda` (or auto on a CUDA machine) uses the first GPU when the model fits there, else shards it over
  every visible GPU with `device_map="auto"`; inputs go to the device of the input embeddings.
* A model loaded with a device map (quantised or sharded) is never `.to()`-moved afterwards.
* Training runs on exactly one GPU: the Trainer otherwise wraps the model in `nn.DataParallel` over every visible
  GPU (splitting the collator's packed `pixel_values` away from their `input_ids`) and always trains on `cuda:0`.
  So the chosen GPU is made the only visible one before CUDA starts, and multi-process launches are refused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, BadInput

GIB = 1024**3
# Bytes per parameter as loaded: bitsandbytes NF4 stores ~0.5 byte plus block scales; int8 ~1 byte plus outliers.
BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "4bit": 0.55, "8bit": 1.1}


@dataclass(frozen=True)
class GPU:
    index: int  # as torch numbers it (after CUDA_VISIBLE_DEVICES)
    free_bytes: int
    total_bytes: int = 0
    name: str = ""
    capability: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Placement:
    device_map: str | dict[str, Any] | None  # for from_pretrained; None: load on the host, then `.to(move_to)`
    move_to: str | None  # only for unsharded, unquantised models off CUDA
    input_device: str  # where inputs go before the forward pass (refined after load for sharded models)
    note: str | None = None  # one line worth telling the user


def cuda_index(device: str) -> int | None:
    """2 for "cuda:2", None for "cuda"; a malformed device string is a one-line error."""
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        raise BadInput(f"--device {device!r}: expected auto, cpu, mps, cuda or cuda:N")
    return int(m.group(1)) if m.group(1) is not None else None


def model_bytes(params: int | None, dtype: str, quantize: str = "none") -> int | None:
    if params is None:
        return None
    per = BYTES_PER_PARAM.get(quantize if quantize in ("4bit", "8bit") else dtype, 4.0)
    return int(params * per)


def fits(need_weights: int, free: int) -> bool:
    """Weights plus ~15% and 1 GiB for activations, KV cache and the CUDA context."""
    return need_weights * 1.15 + GIB <= free


def inference_placement(device: str, quantize: str, gpus: Sequence[GPU], weights: int | None) -> Placement:
    """Placement for an inference model. `device` is resolved already (cpu, mps, cuda, cuda:N)."""
    quantized = quantize not in ("none", "", None)
    if not device.startswith("cuda"):
        if quantized:
            raise BackendUnavailable(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes); this run is on {device}")
        return Placement(None, device, device)
    if not gpus:
        raise BackendUnavailable(
            "--device cuda asked for, but torch sees no CUDA GPU (is a CUDA build of torch installed?)"
        )
    idx = cuda_index(device)
    if idx is not None:
        if idx >= len(gpus):
            raise BadInput(f"--device {device}: only {len(gpus)} GPU(s) visible (cuda:0..cuda:{len(gpus) - 1})")
        return Placement({"": idx}, None, f"cuda:{idx}")
    if len(gpus) == 1 or weights is None or fits(weights, gpus[0].free_bytes):
        return Placement({"": 0}, None, "cuda:0")
    if not fits(weights, sum(g.free_bytes for g in gpus)):
        raise BackendUnavailable(
            f"the model needs about {weights * 1.15 / GIB + 1:.0f} GiB with working memory; the {len(gpus)} GPUs have "
            f"{sum(g.free_bytes for g in gpus) / GIB:.0f} GiB free together (try --quantize 4bit)"
        )
    return Placement(
        "auto",
        None,
        "cuda:0",
        note=f"sharding {weights / GIB:.1f} GiB of weights over {len(gpus)} GPUs (device_map=auto)",
    )


def training_visible_devices(device: str, visible_env: str | None, world_size: int) -> tuple[str | None, str]:
    """(new CUDA_VISIBLE_DEVICES or None to leave it, the device to train on afterwards).

    `device` as the user gave it (auto, cpu, mps, cuda, cuda:N); `visible_env` the current CUDA_VISIBLE_DEVICES;
    `world_size` from torchrun/accelerate's WORLD_SIZE. Restricting to one GPU is what keeps the Trainer from
    data-parallel wrapping and makes `cuda:N` honoured (the Trainer always trains on cuda:0)."""
    if world_size > 1:
        raise BadInput(
            "multi-process training (torchrun / accelerate launch) is not supported: run one process and "
            "pick its GPU with --device cuda:N (QLoRA fits MedGemma 27B on one 40 GB GPU)"
        )
    if not device.startswith("cuda"):
        return None, device
    idx = cuda_index(device) or 0
    listed = [v.strip() for v in visible_env.split(",") if v.strip()] if visible_env is not None else None
    if listed is not None:
        if idx >= len(listed):
            raise BadInput(
                f"--device {device}: CUDA_VISIBLE_DEVICES={visible_env} makes only {len(listed)} GPU(s) visible"
            )
        return listed[idx], "cuda:0"
    return str(idx), "cuda:0"


def bf16_note(capability: tuple[int, int], name: str) -> str | None:
    """bf16 runs natively from Ampere (compute capability 8.0); older GPUs (T4, V100) emulate it, slowly."""
    if capability >= (8, 0):
        return None
    return (
        f"{name or 'this GPU'} (compute capability {capability[0]}.{capability[1]}) has no native bfloat16: it is "
        "emulated and slow; --dtype float16 is faster but Gemma 3 activations can overflow in float16, and "
        "--dtype float32 is exact but needs twice the memory"
    )


def checkpoint_params(path: Path) -> int | None:
    """Parameter count from the safetensors headers (no weights read); None when there are none."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                count = 1
                for s in v.get("shape", []):
                    count *= int(s)
                total += count
    return total


def visible_gpus(measure: bool = True) -> list[GPU]:
    """What torch sees now (starts CUDA; call only once a CUDA device was asked for). `measure=False` skips the
    free-memory query, which creates a CUDA context (~0.5 GB) on every GPU it asks about."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i) if measure else (0, 0)
        out.append(GPU(i, int(free), int(total), torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i)))
    return out


def restrict_for_training(device: str, environ: Mapping[str, str] | None = None) -> str:
    """Make the chosen GPU the only visible one (before CUDA starts) and return the device to train on."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    import torch

    # NVML-based count: does not start CUDA, so the restriction below still takes effect.
    n_gpus = torch.cuda.device_count()
    if device == "auto":
        device = "cuda" if n_gpus > 0 else device
    visible, dev = training_visible_devices(device, env.get("CUDA_VISIBLE_DEVICES"), world)
    if visible is None or n_gpus == 0:  # no GPU at all: `pick_device_dtype` says so in one line
        return dev if visible is None else device

    if torch.cuda.is_initialized() and visible != env.get("CUDA_VISIBLE_DEVICES"):
        # Too late to hide GPUs from this process: only its first GPU can be honoured.
        if (cuda_index(device) or 0) != 0:
            raise BadInput(
                f"--device {device}: CUDA already started in this process; set CUDA_VISIBLE_DEVICES "
                "before starting Python, or run training as its own process (the medgemma CLI does)"
            )
        return dev
    if environ is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    return dev
