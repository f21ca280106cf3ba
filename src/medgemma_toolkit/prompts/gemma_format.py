"""Gemma 3's turn format, for checkpoints that ship without a chat template (e.g. many GGUF files).

Gemma has no system role: a system message is folded into the first user turn, separated by a blank line.
Images appear as `<start_of_image>` where they sit among the text parts.
"""

from __future__ import annotations

from ..core.messages import IMAGE_PLACEHOLDER, ImagePart, Message

START, END = "<start_of_turn>", "<end_of_turn>"
CONTROL_TOKENS = ("<end_of_turn>", "<eos>", "<pad>", "<bos>")


def render_gemma_chat(messages: list[Message], bos: str = "<bos>") -> str:
    """Render messages the way Gemma 3's chat template does, ending with the model's turn opened."""
    out = [bos]
    system = ""
    for m in messages:
        if m.role == "system":
            system = m.text.strip()
            continue
        role = "model" if m.role == "assistant" else "user"
        body = "".join(IMAGE_PLACEHOLDER if isinstance(p, ImagePart) else p.text for p in m.parts)
        if system and role == "user":
            body = f"{system}\n\n{body}"
            system = ""
        out.append(f"{START}{role}\n{body.strip()}{END}\n")
    out.append(f"{START}model\n")
    return "".join(out)


def strip_control(text: str) -> str:
    for tok in CONTROL_TOKENS:
        text = text.replace(tok, "")
    return text
