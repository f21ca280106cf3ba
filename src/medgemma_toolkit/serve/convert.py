"""An OpenAI chat request to a `GenerationRequest`, through `MedGemma.request` so the model's preset applies.

The last message is the user's turn (question + images); earlier user/assistant messages become history; system
and developer messages become the system prompt, replacing the preset's, as `--system` does on the CLI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..api import MedGemma
from ..backends.base import Backend, GenerationRequest
from ..core.messages import ImagePart, Message, Part, TextPart
from ..imaging.order import order_groups
from ..prompts.presets import LONGITUDINAL, get_preset
from .config import ServeConfig
from .errors import APIError
from .images import ImageResolver
from .schemas import ChatCompletionRequest, ChatMessage, TextContent
from .sr import SrContext, chat_context


@dataclass
class Converted:
    request: GenerationRequest
    think: bool
    n_images: int
    prompt_text_chars: int
    preset: str = ""  # "name@version" when the request chose its own (medgemma.longitudinal), else the model's
    notice: str | None = None  # how the question's DICOM images were ordered (never their dates)
    sr: SrContext | None = None  # `medgemma.sr`: the question and the instances to cite (`serve/sr.py`)


def _parts(msg: ChatMessage, resolver: ImageResolver, notices: list[str] | None = None) -> list[tuple[Part, bool]]:
    """The message's parts in order, each flagged True when it came from an image source (a CT series yields
    images and their "SLICE n" labels, which stay with the images rather than joining the question). With
    `notices`, single DICOM images are put oldest first as the CLI does (`imaging.order.order_groups`)."""
    if msg.content is None:
        return []
    if isinstance(msg.content, str):
        return [(TextPart(msg.content), False)]
    groups: list[tuple[list[Part], bool]] = []
    for c in msg.content:
        if isinstance(c, TextContent):
            groups.append(([TextPart(c.text)], False))
        else:
            groups.append((resolver.parts(c.image_url.url), True))
    if notices is not None:
        slots = [k for k, (_, is_image) in enumerate(groups) if is_image]
        ordered, notice = order_groups([groups[k][0] for k in slots])
        for k, g in zip(slots, ordered):
            groups[k] = (g, True)
        if notice:
            notices.append(notice)
    return [(p, is_image) for g, is_image in groups for p in g]


def _text(parts: list[Part]) -> str:
    return "\n".join(p.text for p in parts if isinstance(p, TextPart) and p.text)


def merge_adjacent(history: list[Message]) -> list[Message]:
    """Back-to-back messages of one role as a single turn: the OpenAI API allows them, Gemma's chat template
    refuses turns that do not alternate (it would fail deep in the backend, a 500 instead of an answer)."""
    out: list[Message] = []
    for m in history:
        if out and out[-1].role == m.role:
            out[-1] = Message(m.role, [*out[-1].parts, TextPart("\n\n"), *m.parts])
        else:
            out.append(m)
    return out


def check_fits(backend: Backend, req: GenerationRequest) -> None:
    """A prompt that fills the model's context is a 400 here, before it can join (and fail) a batch."""
    limit = backend.context_length()
    n = backend.count_prompt_tokens(req.prompt) if limit else None
    if limit and n is not None and n >= limit:
        raise APIError(
            400,
            f"messages: the prompt is {n:,} tokens; this model's context holds {limit:,} tokens "
            "(prompt and answer together)",
            "context_length_exceeded",
            "messages",
        )


# No token of a SentencePiece vocabulary spans more characters than this (their pieces are at most 16 by default;
# Gemma's longest are runs of spaces and symbols), so a text over context x this is too long without tokenizing it.
MAX_CHARS_PER_TOKEN = 128


def text_chars(body: ChatCompletionRequest) -> int:
    """Characters of every text in the request (strings and text parts), counted without building anything."""
    n = 0
    for m in body.messages:
        if isinstance(m.content, str):
            n += len(m.content)
        elif isinstance(m.content, list):
            n += sum(len(c.text) for c in m.content if isinstance(c, TextContent))
    return n


def check_chars(backend: Backend, chars: int) -> None:
    """A text that cannot fit the context is a 400 before any tokenizing or image decoding (a 32 MB prompt would
    otherwise cost seconds of tokenizer time and its token ids' memory only to be refused)."""
    limit = backend.context_length()
    if limit and chars > limit * MAX_CHARS_PER_TOKEN:
        raise APIError(
            400,
            f"messages: the prompt's {chars:,} characters cannot fit this model's context of {limit:,} tokens "
            f"(a token holds at most {MAX_CHARS_PER_TOKEN} characters)",
            "context_length_exceeded",
            "messages",
        )


