"""The Python API: load a model once, ask many times.

>>> from medgemma_toolkit import MedGemma
>>> mg = MedGemma.load("medgemma-4b-it")            # or a directory, a .gguf, or None for the best found
>>> mg.ask("Describe this X-ray.", images=["cxr.dcm"]).text
>>> mg.chat([{"role": "user", "content": "What is sepsis?"}]).text   # OpenAI-style messages
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, overload

from PIL import Image

from .backends.base import Backend, Completion, GenerationRequest, SamplingParams
from .core.messages import ImagePart, Message, Part, TextPart
from .core.options import LoadOptions
from .errors import BadInput, CapabilityError
from .imaging import DEFAULT_IMAGE_SIZE, ImageOptions, decode_image_bytes, load_parts, to_model_image
from .loading import load_backend
from .models.demo import DEMO_NOTICE
from .models.resolve import ResolvedModel
from .prompts.chat_messages import ImageRef, parse_chat
from .prompts.presets import PromptPreset, get_preset
from .prompts.thinking import StreamSplitter, split_thought


@dataclass
class Answer:
    """A model's reply: the answer text, the thought apart (thinking models), token counts and timings."""

    text: str
    thought: str | None
    raw: str
    model: str
    preset: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float | str] = field(default_factory=dict)  # seconds, tok/s, and the backend/dtype that ran

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Query:
    """One question for `ask_batch`."""

    question: str
    images: Sequence[Any] = ()
    system: str | None = None


