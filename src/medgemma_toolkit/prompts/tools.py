"""Function calling for Gemma 3 / MedGemma by prompt, as Google documents it, and parsing of what models write back.

Gemma 3 has no tool tokens: the caller describes the functions in the prompt and detects a call by the shape of the
answer. Source of the format: "Function calling with Gemma", https://ai.google.dev/gemma/docs/capabilities/function-calling
(the instruction, then the function definitions as a JSON list, then the user's request; the model answers with a
Python-style list of calls `[name(arg=value, ...)]`) and Google's Gemma cookbook guides, which hand results back
wrapped in a ```tool_output fence. Preset `gemma3-functions@2` (the default) uses that page's instruction for
Python-style calls word for word, as the protocol; `@1` kept our own wording in the same layout and stays selectable
(`instruction(..., version="1")`). Tests pin the rendered text so a change here is a deliberate new version.

Everything here works on OpenAI-format dicts (`tools`, `tool_choice`, messages with `tool_calls` and `tool` roles), so
the server and the `ehr` agent share it.
"""

from __future__ import annotations

import ast
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInput
from ..jsondepth import loads_bounded

PRESET_NAME, PRESET_VERSION = "gemma3-functions", "2"
SOURCE_URL = "https://ai.google.dev/gemma/docs/capabilities/function-calling"

# Version 2: the guide's instruction for Python-style calls (its first prompt example; the example's line breaks,
# the wrapped first sentence joined without the wrap's indent). Version 1: our wording of the same request.
INSTRUCTIONS: dict[str, str] = {
    "1": (
        "You can call functions. To call one or more, answer with nothing but a Python-style list of calls in the "
        "form\n[function_name(parameter_name=value, other_parameter=value), other_function(parameter=value)]\n"
        "Do not write any other text when you call a function."
    ),
    "2": (
        "You have access to functions. If you decide to invoke any of the function(s),\n"
        "you MUST put it in the format of\n"
        "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n"
        "\n"
        "You SHOULD NOT include any other text in the response if you call a function"
    ),
}
INSTRUCTION = INSTRUCTIONS[PRESET_VERSION]
REQUIRED = "You must call at least one of the functions before you answer."
NAMED = "You must call the function {name}."
OUTPUT_FENCE = "tool_output"
MAX_CALL_CHARS = 8000  # a call (list) longer than this is not looked for
MAX_CANDIDATES = 64  # places in one answer tried as a call: parsing stays linear-ish in what models write


@dataclass(frozen=True)
class ToolSpec:
    """What a backend receives beside the rendered prompt: the client's tools, its choice, and (for upstream servers
    that take tools natively) the conversation in OpenAI format. `messages` is None when it cannot be sent as is
    (e.g. it carries images that only our imaging layer can convert)."""

    tools: list[dict[str, Any]]
    choice: str | dict[str, Any] = "auto"
    messages: list[dict[str, Any]] | None = None


@dataclass
class Parsed:
    """A model answer read as tool calls. `calls` empty: `content` is the answer; `error` says why text that looked
    like a call was not one (the raw text is then kept as `content`)."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    content: str | None = None
    error: str | None = None


def function_defs(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `function` objects of OpenAI `tools` entries (name, description, parameters)."""
    out = []
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadInput("tools: each tool needs {'type': 'function', 'function': {'name': ...}}")
        out.append({k: fn[k] for k in ("name", "description", "parameters") if fn.get(k) is not None})
    return out


def chosen_name(choice: str | dict[str, Any] | None) -> str | None:
    if isinstance(choice, dict):
        fn = choice.get("function")
        return str(fn.get("name")) if isinstance(fn, dict) and fn.get("name") else None
    return None


def offered(tools: list[dict[str, Any]], choice: str | dict[str, Any] | None) -> list[dict[str, Any]]:
    """The functions the model is shown: none for "none", only the named one for a named choice."""
    defs = function_defs(tools)
    if choice == "none":
        return []
    name = chosen_name(choice)
    if name is not None:
        defs = [d for d in defs if d["name"] == name]
        if not defs:
            raise BadInput(f"tool_choice names function {name!r}, which is not among tools")
    return defs


def instruction(
    tools: list[dict[str, Any]], choice: str | dict[str, Any] | None = "auto", version: str = PRESET_VERSION
) -> str:
    """The function-calling block placed before the user's first request; empty when no function is offered.
    `version`: the preset version whose instruction is used ("2", Google's documented one; "1", ours)."""
    if version not in INSTRUCTIONS:
        raise BadInput(f"unknown {PRESET_NAME} version {version!r} (known: {', '.join(sorted(INSTRUCTIONS))})")
    defs = offered(tools, choice)
    if not defs:
        return ""
    lines = [INSTRUCTIONS[version]]
    if choice == "required":
        lines.append(REQUIRED)
    elif (name := chosen_name(choice)) is not None:
        lines.append(NAMED.format(name=name))
    lines.append(json.dumps(defs, indent=2, ensure_ascii=False))
    return "\n".join(lines)


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """One call as the model is asked to write it: `name(a="x", n=2)` (values as JSON literals)."""
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())
    return f"{name}({args})"


