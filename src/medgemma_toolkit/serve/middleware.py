"""Request ids, API-key check and one access-log line per request, as a plain ASGI middleware.

The log line carries the request id, method, route, status, byte counts and time: never a query string, a body,
or a path we do not serve (any of those could carry patient data).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from .errors import error_body
from .metrics import Metrics

log = logging.getLogger("medgemma_toolkit.serve")

OPEN_PATHS = {"/", "/health", "/favicon.ico"}  # the page itself asks for the key; its API calls carry it
OPEN_PREFIXES = ("/static/",)
KNOWN_PATHS = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/medgemma/preview",
               "/favicon.ico"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def key_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def route_label(path: str) -> str:
    if path in KNOWN_PATHS:
        return path
    if path.startswith("/static/"):
        return "/static"
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return "<other>"


class ServeMiddleware:
    def __init__(self, app: Callable, api_key: str | None, metrics: Metrics) -> None:
        self.app = app
        self.api_key = api_key
        self.metrics = metrics

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if not self.api_key:
            return True
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and key_matches(token.strip(), self.api_key)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        rid_in = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = rid_in if _REQUEST_ID.match(rid_in) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        path = scope.get("path", "")
        label = route_label(path)
        info = {"status": 500, "out": 0, "in": 0}

        async def counting_receive():
            msg = await receive()
            if msg.get("type") == "http.request":
                info["in"] += len(msg.get("body", b""))
            return msg

        async def tagged_send(msg):
            if msg["type"] == "http.response.start":
                info["status"], info["started"] = msg["status"], 1
                msg = {**msg, "headers": list(msg.get("headers", [])) + [(b"x-request-id", rid.encode())]}
            elif msg["type"] == "http.response.body":
                info["out"] += len(msg.get("body", b""))
            await send(msg)

        try:
            if not (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)) and not self._authorized(headers):
                body = json.dumps(error_body(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                                             "invalid_api_key")).encode()
                await tagged_send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer")]})
                await tagged_send({"type": "http.response.body", "body": body})
                return
            try:
                await self.app(scope, counting_receive, tagged_send)
            except Exception as e:  # noqa: BLE001 - swallowed here so no traceback (with input-derived text) is logged
                log.error("request_id=%s unhandled %s", rid, type(e).__name__)
                if not info.get("started"):  # otherwise the response is under way and cannot change
                    body = json.dumps(error_body(500, "internal server error", "internal_error")).encode()
                    await tagged_send({"type": "http.response.start", "status": 500, "headers": [
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                    await tagged_send({"type": "http.response.body", "body": body})
        finally:
            secs = time.perf_counter() - t0
            status = scope["state"].get("status_override", info["status"])
            self.metrics.request_done(label, status, secs)
            log.info("request_id=%s method=%s path=%s status=%s bytes_in=%d bytes_out=%d ms=%.1f",
                     rid, scope.get("method", "?"), label, status, info["in"], info["out"], secs * 1000)