def response_schema(body: ChatCompletionRequest) -> dict[str, Any] | None:
    """The JSON schema `response_format` asks for (None: free text); `MedGemma.request` checks it (a 400 naming
    unsupported keywords)."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        from ..backends.constrain import ANY_OBJECT

        return dict(ANY_OBJECT)
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(
            400, "response_format.json_schema.schema: required", "invalid_value", "response_format.json_schema"
        )
    return fmt.json_schema.schema_


def logprobs_wanted(mg: MedGemma, body: ChatCompletionRequest) -> int | None:
    """`GenerationRequest.logprobs` for `logprobs`/`top_logprobs`: a 400 where the backend cannot compute them."""
    if not body.logprobs:
        if body.top_logprobs is not None:
            raise APIError(400, "top_logprobs: needs logprobs: true", "invalid_value", "top_logprobs")
        return None
    if not mg.backend.capabilities.logprobs:
        raise APIError(
            400,
            f"logprobs: not supported by the {mg.backend.info.backend} backend",
            "unsupported_parameter",
            "logprobs",
        )
    return body.top_logprobs or 0


def check_n(n: int, config: ServeConfig) -> None:
    """`n` choices decode as `n` rows of one batch: at most `max_batch_size` of them."""
    if n > config.max_batch_size:
        raise APIError(
            400, f"n: at most {config.max_batch_size} choices on this server (--max-batch-size)", "invalid_value", "n"
        )


def choices(req: GenerationRequest, n: int) -> list[GenerationRequest]:
    """`req` and its `n - 1` siblings, one per choice. Choice i samples with `seed + i`, so a seeded request gives the
    same n answers every time and its choices still differ (greedy choices are all equal, as OpenAI's are)."""
    out = [req]
    for i in range(1, n):
        seed = None if req.params.seed is None else req.params.seed + i
        out.append(
            dataclasses.replace(
                req, params=dataclasses.replace(req.params, seed=seed), cancelled=None, on_logprobs=None
            )
        )
    return out


def to_generation_request(mg: MedGemma, body: ChatCompletionRequest, config: ServeConfig) -> Converted:
    check_n(body.n, config)
    check_chars(mg.backend, text_chars(body))
    *earlier, last = body.messages
    if last.role != "user":
        raise APIError(
            400, f"messages: the last message must be from the user, not {last.role!r}", "invalid_value", "messages"
        )
    opts = body.medgemma
    pad = opts.pad if opts and opts.pad is not None else None
    if pad is None and opts and opts.longitudinal:  # images load before the preset applies: its choice, here
        pad = get_preset(LONGITUDINAL).pad_images
    want_sr = bool(opts and opts.sr)
    resolver = ImageResolver(
        config, mg.image_size, opts.window if opts else None, opts.ct_windows if opts else None, pad, want_sr
    )
    system_texts: list[str] = []
    history: list[Message] = []
    for m in earlier:
        parts = [p for p, _ in _parts(m, resolver)]
        if m.role in ("system", "developer"):
            if any(isinstance(p, ImagePart) for p in parts):
                raise APIError(400, "messages: images are only accepted in user messages", "invalid_value", "messages")
            system_texts.append(_text(parts))
        elif parts:
            history.append(Message(m.role, parts))  # type: ignore[arg-type]
    history = merge_adjacent(history)
    notices: list[str] = []
    last_parts = _parts(last, resolver, notices)  # the question's images: DICOM ones oldest first, as on the CLI
    if history and history[-1].role == "user":
        # Users' messages sent back to back are one turn to Gemma; the earlier ones lead the question.
        earlier_parts = [p for p in history.pop().parts if isinstance(p, ImagePart) or p.text.strip()]
        last_parts = [(p, isinstance(p, ImagePart)) for p in earlier_parts] + last_parts
    if history and history[0].role != "user":
        raise APIError(
            400,
            "messages: the conversation must start with a user message (after any system messages); "
            "Gemma's turns alternate user/assistant",
            "invalid_value",
            "messages",
        )
    question = _text([p for p, from_image in last_parts if not from_image])
    media = [p for p, from_image in last_parts if from_image]
    system = "\n".join(t for t in system_texts if t) if system_texts else None
    if history and system is not None:
        # Presets add the system turn only to a first turn; keep the client's at the head of the history.
        history.insert(0, Message("system", [TextPart(system)]))
        system = None
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None and max_tokens > config.max_tokens_limit:
        raise APIError(
            400, f"max_tokens: at most {config.max_tokens_limit} on this server", "invalid_value", "max_tokens"
        )
    think = bool(opts and opts.think)
    preset = None
    if opts and opts.longitudinal:
        n = sum(isinstance(p, ImagePart) for p in media)
        if n != 2:
            raise APIError(
                400,
                f"medgemma.longitudinal: the last message needs 2 images (the prior, then the current); it has {n}",
                "invalid_value",
                "medgemma.longitudinal",
            )
        preset = LONGITUDINAL
    req = mg.request(
        question,
        media,
        system=system,
        think=think,
        history=history or None,
        max_new_tokens=max_tokens,
        temperature=body.temperature if body.temperature is not None else 0.0,
        top_p=body.top_p if body.top_p is not None else 1.0,
        seed=body.seed,
        stop=body.stop_list,
        preset=preset,
        json_schema=response_schema(body),
        max_thought_tokens=opts.max_thought_tokens if opts else None,
    )
    req.logprobs = logprobs_wanted(mg, body)
    check_fits(mg.backend, req)
    sr = chat_context(resolver, req, question, body.stream, body.n) if want_sr else None
    chars = sum(len(p.text) for m in req.prompt.messages for p in m.parts if isinstance(p, TextPart))
    pre = get_preset(preset) if preset else mg.preset
    return Converted(
        req,
        think,
        resolver.count,
        chars + len(req.prompt.text or ""),
        f"{pre.name}@{pre.version}",
        notices[0] if notices else None,
        sr,
    )
