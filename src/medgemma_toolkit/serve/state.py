"""`ServerState`: everything a route needs, on `app.state.server`, instead of closures over `create_app`'s locals.

Routes are plain module-level functions (`serve/routes/`), so they can be read, tested and added one file at a
time; they find the model, the operator's limits, the batcher and the gate here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from ..api import MedGemma
from .batcher import Batcher
from .config import ServeConfig
from .errors import APIError
from .gate import Gate
from .metrics import Metrics


def model_id(mg: MedGemma, config: ServeConfig) -> str:
    """The `model` id clients send: the operator's name, else the checkpoint folder's name, else the model's."""
    if config.served_model_name:
        return config.served_model_name
    name = mg.backend.info.name
    return Path(name).name if ("/" in name and Path(name).exists()) else name


@dataclass
class ServerState:
    mg: MedGemma
    config: ServeConfig
    batcher: Batcher
    metrics: Metrics
    gate: Gate
    served: str
    created: int = field(default_factory=lambda: int(time.time()))
    embedder: Any = None  # a `MedSigLIP` when started with --embed-model
    transcriber: Any = None  # a MedASR `Transcriber` when started with --asr-model
    # The ASR pipeline is not known to be thread-safe: one transcription at a time (decoder turns allow several).
    transcribe_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def names(self) -> set[str]:
        return {self.served, self.mg.backend.info.name}

    def check_model(self, name: str | None) -> None:
        """404 for a `model` this server does not serve (None: the client did not say)."""
        if name is not None and name not in self.names:
            raise APIError(
                404, f"model {name[:100]!r} not found; this server serves {self.served!r}", "model_not_found", "model"
            )


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    # `app.state.embedder` is how `serve()` and tests attach a MedSigLIP after the app is built.
    state.embedder = getattr(request.app.state, "embedder", None) or state.embedder
    state.transcriber = getattr(request.app.state, "transcriber", None) or state.transcriber
    return state
