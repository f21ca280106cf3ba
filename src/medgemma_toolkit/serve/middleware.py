"""Request ids, Host and API-key checks, JSON content types, page headers and one access-log line per request,
as a plain ASGI middleware.

A keyless server answers only Host headers naming loopback (or the operator's allow-list), so a web page that
rebinds its own name to 127.0.0.1 cannot read it. (JSON-only bodies are the gate's rule, `serve/gate.py`: every POST
route takes `application/json` unless it declares another media type.) Every HTML
response carries the page's CSP. The log line carries the request id, method, route, status, byte counts and time:
never a query string, a body, or a path we do not serve (any of those could carry patient data). A client that
hangs up before its answer is logged and counted as 499, not as a server error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence

from .config import host_allowed
from .errors import error_body
from .metrics import Metrics

log = logging.getLogger("medgemma_toolkit.serve")

OPEN_PATHS = {"/", "/health", "/favicon.ico"}  # the page itself asks for the key; its API calls carry it
OPEN_PREFIXES = ("/static/",)
KNOWN_PATHS = frozenset({"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/favicon.ico"})  # + routes
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# The page loads nothing from elsewhere; previews arrive as data: URIs. Sent with every HTML response.
PAGE_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
CLIENT_CLOSED = 499  # nginx's code for "client closed the request"


def key_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def is_json(content_type: str) -> bool:
    """`application/json` (any parameters, e.g. charset) or a `+json` type."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _json_response(
    status: int, message: str, code: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[dict, dict]:
    body = json.dumps(error_body(status, message, code)).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
    }
    return start, {"type": "http.response.body", "body": body}


def route_label(path: str, known: frozenset[str] | set[str] = KNOWN_PATHS) -> str:
    if path in known:
        return path
    if path.startswith("/static/"):
        return "/static"
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return "<other>"


class ServeMiddleware:
    def __init__(
        self,
        app: Callable,
        api_key: str | None,
        metrics: Metrics,
        allow_hosts: tuple[str, ...] = (),
        known_paths: frozenset[str] | set[str] = KNOWN_PATHS,
    ) -> None:
        self.app = app
        self.known_paths = known_paths
        self.api_key = api_key
        self.metrics = metrics
        self.allow_hosts = allow_hosts

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if not self.api_key:
            return True
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and key_matches(token, self.api_key)  # exact: no trimmed variants

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[Message, Message] | None:
        """The response for a request refused before routing, or None."""
        path = scope.get("path", "")
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.api_key and not host_allowed(host, self.allow_hosts):
            return _json_response(
                403,
                "this keyless server answers only requests addressed to a loopback name "
                "(localhost, 127.0.0.1, [::1]); behind a reverse proxy, pass --allow-host NAME "
                "or set an API key",
                "host_not_allowed",
            )
        if not (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)) and not self._authorized(headers):
            return _json_response(
                401,
                "missing or invalid API key (send 'Authorization: Bearer KEY')",
                "invalid_api_key",
                [(b"www-authenticate", b"Bearer")],
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import ClientDisconnect

        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        rid_in = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = rid_in if _REQUEST_ID.match(rid_in) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        label = route_label(scope.get("path", ""), self.known_paths)
        info = {"status": 500, "out": 0, "in": 0}

        async def counting_receive() -> Message:
            msg = await receive()
            if msg.get("type") == "http.request":
                info["in"] += len(msg.get("body", b""))
            elif msg.get("type") == "http.disconnect":
                info["gone"] = 1
            return msg

        async def tagged_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                info["status"], info["started"] = msg["status"], 1
                extra = [(b"x-request-id", rid.encode())]
                present = {k.lower() for k, _ in msg.get("headers", [])}
                ctype = next((v for k, v in msg.get("headers", []) if k.lower() == b"content-type"), b"")
                if ctype.lower().startswith(b"text/html"):  # any HTML, /static/index.html included
                    extra += [(k.encode(), v.encode()) for k, v in PAGE_HEADERS.items() if k.encode() not in present]
                elif b"x-content-type-options" not in present:
                    extra.append((b"x-content-type-options", b"nosniff"))
                msg = {**msg, "headers": list(msg.get("headers", [])) + extra}
            elif msg["type"] == "http.response.body":
                info["out"] += len(msg.get("body", b""))
            await send(msg)

        try:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                for m in refusal:
                    await tagged_send(m)
                return
            try:
                await self.app(scope, counting_receive, tagged_send)
            except Exception as e:
                if isinstance(e, ClientDisconnect) or type(e).__name__ == "ClientDisconnected":
                    info["gone"] = 1  # the client hung up mid-body (starlette) or while we answered (uvicorn)
                    return
                log.error("request_id=%s unhandled %s", rid, type(e).__name__)
                if not info.get("started"):  # otherwise the response is under way and cannot change
                    for m in _json_response(500, "internal server error", "internal_error"):
                        await tagged_send(m)
        finally:
            secs = time.perf_counter() - t0
            status = scope["state"].get("status_override", info["status"])
            if info.get("gone") and not info.get("started"):
                status = CLIENT_CLOSED
            self.metrics.request_done(label, status, secs)
            log.info(
                "request_id=%s method=%s path=%s status=%s bytes_in=%d bytes_out=%d ms=%.1f",
                rid,
                scope.get("method", "?"),
                label,
                status,
                info["in"],
                info["out"],
                secs * 1000,
            )