def format_output(results: list[str]) -> str:
    """Tool results handed back to the model, one fenced block per result."""
    return "\n".join(f"```{OUTPUT_FENCE}\n{r}\n```" for r in results)


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = loads_bounded(raw, "messages: a tool call's arguments") if raw.strip() else {}
        except json.JSONDecodeError:
            raise BadInput("messages: a tool call's arguments are not valid JSON") from None
    if not isinstance(raw, dict):
        raise BadInput("messages: a tool call's arguments must be a JSON object")
    return raw


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")


def render_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, choice: str | dict[str, Any] | None = "auto"
) -> list[dict[str, Any]]:
    """OpenAI messages with tools to plain system/user/assistant messages a Gemma chat template can render.

    The function block joins the system text (Gemma folds system text into the first user turn, where Google's guide
    puts it); an assistant turn's `tool_calls` become the call list it would have written; consecutive `tool` messages
    become one user turn of fenced outputs. Content lists (images) of user messages pass through untouched.
    """
    block = instruction(tools or [], choice) if tools else ""
    out: list[dict[str, Any]] = []
    system_seen = False
    pending: list[str] = []

    def flush() -> None:
        if pending:
            out.append({"role": "user", "content": format_output(pending)})
            pending.clear()

    for m in messages:
        role = m.get("role")
        if role == "tool":
            pending.append(_text(m.get("content")))
            continue
        flush()
        if role in ("system", "developer"):
            text = _text(m.get("content"))
            if block and not system_seen:
                text = f"{text}\n\n{block}" if text else block
            system_seen = True
            out.append({"role": "system", "content": text})
        elif role == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = c.get("function") or {}
                calls.append(format_call(str(fn.get("name", "")), _arguments(fn.get("arguments") or {})))
            text = _text(m.get("content")).strip()
            listing = "[" + ", ".join(calls) + "]"
            out.append({"role": "assistant", "content": f"{text}\n{listing}" if text else listing})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content")})
    flush()
    if block and not system_seen:
        out.insert(0, {"role": "system", "content": block})
    return _merge_turns(out)


