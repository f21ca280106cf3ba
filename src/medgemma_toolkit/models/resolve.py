"""Turn `--model` (variant name, hub id, directory, .gguf file, "demo" or nothing) into a path on disk.

Offline by default: only the disk is searched. A download happens only when the caller passes
`allow_download=True` (the CLI's `--allow-download`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import BadInput, ModelNotFound
from .demo import DEMO_NAME, demo_gguf_path
from .local import hf_cache_snapshot, is_checkpoint_dir, registered, search_path_dirs
from .offline import hub_offline
from .variants import BY_NAME, PREFERENCE, Variant, find_variant

Format = Literal["hf", "gguf"]


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as the user named it (or the variant chosen)
    path: Path  # checkpoint directory, or .gguf file
    format: Format
    variant: Variant | None
    source: Literal["directory", "registered", "hf-cache", "search-path", "download", "demo", "remote"]

    @property
    def is_demo(self) -> bool:
        return self.source == "demo"


def _from_path(spec: str, p: Path) -> ResolvedModel:
    if p.is_file() and p.suffix.lower() == ".gguf":
        return ResolvedModel(spec, p, "gguf", None, "directory")
    if p.is_dir():
        if not is_checkpoint_dir(p):
            raise BadInput(f"{spec}: directory has no config.json; not a Hugging Face checkpoint")
        return ResolvedModel(spec, p, "hf", _variant_of_dir(p), "directory")
    raise BadInput(f"{spec}: not a checkpoint directory or .gguf file")


def _variant_of_dir(p: Path) -> Variant | None:
    """Recognise a variant by directory name (e.g. a copied hub snapshot `medgemma-4b-it`)."""
    name = p.name.lower()
    if name in BY_NAME:
        return BY_NAME[name]
    if name.startswith("models--"):  # raw HF cache folder layout
        return find_variant(name[len("models--") :].replace("--", "/"))
    return None


def locate_variant(v: Variant) -> tuple[Path, str] | None:
    """Where variant `v` is on disk, if anywhere: registered dirs, the HF cache, $MEDGEMMA_MODEL_PATH."""
    reg = registered()
    if v.name in reg and Path(reg[v.name]).exists():
        return Path(reg[v.name]), "registered"
    snap = hf_cache_snapshot(v.hub_id)
    if snap is not None:
        return snap, "hf-cache"
    found = search_path_dirs(v.name, v.hub_id)
    if found is not None:
        return found, "search-path"
    return None


def missing_weights_message(name: str, hub_id: str) -> str:
    return (
        f"model {name!r} is not on this machine. MedGemma weights are gated: accept the Health AI Developer "
        f"Foundations terms on huggingface.co/{hub_id} once. Then, on a connected machine: "
        f"`hf auth login && hf download {hub_id}` and copy ~/.cache/huggingface/hub/"
        f"models--{hub_id.replace('/', '--')} into this machine's HF cache (or any folder, then "
        f"`medgemma models register {name} DIR`), or pass --model DIR, or add --allow-download here"
    )


def resolve_model(spec: str | None, allow_download: bool = False) -> ResolvedModel:
    """Find the model named by `spec` on disk; see the module docstring for the accepted forms."""
    hub_offline()
    if spec is None or spec == "":
        spec = os.environ.get("MEDGEMMA_MODEL") or None
    if spec is None:
        for name in PREFERENCE:
            hit = locate_variant(BY_NAME[name])
            if hit is not None:
                return ResolvedModel(name, hit[0], "hf", BY_NAME[name], hit[1])  # type: ignore[arg-type]
        spec = DEMO_NAME
    if spec == DEMO_NAME:
        return ResolvedModel(DEMO_NAME, demo_gguf_path(), "gguf", None, "demo")

    p = Path(spec).expanduser()
    if p.exists():
        return _from_path(spec, p)
    reg = registered()
    if spec in reg:
        r = _from_path(spec, Path(reg[spec]))
        return ResolvedModel(spec, r.path, r.format, r.variant or find_variant(spec), "registered")

    variant = find_variant(spec)
    if variant is not None:
        hit = locate_variant(variant)
        if hit is not None:
            return ResolvedModel(spec, hit[0], "hf", variant, hit[1])  # type: ignore[arg-type]
        hub_id = variant.hub_id
    elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        hub_id = spec
        snap = hf_cache_snapshot(hub_id)
        if snap is not None:
            return ResolvedModel(spec, snap, "hf", None, "hf-cache")
    else:
        raise ModelNotFound(
            f"unknown model {spec!r}: not a directory, a .gguf file, a registered name or a known variant "
            f"(see `medgemma models`)"
        )
    if allow_download:
        return ResolvedModel(spec, _download(hub_id), "hf", variant, "download")
    raise ModelNotFound(missing_weights_message(spec, hub_id))


def _download(hub_id: str) -> Path:
    """Explicit opt-in only: fetch a snapshot from the Hub (needs network and, for MedGemma, an accepted licence)."""
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import snapshot_download

    prev = hf_constants.HF_HUB_OFFLINE  # read once at import from $HF_HUB_OFFLINE, which we set to 1
    hf_constants.HF_HUB_OFFLINE = False
    try:
        return Path(snapshot_download(hub_id))
    except Exception as e:
        raise ModelNotFound(
            f"download of {hub_id} failed ({type(e).__name__}); check login, licence and network"
        ) from None
    finally:
        hf_constants.HF_HUB_OFFLINE = prev
