"""What a dataset row becomes: an `EvalItem`, and the one or more prompts (`Unit`s) asked about it.

Most items are one prompt. Chest X-ray classification follows MedGemma's protocol of one yes/no question per
condition, so one image becomes one `Unit` per condition with a known label.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class EvalItem:
    id: str
    location: str  # "file:line" (or "file[key]") for error messages
    question: str = ""
    options: dict[str, str] = field(default_factory=dict)  # letter -> option text, in order
    answer: str | None = None  # gold letter (MCQ) or gold text (VQA answer, reference report)
    images: list[str] = field(default_factory=list)  # absolute paths
    labels: dict[str, bool] = field(default_factory=dict)  # condition -> present (CXR classification)
    answer_type: str | None = None  # "closed" / "open" (VQA)
    options_in_question: bool = False  # the release's question text already lists the options (MedXpertQA)


@dataclass
class Unit:
    """One prompt to generate for: an item, or an (item, condition) pair."""

    key: str
    item: EvalItem
    text: str
    gold: str | None
    condition: str | None = None
    prompt_hash: str = ""

    @property
    def sort_length(self) -> tuple[int, int]:
        return (len(self.item.images), len(self.text))


def format_options(options: dict[str, str]) -> str:
    return "\n".join(f"{k}. {v}" for k, v in options.items())


def _file_digest(path: str, cache: dict[str, str]) -> str:
    if path not in cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        cache[path] = h.hexdigest()
    return cache[path]


def prompt_hash(text: str, images: list[str], digests: dict[str, str]) -> str:
    """Identity of exactly what the model is shown: the text and the bytes of every image."""
    h = hashlib.sha256(text.encode())
    for p in images:
        h.update(b"\0" + _file_digest(p, digests).encode())
    return h.hexdigest()[:16]


def dataset_digest(path: Path) -> str:
    """sha256 of the data file (or of every file's name and bytes in a dataset directory)."""
    h = hashlib.sha256()
    if str(path).startswith("hf:"):  # a dataset in the local HF cache: named, not hashed (its files are datasets')
        h.update(str(path).encode())
        return h.hexdigest()
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
