"""Where checkpoints live on this machine: user-registered directories, the local Hugging Face cache, and
directories listed in $MEDGEMMA_MODEL_PATH. Nothing here touches the network."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BadInput


def config_home() -> Path:
    return Path(os.environ.get("MEDGEMMA_HOME") or Path.home() / ".config" / "medgemma")


def _registry_file() -> Path:
    return config_home() / "models.json"


def registered() -> dict[str, str]:
    """Names the user registered with `medgemma models register NAME DIR`."""
    f = _registry_file()
    if not f.exists():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        raise BadInput(f"{f}: model registry is not valid JSON; fix or delete it") from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def register(name: str, directory: str) -> Path:
    path = Path(directory).expanduser().resolve()
    if not is_checkpoint_dir(path) and not path.suffix == ".gguf":
        raise BadInput(f"{directory}: not a checkpoint directory (no config.json) or .gguf file")
    entries = registered()
    entries[name] = str(path)
    f = _registry_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=2, sort_keys=True))
    tmp.replace(f)  # atomic: a crash never leaves a half-written registry
    return path


def is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def hf_cache_snapshot(hub_id: str) -> Path | None:
    """The local snapshot of `hub_id` in the Hugging Face cache, if complete enough to load; never downloads."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        p = Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        return None
    has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
    return p if is_checkpoint_dir(p) and has_weights else None


def search_path_dirs(name: str, hub_id: str | None) -> Path | None:
    """A directory named like the variant (or the hub id's last part) under any $MEDGEMMA_MODEL_PATH entry."""
    for root in filter(None, os.environ.get("MEDGEMMA_MODEL_PATH", "").split(os.pathsep)):
        for candidate in {name, (hub_id or "").split("/")[-1]} - {""}:
            p = Path(root) / candidate
            if is_checkpoint_dir(p):
                return p
    return None
