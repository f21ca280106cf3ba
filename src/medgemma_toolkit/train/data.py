"""Training data from what users have: a folder of class sub-folders, CSV/JSONL rows, chat JSONL, or a local
Hugging Face dataset. Every source becomes a list of `Example`s; images stay as references (paths, or PIL images
from a dataset) and are read through the `imaging` layer at the model's input size only when a batch is built.

Bad rows are collected and reported together, each with its line number, before any model is loaded.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from PIL import Image

from ..errors import BadInput
from ..rowfile import read_rows, row_format
from .recipe import TASK_SPECS

ImageRef = Union[str, Image.Image]  # an image source path (2D file, DICOM, series folder...) or a decoded image
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom"}
MAX_REPORTED = 5


@dataclass(frozen=True)
class ChatImage:
    """An image inside a chat turn (wrapped, so a path is never mistaken for the turn's text)."""

    ref: ImageRef


@dataclass(frozen=True)
class Turn:
    """One chat turn; `parts` holds text strings and images in the user's order."""

    role: str
    parts: tuple[Union[str, ChatImage], ...]


@dataclass(frozen=True)
class Example:
    """One training item: a question (with images) and the answer to learn, or a whole chat whose last turn is the
    answer. `origin` ("file:line") names the row in messages; it never quotes file contents."""

    question: str
    answer: str
    images: tuple[ImageRef, ...] = ()
    system: str | None = None
    turns: tuple[Turn, ...] = ()  # chat data: every turn before the final assistant answer
    origin: str = ""


@dataclass
class Dataset:
    train: list[Example]
    val: list[Example]
    kind: str  # class-folder | rows | chat | hf-dataset
    classes: tuple[str, ...] = ()


class _Problems:
    def __init__(self, source: Path) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def raise_if_any(self) -> None:
        if self.items:
            shown = "; ".join(self.items[:MAX_REPORTED])
            more = f" (and {len(self.items) - MAX_REPORTED} more)" if len(self.items) > MAX_REPORTED else ""
            raise BadInput(f"{self.source}: {len(self.items)} bad row(s): {shown}{more}")


# -- sources ----------------------------------------------------------------------------------------------------
def load_class_folder(root: Path) -> tuple[list[Example], tuple[str, ...]]:
    """One sub-folder per class; every image file (or DICOM series folder) inside is one example."""
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if len(classes) < 2:
        raise BadInput(f"{root}: a class folder needs at least two sub-folders (one per class), found {len(classes)}")
    question = TASK_SPECS["classification"].default_question.format(classes=", ".join(classes))
    out: list[Example] = []
    for c in classes:
        items = sorted(p for p in (root / c).iterdir() if not p.name.startswith("."))
        items = [p for p in items if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES]
        if not items:
            raise BadInput(f"{root / c}: class folder has no images")
        out += [Example(question, c, (str(p),), origin=f"{root.name}/{c}/{p.name}") for p in items]
    return out, classes


def _image_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(";") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError("'image(s)' must be a path, a ';'-separated list of paths, or a JSON list of paths")


def _resolve_image(ref: str, base: Path) -> str:
    p = Path(ref).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.exists():
        raise ValueError(f"image not found: {ref}")
    return str(p)


def _row_example(row: dict[str, Any], base: Path, task: str, where: str) -> Example:
    """A question/answer row: image(s) + question + answer (`label` is accepted for the answer)."""
    images = [_resolve_image(r, base) for r in _image_list(row.get("images", row.get("image", row.get("image_path"))))]
    answer = row.get("answer", row.get("label"))
    if answer is None or str(answer).strip() == "":
        raise ValueError("missing 'answer'")
    question = str(row.get("question") or "").strip() or TASK_SPECS[task].default_question
    if "{classes}" in question:
        raise ValueError("missing 'question' (classification rows need one, or use a class folder)")
    if not question and not images:
        raise ValueError("missing 'question' (and no image)")
    system = row.get("system")
    return Example(question, str(answer).strip(), tuple(images), str(system) if system else None, origin=where)


def _chat_example(messages: Any, base: Path, where: str) -> Example:
    """HF `messages` format; images as {"type": "image", "image": "path"}. Loss is on the last assistant turn."""
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError("'messages' must be a list of at least a user and an assistant turn")
    turns: list[Turn] = []
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {role!r}")
        content = m.get("content", "")
        parts: list[Union[str, ChatImage]] = []
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for c in content:
                kind = c.get("type") if isinstance(c, dict) else None
                if kind == "text":
                    parts.append(str(c.get("text", "")))
                elif kind == "image":
                    ref = c.get("image", c.get("path", c.get("url")))
                    if not isinstance(ref, str):
                        raise ValueError("image parts need a file path in 'image' or 'path'")
                    parts.append(ChatImage(_resolve_image(ref, base)))
                else:
                    raise ValueError(f"unsupported content type {kind!r}")
        else:
            raise ValueError("'content' must be a string or a list of parts")
        turns.append(Turn(role, tuple(parts)))
    last = turns[-1]
    if last.role != "assistant" or not all(isinstance(p, str) for p in last.parts):
        raise ValueError("the last message must be an assistant turn with text only")
    answer = "".join(str(p) for p in last.parts).strip()
    if not answer:
        raise ValueError("the last assistant turn is empty")
    return Example("", answer, (), None, tuple(turns[:-1]), where)


def load_rows(path: Path, task: str) -> tuple[list[Example], str]:
    """CSV (header row) or JSONL rows; JSONL lines with `messages` are chat examples."""
    problems = _Problems(path)
    out: list[Example] = []
    kinds: set[str] = set()
    base, chat_allowed = path.parent, row_format(path) == "jsonl"
    for r in read_rows(path):
        try:
            if r.error is not None:
                raise ValueError(r.error)
            if not isinstance(r.row, dict):
                raise ValueError("not a JSON object")
            if chat_allowed and "messages" in r.row:
                out.append(_chat_example(r.row["messages"], base, r.where))
                kinds.add("chat")
            else:
                out.append(_row_example(r.row, base, task, r.where))
                kinds.add("rows")
        except ValueError as e:
            problems.add(f"line {r.line}", str(e))
    problems.raise_if_any()
    if not out:
        raise BadInput(f"{path}: no examples")
    return out, "chat" if kinds == {"chat"} else "rows"


def _is_hf_dataset_dir(p: Path) -> bool:
    return (p / "dataset_info.json").is_file() or (p / "state.json").is_file() or (p / "dataset_dict.json").is_file()


def load_hf_dataset(path: Path, task: str) -> tuple[list[Example], list[Example]]:
    """A dataset saved with `datasets.save_to_disk`: columns image/images + question + answer (or label), or messages.
    A DatasetDict's `validation` (or `test`) split becomes the validation set."""
    try:
        import datasets
    except ImportError:
        raise BadInput(
            "reading a Hugging Face dataset needs `datasets`: pip install 'medgemma-toolkit[train]'"
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # corrupt or foreign folder
        raise BadInput(f"{path}: cannot read as a Hugging Face dataset ({type(e).__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        train = ds["train"] if "train" in ds else ds[next(iter(ds))]
        val_split = next((ds[k] for k in ("validation", "val", "test") if k in ds), None)
    else:
        train, val_split = ds, None

    def convert(split: datasets.Dataset, name: str) -> list[Example]:
        problems = _Problems(path)
        out = []
        for i, row in enumerate(split):
            where = f"{path.name}[{name}]:{i}"
            try:
                if "messages" in row:
                    out.append(_chat_example(row["messages"], path, where))
                    continue
                ims = row.get("images", row.get("image"))
                ims = ims if isinstance(ims, list) else [ims] if ims is not None else []
                pil = [im.convert("RGB") if isinstance(im, Image.Image) else None for im in ims]
                refs = [p if p is not None else _resolve_image(str(r), path) for p, r in zip(pil, ims)]
                ex = _row_example({k: v for k, v in row.items() if k not in ("image", "images")}, path, task, where)
                out.append(Example(ex.question, ex.answer, tuple(refs), ex.system, origin=where))
            except ValueError as e:
                problems.add(f"row {i}", str(e))
        problems.raise_if_any()
        return out

    return convert(train, "train"), convert(val_split, "validation") if val_split is not None else []


# -- splitting --------------------------------------------------------------------------------------------------
def split_validation(
    examples: list[Example], fraction: float, seed: int, stratify: bool
) -> tuple[list[Example], list[Example]]:
    """Hold out `fraction` of the examples (per answer when `stratify`), reproducibly for a given seed."""
    if fraction <= 0:
        return list(examples), []
    if fraction >= 1:
        raise BadInput("--val-fraction must be below 1")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex.answer if stratify else ""].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(groups):
        idx = groups[key][:]
        rng.shuffle(idx)
        n = round(len(idx) * fraction)
        if n == 0 and len(idx) >= 2:
            n = 1
        held.update(idx[:n])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    val = [ex for i, ex in enumerate(examples) if i in held]
    if not train:
        raise BadInput("no training examples left after the validation split; lower --val-fraction")
    return train, val


def load_dataset(
    data: str | Path, task: str, val_data: str | Path | None = None, val_fraction: float = 0.1, seed: int = 42
) -> Dataset:
    """Read `data` (and the optional separate validation file) into train/validation examples."""
    path = Path(data).expanduser()
    if not path.exists():
        raise BadInput(f"{data}: not found")
    classes: tuple[str, ...] = ()
    val: list[Example] = []
    if path.is_dir() and _is_hf_dataset_dir(path):
        examples, val = load_hf_dataset(path, task)
        kind = "hf-dataset"
    elif path.is_dir():
        examples, classes = load_class_folder(path)
        kind = "class-folder"
    elif path.suffix.lower() in (".csv", ".jsonl", ".json", ".ndjson"):
        examples, kind = load_rows(path, task)
    else:
        raise BadInput(f"{data}: expected a class folder, a .csv/.jsonl file or a saved Hugging Face dataset")
    if val_data is not None:
        val = load_dataset(val_data, task, None, 0.0, seed).train
        train = examples
    elif val:
        train = examples
    else:
        train, val = split_validation(
            examples, val_fraction, seed, stratify=(task == "classification" or bool(classes))
        )
    return Dataset(train, val, kind, classes)
