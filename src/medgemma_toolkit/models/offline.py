"""Offline by default, switched on where models are found and loaded — not at `import medgemma_toolkit`.

A library must not change its host program's environment just by being imported; but nothing the toolkit does may
phone home either. So `resolve_model` (every load goes through it) and the `medgemma` command call `hub_offline()`:
unless the user set `HF_HUB_OFFLINE` themselves, the Hugging Face libraries are told to stay offline, including a
`huggingface_hub` that was already imported (it reads the variable once, at import). Downloads are an explicit
opt-in (`allow_download=True`, `--allow-download`), which lifts this for that one call.
"""

from __future__ import annotations

import os
import sys


def hub_offline() -> None:
    """Keep the Hugging Face Hub offline and telemetry off, unless the user chose otherwise in the environment."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if "HF_HUB_OFFLINE" in os.environ:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
