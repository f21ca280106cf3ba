"""`ask --show-prompt`: the exact text a model is fed (chat template applied, one `<start_of_image>` per image).

For a Hugging Face checkpoint directory only the processor/tokenizer files are read (no weights): the template,
the image size and the model's default preset are all there. Other models (GGUF, a remote server) fall back to
the loaded backend's own `render`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .gemma_format import render_gemma_chat
from .messages import Prompt
from .presets import get_preset


def render_with(owner: Any, prompt: Prompt, bos: str = "") -> str:
    """Render `prompt` with a processor's or tokenizer's chat template (Gemma's turn format when it has none)."""
    if prompt.is_completion:
        return prompt.text or ""
    template = getattr(owner, "chat_template", None) if owner is not None else None
    if not template:
        return render_gemma_chat(prompt.messages, bos=bos)
    return owner.apply_chat_template([m.to_hf() for m in prompt.messages], tokenize=False, add_generation_prompt=True)


def render_for_backend(mg: Any, prompt: Prompt) -> str:
    """A loaded model's rendering, through its backend."""
    from ..errors import CapabilityError

    try:
        return mg.backend.render(prompt)
    except CapabilityError:  # a backend that renders elsewhere (a remote server): Gemma's own turn format
        return render_gemma_chat(prompt.messages) if not prompt.is_completion else (prompt.text or "")


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
    from ..imaging import DEFAULT_IMAGE_SIZE, load_parts
    from ..models.checkpoint import is_multimodal, load_processing, processor_image_size
    from ..models.load import info_hint
    from ..models.resolve import resolve_model

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
