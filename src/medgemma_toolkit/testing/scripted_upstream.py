"""A TEST DOUBLE of an OpenAI-compatible model server whose answers are a script: the n-th chat request gets the
n-th text (the last one repeats). For multi-turn agent tests, where one scripted checkpoint (one fixed answer for
every prompt) cannot write a call first and an answer after. It ignores `tools` (like a server without a tool
parser), so callers parse the text themselves; every request body is kept for assertions."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any


class ScriptedUpstream:
    """`with ScriptedUpstream(["[list_conditions()]", "Answer [Condition/1]"]) as up: up.url` (an OpenAI base URL)."""

    def __init__(self, replies: list[str], model: str = "scripted") -> None:
        self.replies, self.model = list(replies), model
        self.bodies: list[dict[str, Any]] = []
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._send(200, json.dumps({"object": "list", "data": [{"id": double.model, "object": "model"}]}))

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double.bodies.append(body)
                text = double.replies[min(len(double.bodies), len(double.replies)) - 1]
                base = {"id": "scripted", "object": "chat.completion.chunk", "created": 0, "model": double.model}
                events = [
                    {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]},
                    {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                ]
                out = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self._send(200, out, "text/event-stream")

            def _send(self, status: int, text: str, ctype: str = "application/json") -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedUpstream:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
