"""What a checkpoint is and how to load it: the one place backends, training and export ask.

- `ModelHint`: what is known about a model before its weights load (its variant's conventions), and the one set of
  defaults that turns it into a `ModelInfo` (a chat template means a chat model; no template, a base model).
- `variant_named_in`: the MedGemma variant named in a model card, file name or GGUF `general.name`.
- `is_multimodal`, `load_hf_model`, `load_processing`: a vision config means an image-text-to-text model.
- `quantization_config`: bitsandbytes 8-bit, or 4-bit NF4 (double quant, bf16 compute), for inference and QLoRA.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.model import ModelHint
from ..errors import BackendUnavailable, BadInput
from .resolve import ResolvedModel
from .variants import VARIANTS, Variant


def variant_named_in(*texts: str) -> Variant | None:
    """The MedGemma variant named in any of `texts` (a model card, a file name, "Medgemma 1.5 4b It"), if any."""
    for text in texts:
        t = text.lower().replace(" ", "-").replace("_", "-")
        for v in sorted(VARIANTS, key=lambda v: -len(v.name)):  # longest first: 27b-text-it before 27b-it
            if v.name in t and v.modality not in (
                "embedding",
                "speech",
            ):  # a MedGemma card may name MedSigLIP, its encoder
                return v
    return None


def variant_from_card(path: Path) -> Variant | None:
    """A hub snapshot copied under another name still carries its model card: recognise 1.5 vs v1 from it."""
    card = path / "README.md" if path.is_dir() else None
    if card is None or not card.is_file():
        return None
    try:
        head = card.read_text(errors="ignore")[:4000]
    except OSError:
        return None
    return variant_named_in(head)


# -- Hugging Face checkpoints ---------------------------------------------------------------------------------
def is_multimodal(path: Path) -> bool:
    """A vision config means Gemma 3's image-text-to-text model; none, the text-only causal LM."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise BadInput(f"{path}: unreadable config.json") from None
    return "vision_config" in cfg


def processor_image_size(path: Path) -> int | None:
    """The image size a checkpoint's processor expects, read from its config (no weights loaded). transformers 5
    writes processor_config.json (image processor nested); older checkpoints preprocessor_config.json."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        cfg = path / name
        if cfg.is_file():
            data = json.loads(cfg.read_text())
            size = (data.get("image_processor") or data).get("size") or {}
            if "height" in size:
                return int(size["height"])
    return None


def load_hf_model(load_dir: str, multimodal: bool, **kwargs: Any) -> Any:
    """The model class that fits the checkpoint (`AutoModelForImageTextToText` or `AutoModelForCausalLM`)."""
    if multimodal:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(load_dir, **kwargs)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(load_dir, **kwargs)


@dataclass
class Processing:
    """What turns text and images into model inputs: the processor (multimodal only) and its tokenizer."""

    processor: Any  # Gemma3Processor, or None for text-only checkpoints
    tokenizer: Any
    image_size: int | None  # the vision encoder's square input side

    @property
    def chat_template(self) -> str | None:
        owner = self.processor if self.processor is not None else self.tokenizer
        return getattr(owner, "chat_template", None) or self.tokenizer.chat_template or None


def load_processing(load_dir: str, multimodal: bool, gguf_file: str | None = None) -> Processing:
    if multimodal:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(load_dir)
        return Processing(processor, processor.tokenizer, int(processor.image_processor.size["height"]))
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return Processing(None, AutoTokenizer.from_pretrained(load_dir, **kwargs), None)


def check_quantize(quantize: str | None) -> str:
    if quantize in ("none", "", None):
        return "none"
    if quantize not in ("4bit", "8bit"):
        raise BadInput(f"--quantize must be none, 8bit or 4bit; got {quantize!r}")
    return str(quantize)


def quantization_config(quantize: str, device: Any, storage_bf16: bool = False) -> Any:
    """bitsandbytes 4-bit NF4 (double quant, bf16 compute) or 8-bit; CUDA only. `storage_bf16` stores the 4-bit
    weights in bf16 containers (QLoRA training: FSDP and PEFT expect one dtype across parameters)."""
    if check_quantize(quantize) == "none":
        return None
    device_type = str(device).split(":")[0]
    if device_type != "cuda":
        raise BackendUnavailable(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes); this run is on {device_type}")
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise BackendUnavailable("--quantize needs bitsandbytes: pip install 'medgemma-toolkit[gpu]'") from None
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    extra = {"bnb_4bit_quant_storage": torch.bfloat16} if storage_bf16 else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        **extra,
    )


def info_hint(resolved: ResolvedModel) -> ModelHint:
    """What is known about `resolved` before loading: the demo's, or its variant's (by name, else its model card)."""
    if resolved.is_demo:
        return ModelHint(resolved.name, pretrained=True, thinking=False, default_preset="pretrained")
    v = resolved.variant or (None if resolved.source == "remote" else variant_from_card(resolved.path))
    return ModelHint(resolved.name).with_variant(v)
