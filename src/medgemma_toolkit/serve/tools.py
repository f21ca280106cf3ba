"""OpenAI tool calling on the server: requests with `tools` are rendered with the Gemma function-calling preset
(`prompts.tools`, after Google's documented format) and answers are parsed back into `tool_calls`.

Choices, documented in the README:
- `tool_choice` "none" hides the tools; "required" and a named function are asked for in the prompt (no constrained
  decoding), so a model may still answer in prose: the answer then comes back as content, finish_reason "stop".
- An answer that looks like a call but does not parse keeps the raw text as `content`, finish_reason "stop", and
  says why in `medgemma.tool_parse_error`; never a 5xx.
- Streaming with tools: reasoning streams live; the answer is held until it is complete, then sent either as
  `tool_calls` deltas (OpenAI's chunk shape: id, type and name first, then the arguments) or as one content delta.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..backends.base import Completion
from ..errors import BadInput
from ..prompts import tools as fc
from ..prompts.thinking import split_thought
from .errors import APIError
from .responses import StreamState, completion_body, delta_chunk, finish_reason
from .schemas import ChatCompletionRequest, ChatMessage, ImageContent


@dataclass(frozen=True)
class ToolContext:
    tools: list[dict[str, Any]]
    choice: str | dict[str, Any]
    spec: fc.ToolSpec
    parallel: bool = True  # `parallel_tool_calls: false` keeps the first call only

    @property
    def active(self) -> bool:
        """Whether answers are read for calls (tools offered and not switched off)."""
        return bool(self.tools) and self.choice != "none"


def _has_tool_turns(body: ChatCompletionRequest) -> bool:
    return any(m.role == "tool" or m.tool_calls for m in body.messages)


def prepare(body: ChatCompletionRequest) -> tuple[ChatCompletionRequest, ToolContext | None]:
    """The request with tool definitions and tool turns rendered as plain messages, and what the answer needs."""
    if body.tool_choice is not None and body.tool_choice != "none" and not body.tools:
        raise APIError(400, "tool_choice: only allowed when tools are given", "invalid_value", "tool_choice")
    if not body.tools and not _has_tool_turns(body):
        return body, None
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    choice: str | dict[str, Any] = (
        "auto"
        if body.tool_choice is None
        else body.tool_choice
        if isinstance(body.tool_choice, str)
        else body.tool_choice.model_dump()
    )
    raw = [m.model_dump(exclude_none=True, mode="json") for m in body.messages]
    try:
        rendered = fc.render_messages(raw, tools, choice)
    except BadInput as e:  # a named choice not among tools, a call's arguments not JSON
        raise APIError(400, str(e), "invalid_value", "tools") from None
    has_images = any(
        isinstance(c, ImageContent) for m in body.messages if isinstance(m.content, list) for c in m.content
    )
    spec = fc.ToolSpec(tools, choice, None if has_images else raw)
    new = body.model_copy(update={"messages": [ChatMessage.model_validate(m) for m in rendered]})
    return new, ToolContext(tools, choice, spec, body.parallel_tool_calls is not False)


def answer(ctx: ToolContext | None, c: Completion) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """(tool calls, content, parse error) for a finished completion."""
    s = split_thought(c.text)
    if c.tool_calls:  # the upstream parsed them itself
        calls = [{**tc, "id": tc.get("id") or fc.new_call_id()} for tc in c.tool_calls]
        return (calls if ctx is None or ctx.parallel else calls[:1]), None, None
    if ctx is None or not ctx.active:
        return [], s.answer, None
    p = fc.parse(s.answer, ctx.tools, ctx.choice)
    return (p.calls if ctx.parallel else p.calls[:1]), p.content, p.error


def body(ctx: ToolContext | None, meta: dict[str, Any], c: Completion) -> dict[str, Any]:
    """The `chat.completion` object, with `tool_calls` and finish_reason "tool_calls" when the model called."""
    out = completion_body(meta, c)
    if ctx is None and not c.tool_calls:
        return out
    if ctx is not None and ctx.active:
        out["medgemma"]["tool_preset"] = f"{fc.PRESET_NAME}@{fc.PRESET_VERSION}"
    calls, content, error = answer(ctx, c)
    choice = out["choices"][0]
    if calls:
        choice["message"]["content"] = None
        choice["message"]["tool_calls"] = calls
        choice["finish_reason"] = "tool_calls"
    else:
        choice["message"]["content"] = content
    if error:
        out["medgemma"]["tool_parse_error"] = error
    return out


class ToolStreamState(StreamState):
    """Streams reasoning as it comes and holds the answer until the end, when it is known to be calls or prose."""

    def __init__(self, meta: dict[str, Any], ctx: ToolContext) -> None:
        super().__init__(meta)
        self.ctx = ctx
        self.calls: list[dict[str, Any]] = []

    def _chunks(self, pieces: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        for channel, text in pieces:
            if channel != "answer":
                yield delta_chunk(self.meta, {"reasoning_content": text})

    def closing(self, c: Completion) -> Iterator[dict[str, Any]]:
        self.calls, content, _error = answer(self.ctx, c)
        for i, tc in enumerate(self.calls):
            head = {"index": i, "id": tc["id"], "type": "function", "function": {"name": tc["function"]["name"]}}
            head["function"]["arguments"] = ""
            yield delta_chunk(self.meta, {"tool_calls": [head]})
            yield delta_chunk(
                self.meta, {"tool_calls": [{"index": i, "function": {"arguments": tc["function"]["arguments"]}}]}
            )
        if not self.calls and content:
            yield delta_chunk(self.meta, {"content": content})

    def finish_reason(self, c: Completion) -> str:
        return "tool_calls" if self.calls else finish_reason(c)


def stream_state(ctx: ToolContext | None, meta: dict[str, Any]) -> StreamState:
    return ToolStreamState(meta, ctx) if ctx is not None and ctx.active else StreamState(meta)
