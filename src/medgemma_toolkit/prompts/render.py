"""The exact text a model is fed (chat template applied, one `<start_of_image>` per image), from a processor's or
tokenizer's template or from a loaded backend. `ask --show-prompt` without weights is `cli/show_prompt.py`.
"""

from __future__ import annotations

from typing import Any

from ..core.messages import Prompt
from ..errors import CapabilityError
from .gemma_format import render_gemma_chat


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
    try:
        return mg.backend.render(prompt)
    except CapabilityError:  # a backend that renders elsewhere (a remote server): Gemma's own turn format
        return render_gemma_chat(prompt.messages) if not prompt.is_completion else (prompt.text or "")
