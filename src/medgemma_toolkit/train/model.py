"""Load a checkpoint for training (on one device) and wrap it with the recipe's LoRA adapter."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..models.checkpoint import is_multimodal, load_hf_model, load_processing, quantization_config
from .recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class TrainModel:
    model: Any  # the PEFT-wrapped model
    processor: Any  # Gemma3Processor, or None for text-only checkpoints
    tokenizer: Any
    image_size: int | None
    has_template: bool


def load_for_training(path: Path, device: str, dtype: Any, method: str) -> tuple[Any, Any, Any, int | None]:
    """(model, processor or None, tokenizer, image size) with weights on `device` in `dtype`."""
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "eager"}  # eager: Gemma 3's advice for training
    if method == "qlora":
        kwargs["quantization_config"] = quantization_config("4bit", device, storage_bf16=True)
    if device.startswith("cuda"):  # straight onto the one training GPU (see runtime.placement): no host copy
        kwargs["device_map"] = {"": device}
    multimodal = is_multimodal(path)
    try:
        model = load_hf_model(str(path), multimodal, **kwargs)
        proc = load_processing(str(path), multimodal)
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"{path}: cannot load checkpoint for training ({type(e).__name__})") from None
    if "device_map" not in kwargs:  # a quantised model must never be moved after loading
        model.to(device)
    return model, proc.processor, proc.tokenizer, proc.image_size


def one_device(args: Any) -> Any:
    """Keep the HF Trainer on one GPU: with n_gpu > 1 it wraps the model in `nn.DataParallel`, whose scatter splits
    the collator's packed `pixel_values` apart from their `input_ids`. Normally CUDA_VISIBLE_DEVICES already shows
    one GPU (`placement.restrict_for_training`); this covers a process where CUDA started before that.

    The toolkit's one use of a private API outside our code: `TrainingArguments` has no public setter for its GPU
    count (`n_gpu` is read-only), and assigning `_n_gpu` is exactly what the Trainer itself does for a
    model-parallel model. tests/test_train_units.py fails loudly if a transformers release renames it."""
    if args.n_gpu > 1:
        args._n_gpu = 1
    return args


def oom_message(device: str, method: str, batch_size: int, grad_accum: int, max_length: int | None) -> str:
    """What to change after an out-of-memory error in training, with the numbers of this run."""
    effective = batch_size * grad_accum
    parts = [
        f"out of memory on {device} while training (--method {method}, --batch-size {batch_size}, "
        f"--grad-accum {grad_accum})"
    ]
    if batch_size > 1:
        smaller = max(1, batch_size // 2)
        parts.append(
            f"try --batch-size {smaller} --grad-accum {max(1, effective // smaller)} (same effective batch "
            f"of {effective})"
        )
    if max_length:
        parts.append(f"a smaller --max-length than {max_length}")
    if method == "lora":
        parts.append("or --method qlora (4-bit base weights)")
    return "; ".join(parts)


def add_lora(model: Any, recipe: Recipe, method: str, gradient_checkpointing: bool) -> Any:
    """LoRA on the recipe's targets (all linear layers, or the language model's), plus its modules_to_save."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        bias="none",
        target_modules=recipe.target_modules,
        task_type="CAUSAL_LM",
        modules_to_save=list(recipe.modules_to_save) or None,
    )
    peft_model = get_peft_model(model, config)
    if gradient_checkpointing:
        # Inputs must carry grad for checkpointed blocks when the embeddings are frozen.
        peft_model.enable_input_require_grads()
    return peft_model


def trainable_summary(model: Any) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": int(trainable), "total_params": int(total)}


def load_adapter_weights(model: Any, checkpoint: Any) -> None:
    """Put a checkpoint's LoRA weights into `model` (a run resumed at its last step has nothing left to train)."""
    from pathlib import Path

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(checkpoint) / "adapter_model.safetensors")))
