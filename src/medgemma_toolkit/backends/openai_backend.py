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
  MEDGEMMA_UPSTREAM_RETRIES   retries on 429/5xx/connection errors, exponential back-off (default 4)
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, BadInput, CapabilityError, MedGemmaError
from ..prompts.messages import ImagePart, Prompt
from ..models.checkpoint import ModelHint
from .base import Backend, Capabilities, Completion, DeltaCallback, GenerationRequest
from .decoding import RowState, RowTracker
from .torch_setup import LoadOptions

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
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
    backoff_s: float = 0.5  # first wait; doubles each retry, with jitter, capped at 20 s

    @classmethod
    def from_env(cls, base_url: str) -> "UpstreamSettings":
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

    def __init__(self, path: str | Path, info_hint: ModelHint | dict[str, Any],
                 options: LoadOptions | None = None) -> None:
        import httpx

        self._httpx = httpx
        url = (options.upstream if options else None) or os.environ.get("MEDGEMMA_UPSTREAM_URL")
        if not url:
            raise BadInput("the openai backend needs --upstream URL (an OpenAI-compatible server)")
        self.settings = UpstreamSettings.from_env(url)
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        self.client = httpx.Client(
            base_url=self.settings.base_url,
            headers=headers,
            timeout=httpx.Timeout(self.settings.timeout_s, connect=min(10.0, self.settings.timeout_s)),
            limits=httpx.Limits(max_connections=self.settings.concurrency + 2),
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
            backend="openai", multimodal=not text_only,
            image_size=image_size,  # images are sent at the size the upstream model takes
            tokens_per_image=None if text_only else 256, has_chat_template=True,
            thinking=bool(card.get("thinking", False)), default_preset=str(card.get("preset") or "").split("@")[0] or None,
            extra={"upstream": self.settings.base_url, "concurrency": str(self.settings.concurrency)},
        )
        # Requests in flight at once; the upstream batches them itself. No log-likelihoods over the chat API.
        self.capabilities = Capabilities(max_batch_size=self.settings.concurrency, images=not text_only, remote=True)

    # -- HTTP with retries ----------------------------------------------------------------------------------
    def _list_models(self) -> dict[str, dict[str, Any]]:
        """Model id -> our `medgemma` card extension (empty for other servers)."""
        with closing(self._request("GET", "/models")) as r:
            r.read()
            try:
                data = r.json().get("data") or []
            except (ValueError, AttributeError):
                raise UpstreamError(f"{self.settings.base_url}/models did not answer JSON; is it an OpenAI API?") from None
        return {
            str(m["id"]): (m.get("medgemma") if isinstance(m.get("medgemma"), dict) else {})
            for m in data if isinstance(m, dict) and m.get("id")
        }

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None):
        """Send with retries on 429/5xx and connection errors; returns an open streaming response (close it)."""
        httpx = self._httpx
        s = self.settings
        for attempt in range(s.retries + 1):
            last_attempt = attempt == s.retries
            try:
                req = self.client.build_request(method, path, json=body)
                resp = self.client.send(req, stream=True)
            except httpx.TimeoutException:
                if last_attempt:
                    raise BackendUnavailable(f"upstream {s.base_url} timed out after {s.timeout_s:g} s") from None
                self._sleep(attempt, None)
                continue
            except httpx.TransportError:
                if last_attempt:
                    raise BackendUnavailable(f"upstream {s.base_url} is unreachable") from None
                self._sleep(attempt, None)
                continue
            if resp.status_code < 400:
                return resp
            resp.read()
            if resp.status_code in RETRY_STATUS and not last_attempt:
                retry_after = resp.headers.get("retry-after")
                resp.close()
                self._sleep(attempt, retry_after)
                continue
            resp.close()
            raise self._error_for(resp)
        raise BackendUnavailable(f"upstream {s.base_url} failed")  # not reached

    def _lines(self, resp: Any) -> Iterator[str]:
        """The response's lines; a stall or dropped connection mid-answer becomes our error, not httpx's."""
        try:
            yield from resp.iter_lines()
        except self._httpx.TimeoutException:
            raise BackendUnavailable(
                f"upstream {self.settings.base_url} stalled mid-answer for over {self.settings.timeout_s:g} s"
            ) from None
        except self._httpx.TransportError:
            raise BackendUnavailable(f"upstream {self.settings.base_url} dropped the connection mid-answer") from None

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(20.0, self.settings.backoff_s * (2**attempt)) * (0.5 + random.random() / 2)
        if retry_after:
            try:
                delay = max(delay, min(60.0, float(retry_after)))
            except ValueError:
                pass
        log.info("upstream busy or failing; retry %d in %.1f s", attempt + 1, delay)
        time.sleep(delay)

    def _error_for(self, resp: Any) -> MedGemmaError:
        try:
            err = resp.json().get("error")
            msg = err.get("message") if isinstance(err, dict) else str(err or "")
        except (ValueError, AttributeError):
            msg = ""
        msg = " ".join(str(msg).split())[:200]  # one line; upstream messages do not carry our inputs' headers
        status = resp.status_code
        if status in (400, 404, 413, 422):
            e: MedGemmaError = BadInput(f"upstream rejected the request ({status}): {msg or 'no detail'}")
        elif status in (401, 403):
            e = BackendUnavailable(f"upstream refused our credentials ({status}); set MEDGEMMA_UPSTREAM_API_KEY")
        else:
            e = UpstreamError(f"upstream failed ({status}): {msg or 'no detail'}")
            e.http_status = 502
        return e

    # -- generation -----------------------------------------------------------------------------------------
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
            body["top_k"] = p.top_k  # vLLM, SGLang and llama.cpp accept it as an extension
        if p.stop:
            body["stop"] = list(p.stop[:MAX_STOP])
        prompt = request.prompt
        if prompt.is_completion:
            if prompt.images:
                raise CapabilityError("the openai backend cannot send images with a completion (base-model) prompt")
            body["prompt"] = prompt.text or ""
            return "/completions", body
        if prompt.all_images() and not self.info.multimodal:
            raise CapabilityError(f"model {self.model!r} is text-only and cannot take images")
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
        text, n_prompt, n_out, n_deltas, finish = "", 0, 0, 0, None
        with closing(self._request("POST", path, body)) as resp:
            for event in _sse_events(self._lines(resp)):
                if event.get("usage"):
                    n_prompt = int(event["usage"].get("prompt_tokens") or n_prompt)
                    n_out = int(event["usage"].get("completion_tokens") or n_out)
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                    if piece:
                        text += piece
                        n_deltas += 1  # servers stream about one token per delta: our budget check's count
                        tracker.update(row, text, n_deltas, False)
                    finish = choice.get("finish_reason") or finish
                if row.finish is not None:  # a stop string, our token budget or a cancelled client
                    break
        n_out = n_out or n_deltas
        if row.finish is None:  # the upstream ended the answer: final update, flushing any held-back text
            if finish == "length":
                tracker.update(row, text, max(n_out, row.request.params.max_new_tokens), False)
            else:
                tracker.update(row, text, n_out, True)
        return Completion(row.text, row.finish or "stop", n_prompt, n_out)

    def close(self) -> None:
        self.client.close()


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            if event.get("error"):
                err = event["error"]
                msg = err.get("message") if isinstance(err, dict) else str(err)
                raise UpstreamError(f"upstream failed mid-stream: {' '.join(str(msg).split())[:200]}")
            yield event
