"""A loopback OpenAI-compatible server that answers every chat request with one chosen text, for tests that
must see a model's exact words (a box list, a malformed answer) go through the real `openai` client, SSE parsing
and our upstream backend. It keeps the requests it received, so a test can check the prompt and image sent.

>>> with FixedUpstream('Final Answer: ```json[{"box_2d": [250, 100, 750, 600], "label": "right lung"}]```') as up:
...     run("medgemma", "localize", "--upstream", up.url, ...)
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any


class _Handler(http.server.BaseHTTPRequestHandler):
    upstream: FixedUpstream

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.rstrip("/").endswith("/models"):
            data = [{"id": self.upstream.model, "object": "model", "created": 0, "owned_by": "test"}]
            self._send(200, json.dumps({"object": "list", "data": data}).encode())
        else:
            self._send(404, b'{"error": {"message": "no such endpoint", "type": "invalid_request_error"}}')

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        up = self.upstream
        with up.lock:
            up.requests.append(body)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "no such endpoint", "type": "invalid_request_error"}}')
            return
        text, n = up.text, max(1, len(up.text.split()))
        base = {"id": "chatcmpl-fixed", "created": int(time.time()), "model": up.model}
        usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            self._send(
                200, json.dumps({**base, "object": "chat.completion", "choices": [choice], "usage": usage}).encode()
            )
            return
        half = len(text) // 2  # two deltas: the client must join them
        chunks = [
            {"index": 0, "delta": {"role": "assistant", "content": text[:half]}, "finish_reason": None},
            {"index": 0, "delta": {"content": text[half:]}, "finish_reason": None},
            {"index": 0, "delta": {}, "finish_reason": "stop"},
        ]
        events = [{**base, "object": "chat.completion.chunk", "choices": [c]} for c in chunks]
        events.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send(200, payload.encode(), "text/event-stream")


class FixedUpstream:
    """`with FixedUpstream(text) as up:` serves `up.url` (an OpenAI base URL) until the block ends."""

    def __init__(self, text: str, model: str = "fixed-medgemma") -> None:
        self.text = text
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"upstream": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FixedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
