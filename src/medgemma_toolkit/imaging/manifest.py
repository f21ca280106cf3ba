"""What the model saw: one entry per image, in the order the model receives them.

Each entry is `{"source", "instance_number", "sop_instance_uid", "label", "patch"}`: the file or URL an image came
from, its DICOM InstanceNumber and SOPInstanceUID (null for non-DICOM images), the text part that follows it
("SLICE n" in a CT/MR prompt, else null), and a whole-slide patch's `[x, y, level]` (level-0 pixels; else null).
`preview --json`, evaluation records and the web page all show this list. Identifiers are the ones in the
user's own files; the manifest is shown to the user and written beside their results, never logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.messages import ImagePart, Part, Prompt, TextPart
from .order import dataset_key

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

FIELDS = ("source", "instance_number", "sop_instance_uid", "label", "patch")


def dicom_info(name: str, ds: Dataset) -> dict[str, Any]:
    """Manifest fields of one DICOM instance."""
    try:
        number: int | None = int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        number = None
    uid = str(ds.get("SOPInstanceUID", "") or "") or None
    # `acquired` orders images by date (`order.order_groups`); it is not a manifest field, so never shown or written
    return {
        "source": name,
        "instance_number": number,
        "sop_instance_uid": uid,
        "patch": None,
        "acquired": dataset_key(ds),
    }


def with_source(parts: list[Part], source: str) -> list[Part]:
    """Fill in `source` on images that do not name one (a plain 2D file knows only the path it was given)."""
    out: list[Part] = []
    for p in parts:
        if isinstance(p, ImagePart) and not (p.info or {}).get("source"):
            info = dict(p.info or {})
            info["source"] = source
            p = ImagePart(p.image, label=p.label, info=info)
        out.append(p)
    return out


def image_manifest(parts: list[Part]) -> list[dict[str, Any]]:
    """One entry per image among `parts`, in order; `label` is the text part right after an image, if any."""
    entries: list[dict[str, Any]] = []
    for k, p in enumerate(parts):
        if not isinstance(p, ImagePart):
            continue
        info = p.info or {}
        nxt = parts[k + 1] if k + 1 < len(parts) else None
        label = nxt.text if isinstance(nxt, TextPart) and nxt.text.startswith("SLICE ") else None
        entry = {f: info.get(f) for f in FIELDS}
        entry["label"] = label
        if info.get("page") is not None:  # a PDF page (imaging/pdf.py): its 1-based page number
            entry["page"] = info["page"]
        entries.append(entry)
    return entries


def prompt_manifest(prompt: Prompt) -> list[dict[str, Any]]:
    """The manifest of every image in a built prompt, across its messages, in order."""
    if prompt.is_completion:
        return [{f: None for f in FIELDS} for _ in prompt.images]
    return [e for m in prompt.messages for e in image_manifest(m.parts)]


def for_records(entries: list[dict[str, Any]], root: str | None = None) -> list[dict[str, Any]]:
    """The manifest as written into files that may be shared (evaluation records): `source` relative to `root`
    when under it, and SOPInstanceUIDs one-way hashed ("sha256:" + 16 hex digits), since a UID can identify a
    patient's study; hash your own UIDs the same way to match them."""
    import hashlib
    import os

    out = []
    for e in entries:
        e = dict(e)
        uid = e.get("sop_instance_uid")
        if uid:
            e["sop_instance_uid"] = "sha256:" + hashlib.sha256(str(uid).encode()).hexdigest()[:16]
        src = e.get("source")
        if src and root:
            try:
                rel = os.path.relpath(src, root)
                if not rel.startswith(".."):
                    e["source"] = rel
            except ValueError:  # another drive (Windows)
                pass
        out.append(e)
    return out
