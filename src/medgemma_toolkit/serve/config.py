"""Operator settings for `medgemma serve`, with safe defaults (loopback only, no remote images, no prompt logs)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server enforces. Limits bound memory: at most `max_batch_size + max_queue` requests are
    admitted at once, each at most `max_body_bytes`, each image at most `max_pixels` before resizing."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None  # the `model` id clients send; default: the model's own name
    max_body_bytes: int = 32 * 1024**2
    max_pixels: int = 64_000_000
    max_images: int = 16  # per request, all messages together
    max_batch_size: int = 8
    max_queue: int = 64  # admitted requests waiting for a batch slot; beyond it: 429
    batch_window_ms: float = 25.0  # how long a forming batch waits for requests on their way
    request_timeout_s: float = 300.0
    max_tokens_limit: int = 8192  # the largest max_tokens a client may ask for
    allow_image_hosts: tuple[str, ...] = ()  # http(s) image URLs only from these hosts; empty = none
    image_root: Path | None = None  # local image paths only under this directory; None = never
    max_fetch_bytes: int = 32 * 1024**2
    log_prompts: bool = False  # opt-in: log the text of each prompt (never images or DICOM headers)
    # Host headers a keyless server answers besides loopback names (a reverse proxy's name); "*" = any. Without a
    # key, a page on any site could rebind its name to 127.0.0.1 and read the server: only loopback names pass.
    allow_hosts: tuple[str, ...] = ()
    max_content_parts: int = 1024  # messages plus content parts per request, counted before validation
    max_request_pixels: int = 256_000_000  # decoded image pixels per request, all images together
    decode_budget_s: float = 30.0  # CPU seconds one request may spend decoding images (checked between images)
    max_decoders: int = 2  # requests decoding images at once; the rest wait (admitted) for a turn
    body_timeout_s: float = 60.0  # a request body must arrive within this time (slow clients get 408)
    header_timeout_s: float = 10.0  # a connection must send complete request headers within this time
    max_body_readers: int = 256  # requests whose bodies are being read at once; more get 429
    extra_headers: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse settings that would expose the model unprotected or make no sense."""
        if not is_loopback(self.host) and not self.api_key:
            raise BadInput(
                f"refusing to bind to {self.host!r} without an API key: pass --api-key/--api-key-file, "
                "or bind to 127.0.0.1"
            )
        if self.api_key is not None and len(self.api_key) < 8:
            raise BadInput("the API key must be at least 8 characters")
        for name in (
            "max_body_bytes",
            "max_pixels",
            "max_images",
            "max_batch_size",
            "max_tokens_limit",
            "max_content_parts",
            "max_request_pixels",
            "decode_budget_s",
            "max_decoders",
            "body_timeout_s",
            "header_timeout_s",
            "max_body_readers",
        ):
            if getattr(self, name) <= 0:
                raise BadInput(f"{name.replace('_', '-')} must be positive")
        if self.max_queue < 0 or self.batch_window_ms < 0 or self.request_timeout_s <= 0:
            raise BadInput("max-queue and batch-window must be >= 0 and request-timeout > 0")
        if self.image_root is not None and not Path(self.image_root).is_dir():
            raise BadInput(f"--image-root {self.image_root}: not a directory")


def host_allowed(host_header: str, extra: tuple[str, ...] = ()) -> bool:
    """Whether a keyless server should answer a request whose Host header is `host_header`: loopback names and
    addresses (any port) and the operator's `extra` names ("name" or "name:port"; "*" = any)."""
    h = host_header.strip().lower()
    if not h:
        return True  # HTTP/1.0 clients may omit it; browsers always send one
    if "*" in extra:
        return True
    if h.startswith("["):
        name = h[1 : h.find("]")] if "]" in h else h[1:]
    else:
        name = h.rsplit(":", 1)[0] if h.count(":") == 1 else h
    name = name.rstrip(".")
    if is_loopback(name):
        return True
    allowed = {e.strip().lower().rstrip(".") for e in extra}
    return name in allowed or h in allowed


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; an empty host or 0.0.0.0/:: means every interface."""
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # any other host name may resolve to a public interface