class MedGemma:
    """A loaded model plus its prompt preset; every call goes through the `Backend` interface.

    Use it as a context manager (or call `close()`) to free the model's memory and threads when done:

    >>> with MedGemma.load("medgemma-4b-it") as mg:
    ...     print(mg.chat([{"role": "user", "content": "What is sepsis?"}]).text)
    """

    def __init__(
        self,
        backend: Backend,
        resolved: ResolvedModel | None = None,
        preset: str | None = None,
        load_seconds: float = 0.0,
    ) -> None:
        self.backend = backend
        self.resolved = resolved
        self.preset: PromptPreset = get_preset(preset or backend.info.default_preset)
        self.load_seconds = load_seconds
        self._closed = False

    @classmethod
    def load(
        cls,
        model: str | ResolvedModel | None = None,
        options: LoadOptions | None = None,
        *,
        preset: str | None = None,
        allow_download: bool = False,
        **overrides: Any,
    ) -> MedGemma:
        """Load `model` (a variant name, hub id, checkpoint folder, registered name or .gguf; None: the default or the
        demo model) with `options`, or with `LoadOptions` fields given as keywords (`device="cpu"`,
        `backend="llamacpp"`, `upstream=URL`, ...) on top of them."""
        opts = (options or LoadOptions()).with_overrides(**overrides)
        be, resolved, secs = load_backend(model, opts, allow_download)
        return cls(be, resolved, preset, secs)

    @property
    def is_demo(self) -> bool:
        return bool(self.resolved and self.resolved.is_demo)

    @property
    def notice(self) -> str | None:
        return DEMO_NOTICE if self.is_demo else None

    @property
    def image_size(self) -> int:
        return self.backend.info.image_size or DEFAULT_IMAGE_SIZE

    # -- inputs -------------------------------------------------------------------------------------------------
    def media(self, images: Sequence[Any], options: ImageOptions = ImageOptions()) -> list[Part]:
        """Load image sources (paths, PIL images or parts) into model-ready parts.

        A text-only model reads a PDF's text layer (`ImageOptions.pdf_text` None means so): it cannot take the
        page images, and the text is all of a born-digital report that it could use."""
        if options.pdf_text is None and not self.backend.info.multimodal:
            options = replace(options, pdf_text=True)
        parts: list[Part] = []
        for im in images:
            if isinstance(im, (ImagePart, TextPart)):
                parts.append(im)
            elif isinstance(im, Image.Image):
                parts.append(ImagePart(to_model_image(im, self.image_size, options.pad is not False)))
            else:
                parts.extend(load_parts(im, options, self.image_size))
        if parts and any(isinstance(p, ImagePart) for p in parts) and not self.backend.info.multimodal:
            raise CapabilityError(f"model {self.backend.info.name!r} is text-only and cannot take images")
        n = sum(isinstance(p, ImagePart) for p in parts)
        if n > self.backend.info.max_images:
            raise BadInput(f"{n} images in one prompt; this model takes at most {self.backend.info.max_images}")
        return parts

    def request(
        self,
        question: str,
        images: Sequence[Any] = (),
        *,
        system: str | None = None,
        think: bool = False,
        history: list[Message] | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        image_options: ImageOptions = ImageOptions(),
        preset: str | PromptPreset | None = None,
        instruction: str | None = None,
        json_schema: dict[str, Any] | None = None,
        max_thought_tokens: int | None = None,
    ) -> GenerationRequest:
        """Build one request: images through `imaging`, text through the preset (this call's, else the model's).

        `instruction`: text before a CT/MR volume's or slide's images, the question after them (see the preset).
        `json_schema`: the answer must be JSON valid under it (constrained decoding); checked here, before any
        image is read, so an unsupported feature fails fast. With `think` the thought stays free text and only the
        answer is constrained (backends with `capabilities.thinking_schema`); `max_thought_tokens` closes a thought
        that long (the answer then starts), where the backend can.
        """
        caps = self.backend.capabilities
        if max_thought_tokens is not None and (max_thought_tokens <= 0 or not think):
            raise BadInput("--max-thought-tokens must be positive, and needs --think")
        if think and (json_schema is not None or max_thought_tokens is not None) and not caps.thinking_schema:
            what = "a JSON schema" if json_schema is not None else "a thought budget"
            raise BadInput(
                f"the {self.backend.info.backend} backend cannot combine thinking with {what}; drop one of them"
            )
        if json_schema is not None:
            from .backends.constrain import check_schema

            json_schema = check_schema(json_schema)
        pre = (get_preset(preset) if isinstance(preset, str) else preset) if preset else self.preset
        if image_options.pad is None:  # the preset's choice (the longitudinal notebook sends its images unpadded)
            image_options = replace(image_options, pad=pre.pad_images)
        media = self.media(images, image_options)
        prompt = pre.build(question, media, system=system, think=think, history=history, instruction=instruction)
        has_images = bool(prompt.all_images())
        params = SamplingParams(
            max_new_tokens=max_new_tokens or pre.max_new_tokens(has_images, think),
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=tuple(stop) + pre.stop,
        )
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise BadInput("--max-new-tokens must be positive")
        return GenerationRequest(
            prompt, params, json_schema=json_schema, think=think, max_thought_tokens=max_thought_tokens
        )

    def _answer(self, c: Completion, gen_seconds: float) -> Answer:
        s = split_thought(c.text)
        tps = c.completion_tokens / gen_seconds if gen_seconds > 0 else 0.0
        return Answer(
            text=s.answer,
            thought=s.thought,
            raw=c.text,
            model=self.backend.info.name,
            preset=f"{self.preset.name}@{self.preset.version}",
            finish_reason=c.finish_reason,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            timings={
                "load_s": round(self.load_seconds, 3),
                "generate_s": round(gen_seconds, 3),
                "tokens_per_s": round(tps, 2),
                "backend": self.backend.info.backend,
                "dtype": self.backend.info.extra.get("dtype") or _gguf_type(self.backend.info.path),
                **self._vision_timing(),
            },
        )

    def _vision_timing(self) -> dict[str, Any]:
        """Which runtime ran the image tower (transformers backend, multimodal models): OpenVINO or torch."""
        vision = getattr(self.backend, "vision", None)
        runtime = getattr(vision, "runtime", None)
        return {"vision_tower": runtime} if runtime and self.backend.info.multimodal else {}

    # -- generation -------------------------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        images: Sequence[Any] = (),
        *,
        system: str | None = None,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        image_options: ImageOptions = ImageOptions(),
        **kwargs: Any,
    ) -> Answer:
        """Answer one question (optionally about images); thought and answer come back separated.

        Args:
            question: the question text.
            images: paths (PNG, JPEG, DICOM, series folders, slides), `dicomweb://` URIs or PIL images.
            system: a system prompt replacing the preset's.
            think: ask thinking-capable models to reason first (the thought is `Answer.thought`).
            max_new_tokens: default the preset's.
            temperature: 0 is greedy, MedGemma's default.
            kwargs: the rest of `request()`'s options (history, top_k, stop, preset, instruction).
        """
        req = self.request(
            question,
            images,
            system=system,
            think=think,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            image_options=image_options,
            **kwargs,
        )
        return self._generate(req)

    def _generate(self, req: GenerationRequest) -> Answer:
        t0 = time.perf_counter()
        c = self.backend.generate([req])[0]
        return self._answer(c, time.perf_counter() - t0)

    @overload
    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: Literal[False] = False,
        think: bool = ...,
        max_new_tokens: int | None = ...,
        temperature: float = ...,
        top_p: float = ...,
        seed: int | None = ...,
        image_options: ImageOptions = ...,
    ) -> Answer: ...

    @overload
    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: Literal[True],
        think: bool = ...,
        max_new_tokens: int | None = ...,
        temperature: float = ...,
        top_p: float = ...,
        seed: int | None = ...,
        image_options: ImageOptions = ...,
    ) -> Iterator[tuple[str, str] | Answer]: ...

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: bool = False,
        think: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        image_options: ImageOptions = ImageOptions(),
    ) -> Answer | Iterator[tuple[str, str] | Answer]:
        """Reply to a conversation written as OpenAI chat messages, images included.

        Messages are `{"role": "system" | "user" | "assistant", "content": str | [parts]}`; a part is
        `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}` (a path, `file://`,
        `data:image/...;base64,...` or `dicomweb://` URI) or `{"type": "image", "image": path_or_PIL_image}`. The last
        message is the user's; the model's preset renders the turns.

        Args:
            messages: the conversation so far.
            stream: False returns the `Answer`; True returns an iterator of `("thought" | "answer", text)` pieces as
                they are decoded, then the final `Answer`.
            think: ask thinking-capable models to reason first.
            max_new_tokens: default the preset's.
            temperature: 0 is greedy, MedGemma's default.

        Example:
            >>> for piece in mg.chat([{"role": "user", "content": "Explain atelectasis."}], stream=True):
            ...     if isinstance(piece, tuple) and piece[0] == "answer":
            ...         print(piece[1], end="")
        """
        chat = parse_chat(messages)
        history: list[Message] = []
        for turn in chat.history:
            parts: list[Part] = []
            for item in turn.items:
                if isinstance(item, ImageRef):
                    parts += self.media([_image_source(item.source)], image_options)
                elif item:
                    parts.append(TextPart(item))
            history.append(Message(turn.role, parts))  # type: ignore[arg-type]
        system = chat.system
        if history and system is not None:  # presets add their system turn to a first turn only
            history.insert(0, Message("system", [TextPart(system)]))
            system = None
        req = self.request(
            chat.question,
            [_image_source(s) for s in chat.images],
            system=system,
            think=think,
            history=history or None,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            image_options=image_options,
        )
        return self.stream(req) if stream else self._generate(req)

    def ask_batch(self, queries: Sequence[Query | str], **kwargs: Any) -> list[Answer]:
        """Answer many questions in batches (the backend pads and batches them)."""
        reqs = []
        for q in queries:
            q = Query(q) if isinstance(q, str) else q
            reqs.append(self.request(q.question, q.images, system=q.system, **kwargs))
        t0 = time.perf_counter()
        outs = self.backend.generate(reqs)
        secs = time.perf_counter() - t0
        return [self._answer(c, secs) for c in outs]

    def stream(self, request: GenerationRequest) -> Iterator[tuple[str, str] | Answer]:
        """Yield ("thought" | "answer", text) pieces as decoded, then the final `Answer`."""
        splitter = StreamSplitter()
        t0 = time.perf_counter()
        for item in self.backend.stream(request):
            if isinstance(item, Completion):
                yield from splitter.flush()
                yield self._answer(item, time.perf_counter() - t0)
                return
            yield from splitter.feed(item)

    # -- lifetime ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the backend (model memory, llama.cpp contexts, HTTP clients, threads). Safe to call twice."""
        if not self._closed:
            self._closed = True
            self.backend.close()

    def __enter__(self) -> MedGemma:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _image_source(src: Any) -> Any:
    """A chat image as `media` takes it: a data URI decoded here, `file://` made a path, the rest as given."""
    if isinstance(src, str) and src.startswith("data:"):
        head, _, b64 = src.partition(",")
        if ";base64" not in head:
            raise BadInput("image data URI: only base64 data URIs are accepted")
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("image data URI: the base64 payload is malformed") from None
        return decode_image_bytes(data, "image data URI")
    if isinstance(src, str) and src.startswith("file://"):
        return src.removeprefix("file://")
    return src


def _gguf_type(path: str) -> str:
    """A GGUF's weight type as its file name says it (our exports and llama.cpp's: `...-q4_k_m.gguf`), else "gguf"."""
    stem = path.rsplit("/", 1)[-1].lower().removesuffix(".gguf")
    for t in ("q4_k_m", "q4_k_s", "q5_k_m", "q6_k", "q8_0", "q4_0", "bf16", "f16", "f32"):
        if stem.endswith(t):
            return t
    return "gguf"
