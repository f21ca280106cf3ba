"""`ask --show-prompt`: the exact text a model is fed, without loading its weights where that is possible.

For a Hugging Face checkpoint directory only the processor/tokenizer files are read (no weights): the template,
the image size and the model's default preset are all there. Other models (GGUF, a remote server) return None and
the caller falls back to the loaded backend's own rendering. It lives in `cli` because it joins every layer below:
model resolution, image loading and prompt rendering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..imaging import DEFAULT_IMAGE_SIZE, load_parts
from ..models.checkpoint import info_hint, is_multimodal, load_processing, processor_image_size
from ..models.resolve import resolve_model
from ..prompts.presets import get_preset
from ..prompts.render import render_with


def show_prompt_offline(
    model: str | None,
    question: str,
    images: Sequence[str],
    options: Any,
    *,
    system: str | None = None,
    think: bool = False,
    instruction: str | None = None,
    preset: str | None = None,
    allow_download: bool = False,
) -> str | None:
    """The rendered prompt from a checkpoint's processor files alone; None when weights would be needed."""
    resolved = resolve_model(model, allow_download=allow_download)
    if resolved.format != "hf" or not resolved.path.is_dir() or resolved.is_demo:
        return None
    path = resolved.path
    try:
        proc = load_processing(str(path), is_multimodal(path))
    except (OSError, ValueError, KeyError):
        return None
    owner = proc.processor if proc.processor is not None else proc.tokenizer
    bos = proc.tokenizer.bos_token or ""
    name = preset or info_hint(resolved).preset(bool(getattr(owner, "chat_template", None)))
    pre = get_preset(name)
    size = (
        processor_image_size(path) or (resolved.variant.image_size if resolved.variant else None) or DEFAULT_IMAGE_SIZE
    )
    media = [p for src in images for p in load_parts(src, options, size)]
    prompt = pre.build(question, media, system=system, think=think, instruction=instruction)
    return render_with(owner, prompt, bos=bos)
