"""A TEST DOUBLE of an OpenAI-compatible model server (vLLM, llama-server) on loopback, whose answers are scripted.

Tests that must see a model's exact words go through the real `openai` client, SSE parsing and our upstream
backend with it: a box list for `localize`, a tool call then an answer for `ehr`, a Markdown answer with HTML in it
for the web page. Every request body is kept (`.requests`) so a test can check the prompt and images sent.

The reply is one text for every request, a list (the n-th request gets the n-th text, the last repeats), or a
function of the request body. Streamed answers come in `piece`-character deltas (the client must join them), with
a usage chunk last, as vLLM sends it when asked.

>>> with ScriptedUpstream('Final Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "right lung"}]```') as up:
...     run("medgemma", "localize", "--upstream", up.url, ...)
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Union

Reply = Union[str, Sequence[str], Callable[[dict[str, Any]], str]]
NOT_FOUND = {"error": {"message": "no such endpoint", "type": "invalid_request_error"}}
NO_TOOLS = {"error": {"message": "tools are not enabled on this server", "type": "invalid_request_error"}}


class ScriptedUpstream:
    """`with ScriptedUpstream(reply) as up:` serves `up.url` (an OpenAI base URL, ending in /v1) until the block ends.

    `card`: extra fields of the model's `/v1/models` entry (e.g. our server's `medgemma` block); `delay`: seconds
    between streamed deltas, or a function of the request body giving them (for Stop/cancel tests); `tools=False`: a request with `tools` is a 400, as from a
    server without a tool parser."""

    def __init__(
        self,
        reply: Reply,
        *,
        model: str = "scripted",
        card: dict[str, Any] | None = None,
        piece: int = 0,
        delay: float | Callable[[dict[str, Any]], float] = 0.0,
        tools: bool = True,
        prompt_tokens: int = 11,
    ) -> None:
        self.reply, self.model, self.card = reply, model, card or {}
        self.piece, self.delay, self.tools, self.prompt_tokens = piece, delay, tools, prompt_tokens
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"upstream": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def text_for(self, body: dict[str, Any], n: int) -> str:
        """The scripted answer to the n-th request (1-based)."""
        if isinstance(self.reply, str):
            return self.reply
        if callable(self.reply):
            return self.reply(body)
        return self.reply[min(n, len(self.reply)) - 1]

    def pieces(self, text: str) -> list[str]:
        size = self.piece or max(1, (len(text) + 1) // 2)  # default: two deltas
        return [text[k : k + size] for k in range(0, len(text), size)] or [""]

    def __enter__(self) -> ScriptedUpstream:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    upstream: ScriptedUpstream

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        up = self.upstream
        if not self.path.rstrip("/").endswith("/models"):
            self._send(404, NOT_FOUND)
            return
        entry = {"id": up.model, "object": "model", "created": 0, "owned_by": "test", **up.card}
        self._send(200, {"object": "list", "data": [entry]})

    def do_POST(self) -> None:
        up = self.upstream
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, NOT_FOUND)
            return
        with up.lock:
            up.requests.append(body)
            n = len(up.requests)
        if "tools" in body and not up.tools:
            self._send(400, NO_TOOLS)
            return
        text = up.text_for(body, n)
        pieces = up.pieces(text)
        usage = {
            "prompt_tokens": up.prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": up.prompt_tokens + len(pieces),
        }
        base = {"id": "chatcmpl-scripted", "created": int(time.time()), "model": up.model}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            self._send(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        head = {**base, "object": "chat.completion.chunk"}
        deltas = [{"role": "assistant", "content": pieces[0]}, *({"content": p} for p in pieces[1:])]
        events = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        events.append({**head, "choices": [], "usage": usage})
        delay = up.delay(body) if callable(up.delay) else up.delay
        try:
            for k, e in enumerate(events):
                if k and k < len(deltas) and delay:
                    time.sleep(delay)
                self.wfile.write(b"data: " + json.dumps(e).encode() + b"\n\n")
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):  # the client cancelled (Stop)
            pass
