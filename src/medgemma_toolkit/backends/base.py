"""The one interface every path (ask, chat, eval, serve) generates through.

A backend takes a batch of `GenerationRequest`s and returns one `Completion` each; it may report text deltas as
they are decoded through `on_delta(index, text)`, which is how streaming and the server's dynamic batching work
without a second code path. A new backend is one module implementing `generate` plus one registry line.

What a backend can do is declared, not probed: `capabilities` says it, and every optional operation is a method
here that raises `CapabilityError` unless the backend overrides it. Settings arrive through `LoadOptions` at load
time; nothing outside a backend changes its attributes afterwards.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from ..core.messages import Prompt
from ..core.model import ModelHint, ModelInfo
from ..core.options import LoadOptions, SamplingParams
from ..errors import CapabilityError
from ..prompts.tools import ToolSpec

FinishReason = Literal["stop", "length", "cancelled"]
DeltaCallback = Callable[[int, str], None]


@dataclass
class GenerationRequest:
    prompt: Prompt
    params: SamplingParams = field(default_factory=SamplingParams)
    # Polled between decoding steps: lets a server stop work for a client that went away.
    cancelled: Callable[[], bool] | None = None
    # Function calling: the prompt already describes the tools (prompts/tools.py); a backend whose engine takes
    # OpenAI tools natively (an upstream server) may send these instead.
    tools: ToolSpec | None = None
    # Structured output: the answer must be a JSON value valid under this schema ({"type": "object"} for any
    # object). Local engines enforce it while decoding (backends/constrain.py, llama.cpp's grammar); an upstream
    # receives it as `response_format`.
    json_schema: dict[str, Any] | None = None
    # The prompt asks a thinking model to think first: with `json_schema`, the thought decodes free and the schema
    # starts after its close marker (backends with `Capabilities.thinking_schema`). `max_thought_tokens` closes a
    # thought that reached that many tokens (None: the model closes it, or the token limit ends it).
    think: bool = False
    max_thought_tokens: int | None = None
    # Log-probabilities of the generated tokens (backends with `Capabilities.logprobs`): None = not wanted, else
    # how many alternatives to report per token (0 = the chosen token only).
    logprobs: int | None = None
    # Streaming log-probabilities: called from the decoding thread with each token's entries as they are known,
    # before the text delta that contains the token (a server attaches them to its next chunk).
    on_logprobs: Callable[[list[dict[str, Any]]], None] | None = None


@dataclass
class Completion:
    """Raw generated text: end-of-turn/eos removed, thinking markers kept (split later by `prompts.thinking`)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # OpenAI-format tool calls when the engine parsed them itself (an upstream with native tools); else None and
    # callers parse `text` (prompts.tools.parse).
    tool_calls: list[dict[str, Any]] | None = None
    # One entry per generated token when the request asked for logprobs: {"token", "logprob", "top_logprobs":
    # [{"token", "logprob"}, ...]} (OpenAI's shape), log-softmax of the model's fp32 logits before any sampling
    # transform or schema mask.
    logprobs: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a loaded backend can do; callers read this instead of probing for attributes."""

    max_batch_size: int = 1  # requests decoded together; `generate` splits larger lists into batches of this size
    loglikelihood: bool = False  # `loglikelihood` scores continuations
    images: bool = False  # prompts may carry images
    remote: bool = False  # the weights live on another server (`--model` names the upstream's model)
    streaming: bool = True  # `on_delta` receives text as it is decoded, not only at the end
    context_length: int | None = None  # tokens the model attends over; None when unknown
    continuous: bool = False  # `session()` admits requests into the running batch between decoding steps
    # A greedy text `generate` call of more than `max_batch_size` requests keeps that many rows decoding and starts
    # the waiting ones as rows finish (so callers may hand it several batches' worth at once).
    refills: bool = False
    logprobs: bool = False  # `GenerationRequest.logprobs` is honoured (`Completion.logprobs`)
    # A thinking request with a JSON schema decodes a free thought, then the constrained answer; and
    # `GenerationRequest.max_thought_tokens` is honoured.
    thinking_schema: bool = False


class DecodeSession(Protocol):
    """A running batch that requests join between decoding steps; used by one thread (the server's worker)."""

    @property
    def busy(self) -> bool:
        """Whether any request is admitted or waiting to be."""

    @property
    def running(self) -> int:
        """Requests being decoded now."""

    def add(
        self,
        request: GenerationRequest,
        on_delta: Callable[[str], None] | None,
        on_done: Callable[[Completion | BaseException], None],
    ) -> None:
        """Queue a request (a prompt the backend refuses raises here); `on_done` gets its result from a `step`."""

    def step(self) -> None:
        """Admit what fits, decode one batch, and call back every request that produced text or finished."""

    def abort(self, error: BaseException) -> None:
        """Finish every admitted or waiting request with `error`."""


class Backend(ABC):
    """Batched generation over one loaded model."""

    # Known before loading (so `load_backend` does not look for weights on disk): the upstream holds them.
    remote: ClassVar[bool] = False
    info: ModelInfo
    capabilities: Capabilities = Capabilities()

    @abstractmethod
    def __init__(
        self, path: str | Path, info_hint: ModelHint | dict[str, Any], options: LoadOptions | None = None
    ) -> None:
        """Load the model at `path` (for a remote engine: the upstream's model name) with `options`; `info_hint`
        carries what is known of its conventions before loading (`ModelHint`)."""

    @classmethod
    def from_options(cls, path: str | Path, info_hint: ModelHint | dict[str, Any], options: LoadOptions) -> Backend:
        """The one way `loading.load_backend` builds an engine: every engine takes the same `LoadOptions`."""
        return cls(path, info_hint, options)

    @abstractmethod
    def generate(
        self, requests: Sequence[GenerationRequest], on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        """Generate for every request (batched where the engine can), in order."""

    def stream(self, request: GenerationRequest) -> Iterator[str | Completion]:
        """Yield text deltas as they are decoded, then the final `Completion`."""
        q: queue.Queue[tuple[str, object]] = queue.Queue()

        def run() -> None:
            try:
                done = self.generate([request], on_delta=lambda _i, d: q.put(("delta", d)))
                q.put(("done", done[0]))
            except BaseException as e:  # re-raised in the consumer's thread
                q.put(("error", e))

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        while True:
            kind, value = q.get()
            if kind == "delta":
                yield str(value)
            elif kind == "done":
                assert isinstance(value, Completion)
                yield value
                return
            else:
                assert isinstance(value, BaseException)
                raise value

    def session(self) -> DecodeSession:
        """Continuous batching (`capabilities.continuous`): requests join and leave between decoding steps."""
        raise CapabilityError(f"backend {self.info.backend!r} has no continuous batching")

    def context_length(self) -> int | None:
        """Tokens the model attends over (prompt plus answer); None when unknown, and then nothing is checked."""
        return self.capabilities.context_length

    def render(self, prompt: Prompt) -> str:
        """The exact text the model is fed for `prompt` (chat template applied, `<start_of_image>` per image)."""
        raise CapabilityError(f"backend {self.info.backend!r} does not render prompts locally")

    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]], batch_size: int | None = None) -> list[float]:
        """Sum of log-probabilities of each continuation given its prompt (`capabilities.loglikelihood`)."""
        raise CapabilityError(f"backend {self.info.backend!r} cannot score log-likelihoods")

    def count_text_tokens(self, text: str) -> int | None:
        """Tokens `text` takes on its own (no special tokens added); None when the backend cannot tell."""
        return None

    def count_prompt_tokens(self, prompt: Prompt) -> int | None:
        """Tokens `prompt` takes, images included, without running the model (so a server can refuse a prompt
        that does not fit before it joins a batch); None when the backend cannot tell."""
        return None

    def close(self) -> None:  # noqa: B027 - an optional hook: a backend that holds nothing keeps the no-op
        """Release memory held by the model (optional)."""
