"""OpenAI-compatible upstream backend: our presets and image handling in front of vLLM, SGLang, Ollama or
llama.cpp's server.

Teams serving MedGemma 27B across GPUs already run vLLM; this backend turns such a deployment into a DICOM-aware
endpoint (`medgemma serve --backend openai --upstream URL`) and lets `medgemma eval` score it at high concurrency.
Every image (DICOM, CT volume slices, WSI patches) is converted here by `imaging` and sent as a PNG data URI, so the
upstream sees exactly the pixels our other backends would.

Settings (environment, so secrets stay out of argv and shell history):
  MEDGEMMA_UPSTREAM_API_KEY   bearer key sent upstream (falls back to OPENAI_API_KEY)
  MEDGEMMA_UPSTREAM_CONCURRENCY  requests in flight at once (default 16)
  MEDGEMMA_UPSTREAM_TIMEOUT   seconds per request attempt (default 600)
  MEDGEMMA_UPSTREAM_RETRIES   retries on 408/409/429/5xx/connection errors, exponential back-off (default 4)

HTTP, retries with back-off (honouring Retry-After), SSE parsing and typed errors come from the official `openai`
client; this module maps its errors to ours (one line, no request content) and reads our `medgemma` model cards.

Function calling: a request with `tools` (serve, `medgemma ehr`) is sent with OpenAI `tools` to upstreams that take
them (vLLM with a tool parser, another `medgemma serve`), and the calls come back parsed by the upstream. The first
time an upstream refuses tools (a 400/422), this backend stops offering them and sends our rendered Gemma
function-calling prompt instead; the caller then parses the text (prompts/tools.py).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from ..core.messages import ImagePart, Prompt
from ..core.model import ModelHint
from ..core.options import LoadOptions
from ..errors import BackendUnavailable, BadInput, CapabilityError, MedGemmaError
from .base import Backend, Capabilities, Completion, DeltaCallback, GenerationRequest
from .decoding import RowState, RowTracker

log = logging.getLogger(__name__)

MAX_STOP = 4  # OpenAI's limit; longer stop lists are applied here by RowTracker anyway


class UpstreamError(MedGemmaError):
    """The upstream answered with an error we cannot retry; status mirrors it."""

    http_status = 502
    code = "upstream_error"


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str
    api_key: str | None = None
    concurrency: int = 16
    timeout_s: float = 600.0
    retries: int = 4

    @classmethod
    def from_env(cls, base_url: str) -> UpstreamSettings:
        def num(name: str, default: float) -> float:
            raw = os.environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise BadInput(f"${name} must be a number") from None
            if value < 0:
                raise BadInput(f"${name} must not be negative")
            return value

        return cls(
            base_url=normalise_base_url(base_url),
            api_key=os.environ.get("MEDGEMMA_UPSTREAM_API_KEY") or os.environ.get("OPENAI_API_KEY") or None,
            concurrency=max(1, int(num("MEDGEMMA_UPSTREAM_CONCURRENCY", 16))),
            timeout_s=num("MEDGEMMA_UPSTREAM_TIMEOUT", 600.0) or 600.0,
            retries=int(num("MEDGEMMA_UPSTREAM_RETRIES", 4)),
        )


def normalise_base_url(url: str) -> str:
    """`http://host:8000`, `.../v1` and `.../v1/` all mean the same OpenAI base URL."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise BadInput(f"--upstream must be an http(s) URL; got {url!r}")
    return url if url.endswith("/v1") else url + "/v1"


