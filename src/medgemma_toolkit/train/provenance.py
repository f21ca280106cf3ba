"""What produced a run: resolved settings, model, a hash of the data (text and image bytes), package versions.

Written beside the adapter so a result can be traced and `--resume` can refuse data that changed under it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..provenance import package_versions
from .checkpoints import write_atomic
from .data import Example

PROVENANCE_NAME = "provenance.json"


def _hash_ref(h: hashlib._Hash, ref: Any) -> None:
    if isinstance(ref, Image.Image):
        h.update(ref.tobytes())
        return
    p = Path(ref)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)


def data_hash(examples: list[Example]) -> str:
    """SHA-256 over every example's text and the bytes of every image it references (order matters)."""
    h = hashlib.sha256()
    for ex in examples:
        text = {
            "q": ex.question,
            "a": ex.answer,
            "s": ex.system,
            "t": [[t.role, [p if isinstance(p, str) else "<img>" for p in t.parts]] for t in ex.turns],
        }
        h.update(json.dumps(text, sort_keys=True).encode())
        for ref in list(ex.images) + [p.ref for t in ex.turns for p in t.parts if not isinstance(p, str)]:
            _hash_ref(h, ref)
    return h.hexdigest()


def _plain(v: Any) -> Any:
    if is_dataclass(v) and not isinstance(v, type):
        return {k: _plain(x) for k, x in asdict(v).items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


def write_provenance(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the run's provenance file (created on first call) and return the whole record."""
    path = run_dir / PROVENANCE_NAME
    record = read_provenance(run_dir) or {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
    }
    record.update({k: _plain(v) for k, v in fields.items()})
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True))
    return record


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / PROVENANCE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