def _as_parts(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _merge_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adjacent turns of one role joined (tool outputs followed by a new user request are one user turn): Gemma's
    chat template requires user and model turns to alternate."""
    out: list[dict[str, Any]] = []
    for m in messages:
        prev = out[-1] if out else None
        if prev is None or prev["role"] != m["role"] or m["role"] == "system":
            out.append(dict(m))
        elif isinstance(prev.get("content"), str) and isinstance(m.get("content"), str):
            prev["content"] = f"{prev['content']}\n\n{m['content']}"
        else:
            prev["content"] = (
                _as_parts(prev.get("content")) + [{"type": "text", "text": "\n\n"}] + _as_parts(m.get("content"))
            )
    return out


# -- parsing ------------------------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*(tool_code|tool_call|python|json|py)?[ \t]*\n?(.*?)```", re.S)
_LOOKS_LIKE_CALL = re.compile(r"```[ \t]*(tool_code|tool_call)|^\s*[\[{]\s*[\"'{]?\s*\"?name\"?", re.S)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


MAX_ARG_DEPTH = 64  # nesting of one argument value (lists and objects)


class NotJSON(ValueError):
    """A value a model wrote that has no JSON form (a set, bytes, 1j, ..., 1e999, a non-string key)."""


def _jsonable(v: Any, depth: int = 0) -> bool:
    """Whether `v` is exactly a JSON value: only such values become arguments, so `arguments` is always valid JSON."""
    if depth > MAX_ARG_DEPTH:
        return False
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list):
        return all(_jsonable(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _jsonable(x, depth + 1) for k, x in v.items())
    return False  # sets, tuples, bytes, complex numbers, Ellipsis, ...


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    if not _jsonable(args):
        raise NotJSON(name)
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False, allow_nan=False)},
    }


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in ("true", "false", "null"):  # JSON spellings inside a call
        return {"true": True, "false": False, "null": None}[node.id]
    value = ast.literal_eval(node)
    if not _jsonable(value):
        raise NotJSON("argument")
    return value


def _python_calls(src: str, params: dict[str, list[str]]) -> list[dict[str, Any]] | None:
    """`[f(a=1), g()]` or `f(a=1)` with known names and literal values; None when `src` is not exactly that."""
    try:
        tree = ast.parse(src.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    if not nodes:
        return None
    calls = []
    for node in nodes:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in params):
            return None
        name = node.func.id
        try:
            args: dict[str, Any] = {}
            for i, a in enumerate(node.args):  # positional: the schema's parameter order
                if i >= len(params[name]):
                    return None
                args[params[name][i]] = _literal(a)
            for kw in node.keywords:
                if kw.arg is None:
                    return None
                args[kw.arg] = _literal(kw.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None  # NotJSON included: a value with no JSON form makes the text not a call
        calls.append(_call(name, args))
    return calls


def _json_calls(obj: Any, params: dict[str, list[str]]) -> list[dict[str, Any]] | None:
    """`{"name": ..., "parameters"|"arguments": {...}}`, a list of those, or OpenAI's `{"function": {...}}`."""
    items = obj if isinstance(obj, list) else [obj]
    calls = []
    for it in items:
        if isinstance(it, dict) and isinstance(it.get("function"), dict):
            it = it["function"]
        name = it.get("name") if isinstance(it, dict) else None
        if not isinstance(name, str) or name not in params:  # a name may be any JSON value, e.g. an object
            return None
        args = it.get("parameters", it.get("arguments", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except (json.JSONDecodeError, RecursionError):
                return None
        if not isinstance(args, dict) or not _jsonable(args):  # json.loads reads NaN, Infinity and 1e999
            return None
        calls.append(_call(name, args))
    return calls or None


def _matching(text: str, i: int) -> int | None:
    """Index of the bracket closing `text[i]`, skipping quoted strings; None when it does not close within
    MAX_CALL_CHARS. One linear pass, so a long answer full of brackets costs one scan per candidate, not one parse
    per closing bracket."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack: list[str] = []
    quote = ""
    j, end = i, min(len(text), i + MAX_CALL_CHARS)
    while j < end:
        ch = text[j]
        if quote:
            if ch == "\\":
                j += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in ")]}":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return j
        j += 1
    return None


def _scan(text: str, params: dict[str, list[str]]) -> list[dict[str, Any]] | None:
    """The first call list found anywhere in `text`: a JSON value, or a Python call of a known function at the start
    of a line (prose that mentions a function is not a call). At most MAX_CANDIDATES places are tried."""
    decoder = json.JSONDecoder()
    tried = 0
    for m in re.finditer(r"[\[{]", text):
        tried += 1  # each try costs one bounded scan, whether or not the bracket closes
        if tried > MAX_CANDIDATES:
            break
        if (close := _matching(text, m.start())) is None:
            continue
        try:
            obj = decoder.decode(text[m.start() : close + 1])
        except (json.JSONDecodeError, RecursionError):
            continue
        if (calls := _json_calls(obj, params)) is not None:
            return calls
    names = "|".join(re.escape(n) for n in sorted(params, key=len, reverse=True))
    for m in re.finditer(rf"^[ \t]*(\[\s*)?\b({names})\s*\(", text, re.M):
        tried += 1
        if tried > 2 * MAX_CANDIDATES:
            return None
        opener = m.start(1) if m.group(1) else m.end() - 1  # the list's "[" or the call's "("
        start = m.start(1) if m.group(1) else m.start(2)
        if (close := _matching(text, opener)) is not None:
            calls = _python_calls(text[start : close + 1], params)
            if calls is not None:
                return calls
    return None


def _complete_call_shape(text: str, params: dict[str, list[str]]) -> bool:
    """The answer opens with a call of an offered function whose brackets close (e.g. `[f(x={1, 2})]`): it was
    meant as a call, so its rejection is reported."""
    names = "|".join(re.escape(n) for n in params)
    m = re.match(rf"\s*(\[\s*)?({names})\s*\(", text) if names else None
    if m is None:
        return False
    return _matching(text, m.start(1) if m.group(1) else m.end() - 1) is not None


def parse(text: str, tools: list[dict[str, Any]], choice: str | dict[str, Any] | None = "auto") -> Parsed:
    """Read a model's answer as tool calls (only functions that were offered count) or as content.

    Accepted: a Python-style call list (Google's documented form) or JSON objects, bare or in a ``` fence
    (tool_code, json, python), with or without text around them. Text that looks like a call (a tool_code fence, a
    leading `{"name"`) but is not a valid one gives `error` and keeps the raw text as content, never an exception.
    """
    defs = offered(tools, choice)
    stripped = text.strip()
    if not defs:
        return Parsed(content=stripped)
    try:
        return _parse(stripped, defs)
    except Exception as e:
        return Parsed(content=stripped, error=f"the answer could not be read as a function call ({type(e).__name__})")


def _parse(stripped: str, defs: list[dict[str, Any]]) -> Parsed:
    params = {
        d["name"]: list(((d.get("parameters") or {}).get("properties") or {}).keys())
        if isinstance(d.get("parameters"), dict)
        else []
        for d in defs
    }
    candidates = [body for _lang, body in _FENCE.findall(stripped)] + [stripped]
    for cand in candidates:
        cand = cand.strip()
        if not cand:
            continue
        calls = _python_calls(cand, params)
        if calls is None:
            try:
                calls = _json_calls(json.loads(cand), params)
            except (json.JSONDecodeError, RecursionError):
                calls = None
        if calls is None:
            calls = _scan(cand, params)
        if calls is not None:
            return Parsed(calls=calls)
    if _LOOKS_LIKE_CALL.search(stripped) or _complete_call_shape(stripped, params):
        return Parsed(
            content=stripped,
            error="the answer looks like a function call but is not a valid call "
            "(arguments must be JSON values: strings, finite numbers, true/false/null, lists, objects)",
        )
    return Parsed(content=stripped)
