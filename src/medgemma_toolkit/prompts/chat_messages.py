"""OpenAI-style chat messages (as `openai`, Ollama and transformers users write them) into plain turns.

Accepted: `{"role": "system"|"developer"|"user"|"assistant", "content": str | [part, ...]}` where a part is
`{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}` (or `"image_url": "..."`), or
transformers' `{"type": "image", "image": path | PIL image}` / `{"type": "image", "url": ...}`. Images stay as the
caller gave them (path, URL, data URI, PIL image); `MedGemma.chat` turns them into model parts. The last message must
be the user's; system messages become the system prompt; back-to-back messages of one role are one turn (Gemma's
template needs turns that alternate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInput

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class ImageRef:
    """An image as the caller gave it: a path, URL, data URI or PIL image."""

    source: Any


@dataclass
class Turn:
    """One user or assistant turn: text pieces and image sources, in order."""

    role: str
    items: list[Any] = field(default_factory=list)  # str (text) or ImageRef


@dataclass
class ParsedChat:
    system: str | None
    history: list[Turn]
    question: str
    images: list[Any]


def _items(msg: Mapping[str, Any], where: str) -> list[Any]:
    content = msg.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, Sequence):
        raise BadInput(f"{where}.content: a string or a list of parts")
    out: list[Any] = []
    for k, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise BadInput(f"{where}.content[{k}]: a part is an object with a 'type'")
        kind = part.get("type")
        if kind == "text":
            out.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            if not isinstance(url, str) or not url:
                raise BadInput(f"{where}.content[{k}]: image_url needs a url")
            out.append(ImageRef(url))
        elif kind == "image":
            src = part.get("image", part.get("url", part.get("path")))
            if src is None:
                raise BadInput(f"{where}.content[{k}]: an image part needs 'image' (a path or PIL image) or 'url'")
            out.append(ImageRef(src))
        else:
            raise BadInput(f"{where}.content[{k}]: unknown part type {kind!r} (text, image_url or image)")
    return out


def parse_chat(messages: Sequence[Mapping[str, Any]]) -> ParsedChat:
    """Split messages into system text, earlier turns, and the last user turn's question and images."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise BadInput("messages: a non-empty list of {'role', 'content'} objects")
    system: list[str] = []
    turns: list[Turn] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise BadInput(f"{where}: an object with 'role' and 'content'")
        role = msg.get("role")
        if role not in ROLES:
            raise BadInput(f"{where}.role: one of {', '.join(ROLES)}; got {role!r}")
        items = _items(msg, where)
        if role in ("system", "developer"):
            if any(isinstance(x, ImageRef) for x in items):
                raise BadInput(f"{where}: images are only accepted in user messages")
            system.append("\n".join(items))
            continue
        if turns and turns[-1].role == role:
            turns[-1].items += ["\n\n", *items] if turns[-1].items and items else items
        else:
            turns.append(Turn(role, items))
    if not turns or turns[-1].role != "user":
        raise BadInput("messages: the last message must be the user's")
    if turns[0].role != "user":
        raise BadInput("messages: the conversation starts with a user message (after any system messages)")
    last = turns.pop()
    question = "\n".join(x for x in last.items if isinstance(x, str) and x.strip())
    images = [x.source for x in last.items if isinstance(x, ImageRef)]
    return ParsedChat("\n".join(s for s in system if s) or None, turns, question, images)
