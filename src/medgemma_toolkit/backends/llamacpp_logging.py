"""llama.cpp's and libmtmd's log lines routed to Python logging, for the backend and the GGUF exporter alike."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("medgemma_toolkit.backends.llamacpp_backend")

_CALLBACK: Any = None


def llama_log_callback() -> Any:
    """llama.cpp/libmtmd log lines -> Python logging at DEBUG (visible with --debug), never raw stderr.

    llama-cpp-python's own callback maps ggml's current log levels wrongly and prints warnings to stderr, which
    would break the CLI's one-line errors and clutter answers. Kept in a global: ctypes must not free it.
    """
    global _CALLBACK
    if _CALLBACK is None:
        import llama_cpp

        @llama_cpp.llama_log_callback
        def cb(level: int, text: bytes, user_data: Any) -> None:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s", text.decode("utf-8", errors="replace").rstrip())

        _CALLBACK = cb
    return _CALLBACK


def route_llama_logs() -> None:
    """Send llama.cpp's log lines to `llama_log_callback` (call before loading or quantising a model)."""
    import ctypes

    import llama_cpp

    llama_cpp.llama_log_set(llama_log_callback(), ctypes.c_void_p(0))
