"""`medgemma serve`: an OpenAI-compatible, DICOM-aware HTTP server with a web page, secure by default.

FastAPI is imported only here (and by the `serve` command), so the rest of the toolkit works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

from .config import ServeConfig, is_loopback

__all__ = ["ServeConfig", "create_app", "is_loopback"]


def create_app(*args: Any, **kwargs: Any) -> FastAPI:  # lazy: importing FastAPI costs ~0.5 s
    from .app import create_app as _create

    return _create(*args, **kwargs)
