"""What produced a result: model identity, package versions, machine. Written beside every run's records."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..provenance import now_utc, package_versions

__all__ = ["model_identity", "now_utc", "package_versions"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_identity(path: str | Path) -> dict[str, Any]:
    """Config hash (what the model is) and a weights fingerprint (which trained numbers it holds).

    Two fine-tunes share a config, so the cache keys on the fingerprint too: weight file names, sizes and
    modification times (cheap), plus the first MiB of a GGUF file.
    """
    p = Path(path)
    ident: dict[str, Any] = {"path": str(p)}
    if p.is_dir():
        cfg = p / "config.json"
        ident["config_sha256"] = _sha256_bytes(cfg.read_bytes()) if cfg.is_file() else None
        weights = sorted(f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES)
        stamp = "|".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in weights)
    elif p.is_file():
        with open(p, "rb") as f:
            head = f.read(1 << 20)
        ident["config_sha256"] = _sha256_bytes(head)  # a GGUF's header holds its configuration
        stamp = f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
    else:
        ident["config_sha256"] = None
        stamp = str(p)
    ident["fingerprint"] = _sha256_bytes(f"{ident['config_sha256']}|{stamp}".encode())[:20]
    return ident
