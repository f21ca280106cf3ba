"""OpenAI response bodies: `chat.completion` objects and `chat.completion.chunk` server-sent events.

The thought of thinking models is split off with `prompts.thinking` and sent as `reasoning_content` (the field
other OpenAI-compatible servers use), so it never appears inside `content`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..backends.base import Completion
from ..prompts.thinking import StreamSplitter, split_thought


def finish_reason(c: Completion) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def usage_of(completions: list[Completion]) -> dict[str, int]:
    """Usage of a request's `n` choices: the prompt counted once (as OpenAI does), the completions summed."""
    prompt = completions[0].prompt_tokens if completions else 0
    out = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


def completion_body(meta: dict[str, Any], c: Completion) -> dict[str, Any]:
    s = split_thought(c.text)
    message: dict[str, Any] = {"role": "assistant", "content": s.answer}
    if s.thought is not None:
        message["reasoning_content"] = s.thought
    return {
        "id": meta["id"],
        "object": "chat.completion",
        "created": meta["created"],
        "model": meta["model"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(c),
                "logprobs": None if c.logprobs is None else {"content": c.logprobs},
            }
        ],
        "usage": usage(c),
        "medgemma": {"preset": meta["preset"], "thought": s.thought, "demo_model": meta["demo_model"]},
    }


def delta_chunk(meta: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": meta["id"],
        "object": "chat.completion.chunk",
        "created": meta["created"],
        "model": meta["model"],
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class StreamState:
    """Routes streamed text to `content` or `reasoning_content` as the thought markers go by."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.splitter = StreamSplitter()
        self.answer_started = False

    def _chunks(self, pieces: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        for channel, text in pieces:
            if channel == "answer":
                if not self.answer_started:
                    text = text.lstrip()  # the non-streamed answer is stripped too
                    if not text:
                        continue
                    self.answer_started = True
                yield delta_chunk(self.meta, {"content": text})
            else:
                yield delta_chunk(self.meta, {"reasoning_content": text})

    def feed(self, delta: str) -> Iterator[dict[str, Any]]:
        return self._chunks(self.splitter.feed(delta))

    def closing(self, c: Completion) -> Iterator[dict[str, Any]]:
        """Chunks held back until the answer is complete (tool calls: `serve.tools.ToolStreamState`)."""
        return iter(())

    def finish_reason(self, c: Completion) -> str:
        return finish_reason(c)


def final_chunks(state: StreamState, c: Completion, include_usage: bool) -> Iterator[dict[str, Any]]:
    yield from state._chunks(state.splitter.flush())
    yield from state.closing(c)
    yield delta_chunk(state.meta, {}, state.finish_reason(c))
    if include_usage:
        yield {
            "id": state.meta["id"],
            "object": "chat.completion.chunk",
            "created": state.meta["created"],
            "model": state.meta["model"],
            "choices": [],
            "usage": usage(c),
        }