def image_data_uri(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_openai_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """Our messages in OpenAI chat format; images become PNG data URIs where they sit among the text."""
    out: list[dict[str, Any]] = []
    for m in prompt.messages:
        if not m.images:
            out.append({"role": m.role, "content": m.text})
            continue
        content = []
        for p in m.parts:
            if isinstance(p, ImagePart):
                content.append({"type": "image_url", "image_url": {"url": image_data_uri(p.image)}})
            else:
                content.append({"type": "text", "text": p.text})
        out.append({"role": m.role, "content": content})
    return out


class OpenAIBackend(Backend):
    """Forwards each request to `{upstream}/chat/completions` (or `/completions` for base-model prompts)."""

    remote = True  # `--model` names the upstream's model; nothing is resolved on local disk

    def __init__(
        self, path: str | Path, info_hint: ModelHint | dict[str, Any], options: LoadOptions | None = None
    ) -> None:
        import openai

        self._openai = openai
        url = (options.upstream if options else None) or os.environ.get("MEDGEMMA_UPSTREAM_URL")
        if not url:
            raise BadInput("the openai backend needs --upstream URL (an OpenAI-compatible server)")
        self.settings = UpstreamSettings.from_env(url)
        self.client = openai.OpenAI(
            base_url=self.settings.base_url,
            # "EMPTY": the placeholder vLLM documents for servers without a key (the client insists on one).
            api_key=self.settings.api_key or "EMPTY",
            timeout=openai.Timeout(self.settings.timeout_s, connect=min(10.0, self.settings.timeout_s)),
            max_retries=self.settings.retries,
        )
        models = self._list_models()
        hint = ModelHint.of(info_hint)
        requested = hint.name
        if requested and requested not in models and models:
            raise BadInput(f"upstream serves {', '.join(list(models)[:5])}; it has no model {requested!r}")
        self.model = requested or next(iter(models), "")
        if not self.model:
            raise BadInput("upstream lists no models; give --model with the name it serves")
        # A `medgemma serve` upstream describes itself; for vLLM & co. assume MedGemma's conventions.
        card = models.get(self.model) or {}
        self.chained = bool(card)  # the upstream is another `medgemma serve`
        text_only = not card.get("multimodal", "text" not in self.model.lower())  # e.g. medgemma-27b-text-it
        image_size = None if text_only else int(card.get("image_size") or 896)
        # A `medgemma serve` upstream says its own thinking and preset; for others assume a chat model.
        self.info = replace(hint, name=self.model, pretrained=bool(hint.pretrained)).model_info(
            path=f"{self.settings.base_url}#{self.model}",  # identity for eval provenance and its result cache
            backend="openai",
            multimodal=not text_only,
            image_size=image_size,  # images are sent at the size the upstream model takes
            tokens_per_image=None if text_only else 256,
            has_chat_template=True,
            thinking=bool(card.get("thinking", False)),
            default_preset=str(card.get("preset") or "").split("@")[0] or None,
            extra={"upstream": self.settings.base_url, "concurrency": str(self.settings.concurrency)},
        )
        self.native_tools = True  # offer OpenAI `tools` upstream until it refuses them once
        # Requests in flight at once; the upstream batches them itself. No log-likelihoods over the chat API.
        # `logprobs` are asked of the upstream and passed through; one that returns none fails the request.
        self.capabilities = Capabilities(
            max_batch_size=self.settings.concurrency, images=not text_only, remote=True, logprobs=True
        )

    # -- errors ---------------------------------------------------------------------------------------------
    def _list_models(self) -> dict[str, dict[str, Any]]:
        """Model id -> our `medgemma` card extension (empty for other servers)."""
        with self._errors():
            try:
                data = [m.to_dict() for m in self.client.models.list()]
            except self._openai.APIResponseValidationError:
                raise UpstreamError(
                    f"{self.settings.base_url}/models did not answer JSON; is it an OpenAI API?"
                ) from None
        return {
            str(m["id"]): (cast(dict[str, Any], m.get("medgemma")) if isinstance(m.get("medgemma"), dict) else {})
            for m in data
            if isinstance(m, dict) and m.get("id")
        }

    @contextlib.contextmanager
    def _errors(self, mid_stream: bool = False) -> Iterator[None]:
        """The client's typed errors as ours: one line, the upstream's message at most (never our request)."""
        openai, s = self._openai, self.settings
        try:
            yield
        except openai.APITimeoutError:
            what = "stalled mid-answer for over" if mid_stream else "timed out after"
            raise BackendUnavailable(f"upstream {s.base_url} {what} {s.timeout_s:g} s") from None
        except openai.APIConnectionError:
            what = "dropped the connection mid-answer" if mid_stream else "is unreachable"
            raise BackendUnavailable(f"upstream {s.base_url} {what}") from None
        except openai.APIStatusError as e:
            raise _status_error(e.status_code, _message(e.body)) from None
        except openai.APIError as e:  # an error event inside the stream, or an answer that is not the API's
            where = "mid-stream" if mid_stream else "with an invalid answer"
            raise UpstreamError(f"upstream failed {where}: {_message(e.body) or 'no detail'}") from None

    # -- generation -----------------------------------------------------------------------------------------
    def _native_messages(self, request: GenerationRequest) -> list[dict[str, Any]] | None:
        """The client's own OpenAI messages (tool turns intact) when the upstream should get `tools` natively."""
        spec = request.tools
        if spec is None or spec.messages is None or not self.native_tools or request.prompt.is_completion:
            return None
        messages = [dict(m) for m in spec.messages]
        if self.chained and not any(m.get("role") in ("system", "developer") for m in messages):
            messages.insert(0, {"role": "system", "content": ""})  # as below: keep the upstream's preset out
        return messages

    def _body(self, request: GenerationRequest, stream: bool) -> tuple[str, dict[str, Any]]:
        p = request.params
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if p.seed is not None:
            body["seed"] = p.seed
        if p.top_k is not None:
            body["extra_body"] = {"top_k": p.top_k}  # vLLM, SGLang and llama.cpp accept it as an extension
        if p.stop:
            body["stop"] = list(p.stop[:MAX_STOP])
        if request.json_schema is not None:  # the upstream constrains its own decoding (vLLM, llama-server, serve)
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.json_schema, "strict": True},
            }
        prompt = request.prompt
        if request.logprobs is not None:  # chat: a flag plus a count; legacy completions: the count
            if prompt.is_completion:
                body["logprobs"] = request.logprobs
            else:
                body["logprobs"] = True
                if request.logprobs:
                    body["top_logprobs"] = request.logprobs
        if prompt.is_completion:
            if prompt.images:
                raise CapabilityError("the openai backend cannot send images with a completion (base-model) prompt")
            body["prompt"] = prompt.text or ""
            return "/completions", body
        if prompt.all_images() and not self.info.multimodal:
            raise CapabilityError(f"model {self.model!r} is text-only and cannot take images")
        native = self._native_messages(request)
        if native is not None and request.tools is not None:
            body.update(messages=native, tools=request.tools.tools, tool_choice=request.tools.choice)
            return "/chat/completions", body
        messages = to_openai_messages(prompt)
        if self.chained and not any(m["role"] == "system" for m in messages):
            # A `medgemma serve` upstream applies its preset's default system prompt to a bare user turn; an
            # explicit empty one keeps our prompt (e.g. eval's no-system protocol) exactly as built here.
            messages.insert(0, {"role": "system", "content": ""})
        body["messages"] = messages
        return "/chat/completions", body

    def generate(
        self, requests: Sequence[GenerationRequest], on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        rows = [RowState(i, r) for i, r in enumerate(requests)]
        tracker = RowTracker(rows, on_delta)
        if len(rows) == 1:
            return [self._one(rows[0], tracker)]
        with ThreadPoolExecutor(max_workers=min(len(rows), self.settings.concurrency)) as pool:
            return list(pool.map(lambda r: self._one(r, tracker), rows))

    def _one(self, row: RowState, tracker: RowTracker) -> Completion:
        path, body = self._body(row.request, stream=True)
        chat = path != "/completions"
        create = self.client.chat.completions.create if chat else self.client.completions.create
        text, n_prompt, n_out, n_deltas, finish = "", 0, 0, 0, None
        calls: dict[int, dict[str, Any]] = {}
        lps: list[dict[str, Any]] | None = None if row.request.logprobs is None else []
        try:
            with self._errors():
                stream = create(**body)
        except BadInput:
            if "tools" not in body:
                raise
            self.native_tools = False
            log.warning("upstream refused OpenAI tools; sending the Gemma function-calling prompt instead")
            path, body = self._body(row.request, stream=True)
            with self._errors():
                stream = create(**body)
        with self._errors(mid_stream=True), stream:
            for event in stream:
                if event.usage:
                    n_prompt = int(event.usage.prompt_tokens or n_prompt)
                    n_out = int(event.usage.completion_tokens or n_out)
                for choice in event.choices or []:
                    if lps is not None and choice.logprobs is not None:
                        new = _entries(choice.logprobs, chat)
                        lps += new
                        if new and row.request.on_logprobs is not None:
                            row.request.on_logprobs(new)
                    piece = choice.text if chat is False else choice.delta.content  # completions carry text
                    if piece:
                        text += piece
                        n_deltas += 1  # servers stream about one token per delta: our budget check's count
                        tracker.update(row, text, n_deltas, False)
                    finish = choice.finish_reason or finish
                    for tc in (getattr(choice.delta, "tool_calls", None) or []) if chat else []:
                        _add_call_delta(calls, tc)
                if row.finish is not None:  # a stop string, our token budget or a cancelled client
                    break
        n_out = n_out or n_deltas
        if row.finish is None:  # the upstream ended the answer: final update, flushing any held-back text
            if finish == "length":
                tracker.update(row, text, max(n_out, row.request.params.max_new_tokens), False)
            else:
                tracker.update(row, text, n_out, True)
        if lps is not None and not lps and n_out:
            raise BadInput("logprobs: the upstream server did not return log-probabilities")
        return Completion(
            row.text, row.finish or "stop", n_prompt, n_out, [calls[i] for i in sorted(calls)] or None, lps
        )

    def close(self) -> None:
        self.client.close()


def _entries(logprobs: Any, chat: bool) -> list[dict[str, Any]]:
    """An upstream chunk's log-probabilities as our entries (OpenAI's chat shape), from either API's shape."""
    if chat:
        return [e.model_dump(exclude_none=True) for e in (logprobs.content or [])]
    tops = logprobs.top_logprobs or []
    out = []
    for k, (token, value) in enumerate(zip(logprobs.tokens or [], logprobs.token_logprobs or [])):
        alts = tops[k] if k < len(tops) and tops[k] else {}
        out.append(
            {
                "token": token,
                "logprob": value,
                "top_logprobs": [{"token": t, "logprob": v} for t, v in alts.items()],
            }
        )
    return out


def _add_call_delta(calls: dict[int, dict[str, Any]], tc: Any) -> None:
    """Accumulate one streamed tool-call delta (OpenAI's shape: id and name first, arguments in pieces)."""
    slot = calls.setdefault(
        int(tc.index or 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if tc.id:
        slot["id"] = tc.id
    if tc.function is not None:
        slot["function"]["name"] += tc.function.name or ""
        slot["function"]["arguments"] += tc.function.arguments or ""


def _message(body: object) -> str:
    """The upstream's error message on one line (upstream messages do not carry our inputs' headers)."""
    msg = body.get("message") if isinstance(body, dict) else body if isinstance(body, str) else ""
    return " ".join(str(msg or "").split())[:200]


def _status_error(status: int, msg: str) -> MedGemmaError:
    if status in (400, 404, 413, 422):
        return BadInput(f"upstream rejected the request ({status}): {msg or 'no detail'}")
    if status in (401, 403):
        return BackendUnavailable(f"upstream refused our credentials ({status}); set MEDGEMMA_UPSTREAM_API_KEY")
    e = UpstreamError(f"upstream failed ({status}): {msg or 'no detail'}")
    e.http_status = 502
    return e
