"""Readers for the public releases' own file formats, plus one generic JSONL/CSV format for users' data.

Rows come from `load_rows` (JSONL, JSON list or dict, CSV, MMLU's header-less CSVs, or a Hugging Face dataset
saved on disk / in the local datasets cache) with a location for error messages; a per-format converter turns each
row into an `EvalItem`. A row in none of the known shapes is a `RowError` naming its file and line.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .items import LETTERS, EvalItem
from .spec import TaskSpec


class RowError(BadInput):
    """One malformed row (message starts with its file:line)."""


@dataclass
class ReadContext:
    path: Path  # the data file (or dataset directory)
    image_roots: list[Path]  # where relative image paths are looked up, in order
    from_hf: bool = False  # Hugging Face datasets use 0-based answer indices where the JSON releases use 1-based


Row = dict[str, Any]
# The MMLU subjects MedGemma's report groups as medical; in a folder of MMLU CSVs only these files are read.
MMLU_MED_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                     "professional_medicine")
Converter = Callable[[Row, str, ReadContext], "EvalItem | None"]  # None = row deliberately not used (e.g. non-English)


# -- rows ---------------------------------------------------------------------------------------------------------
def load_rows(path: Path, reader: str) -> Iterator[tuple[str, Row]]:
    """(location, row) pairs from a data file, a folder of MMLU CSVs, or `hf:NAME[:SPLIT]` / a saved dataset."""
    name = path.name
    if str(path).startswith("hf:") or (path.is_dir() and (path / "dataset_info.json").exists()
                                         or path.is_dir() and (path / "state.json").exists()):
        yield from _hf_rows(str(path))
        return
    if path.is_dir():
        files = sorted(f for f in path.glob("*.csv") if f.stem.startswith(MMLU_MED_SUBJECTS)) if reader == "mmlu" else []
        if not files:
            raise BadInput(f"{path}: is a directory; give the data file")
        for f in files:
            yield from load_rows(f, reader)
        return
    if not path.is_file():
        raise BadInput(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv" and reader == "mmlu" and not _has_header(path):
        with open(path, newline="", encoding="utf-8") as f:
            for i, cols in enumerate(csv.reader(f), 1):
                if len(cols) < 3:
                    raise RowError(f"{name}:{i}: expected question, options..., answer columns")
                subject = path.stem.removesuffix("_test").removesuffix("_dev").removesuffix("_val")
                yield f"{name}:{i}", {"question": cols[0], "options": cols[1:-1], "answer": cols[-1].strip(),
                                      "subject": subject}
        return
    if suffix == ".parquet":  # a file from a Hugging Face dataset repository
        import pandas as pd

        for i, row in enumerate(pd.read_parquet(path).to_dict(orient="records")):
            yield f"{name}[{i}]", {**_plain(row), "_hf": True}
        return
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            rdr = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for i, row in enumerate(rdr, 2):  # line 1 is the header
                yield f"{name}:{i}", {k.strip(): v for k, v in row.items() if k is not None}
        return
    text = path.read_text(encoding="utf-8")
    data: Any = None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # MedMCQA's .json files are JSON lines: read them as such below
                raise BadInput(f"{name}:{e.lineno}: not valid JSON ({e.msg})") from None
            suffix = ".jsonl"
    if suffix == ".json":
        if isinstance(data, list):
            for i, row in enumerate(data):
                yield f"{name}[{i}]", row
        elif isinstance(data, dict):  # PubMedQA: {PMID: {...}}
            for key, row in data.items():
                if isinstance(row, dict):
                    row = {"id": key, **row}
                yield f"{name}[{key}]", row
        else:
            raise BadInput(f"{name}: expected a JSON list or object of rows")
        return
    for i, line in enumerate(text.splitlines(), 1):  # JSONL (any other suffix)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            row = RowError(f"{name}:{i}: not valid JSON ({e.msg})")  # raised by the caller, which may skip it
        yield f"{name}:{i}", row


def _plain(row: Row) -> Row:
    """numpy arrays and scalars from parquet -> lists and Python values."""
    out = {}
    for k, v in row.items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        out[k] = v
    return out


def _has_header(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8") as f:
        first = next(csv.reader(f), [])
    return bool(first) and first[0].strip().lower() in ("question", "id")


def _hf_rows(spec: str) -> Iterator[tuple[str, Row]]:
    """A dataset saved with `save_to_disk`, or `hf:NAME[:SPLIT]` from the local datasets cache (never downloaded)."""
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise BadInput("reading Hugging Face datasets needs the `datasets` package") from None
    try:
        if spec.startswith("hf:"):
            name, _, split = spec[3:].partition(":")
            ds = datasets.load_dataset(name, split=split or "test")
        else:
            ds = datasets.load_from_disk(spec)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["test"] if "test" in ds else ds[next(iter(ds))]
    except Exception as e:  # offline cache miss, bad path: one line
        raise BadInput(f"{spec}: cannot open dataset offline ({type(e).__name__})") from None
    label = spec.rsplit("/", 1)[-1]
    for i, row in enumerate(ds):
        yield f"{label}[{i}]", {**row, "_hf": True}


# -- helpers ------------------------------------------------------------------------------------------------------
def _req(row: Row, loc: str, *keys: str) -> Any:
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    raise RowError(f"{loc}: missing field {' or '.join(repr(k) for k in keys)}")


def _options(raw: Any, loc: str) -> dict[str, str]:
    """Options given as {"A": ...}, a list, or a JSON string of either."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = [o.strip() for o in raw.split("||")] if "||" in raw else None
    if isinstance(raw, dict):
        opts = {str(k).strip().upper(): str(v) for k, v in raw.items() if v not in (None, "")}
        if not all(len(k) == 1 and k in LETTERS for k in opts):
            opts = {LETTERS[i]: v for i, v in enumerate(opts.values())}
    elif isinstance(raw, list):
        opts = {LETTERS[i]: str(v) for i, v in enumerate(raw) if v not in (None, "")}
    else:
        raise RowError(f"{loc}: 'options' must be a mapping or a list")
    if len(opts) < 2:
        raise RowError(f"{loc}: fewer than two options")
    return opts


def _gold_letter(answer: Any, options: dict[str, str], loc: str, zero_based: bool = True) -> str:
    """Gold given as a letter, an index, or the option's text."""
    if isinstance(answer, bool):
        raise RowError(f"{loc}: answer {answer!r} is not an option")
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
        idx = int(answer) - (0 if zero_based else 1)
        if 0 <= idx < len(options):
            return list(options)[idx]
        raise RowError(f"{loc}: answer index {answer} is out of range")
    a = str(answer).strip()
    if a.upper() in options:
        return a.upper()
    for k, v in options.items():
        if v.strip().lower() == a.lower():
            return k
    raise RowError(f"{loc}: answer {a[:40]!r} is neither an option letter nor an option's text")


def _images(row: Row, loc: str, ctx: ReadContext, *keys: str) -> list[str]:
    raw: Any = None
    for k in keys:
        if row.get(k) not in (None, ""):
            raw = row[k]
            break
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(";") if s.strip()]
    out = []
    for p in raw:
        if not isinstance(p, str):
            raise RowError(f"{loc}: image paths must be strings")
        candidates = [Path(p)] if Path(p).is_absolute() else [root / p for root in ctx.image_roots]
        full = next((c for c in candidates if c.exists()), None)
        if full is None:
            raise RowError(f"{loc}: image file not found: {p}")
        out.append(str(full))
    return out


def _row_id(row: Row, loc: str, *keys: str) -> str:
    for k in keys:
        if row.get(k) not in (None, ""):
            return str(row[k])
    return loc.replace(":", "-")


# -- converters ---------------------------------------------------------------------------------------------------
def generic(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """The generic format: id, question, options (mapping / list / JSON string), answer, image(s)."""
    if not isinstance(row, dict):
        raise RowError(f"{loc}: expected an object per row")
    options = _options(row["options"], loc) if row.get("options") not in (None, "", [], {}) else {}
    answer = row.get("answer", row.get("answer_idx", row.get("label")))
    gold = _gold_letter(answer, options, loc) if options and answer not in (None, "") else (
        None if answer in (None, "") else str(answer))
    return EvalItem(
        id=_row_id(row, loc, "id", "qid"),
        location=loc,
        question=str(_req(row, loc, "question")),
        options=options,
        answer=gold,
        images=_images(row, loc, ctx, "images", "image", "image_path"),
        answer_type=(str(row["answer_type"]).lower() if row.get("answer_type") else None),
    )


def medqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    if "answer_idx" not in row:
        return generic(row, loc, ctx)
    opts = _options(_req(row, loc, "options"), loc)
    return EvalItem(_row_id(row, loc, "id"), loc, str(_req(row, loc, "question")), opts,
                    _gold_letter(row["answer_idx"], opts, loc))


def medmcqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    if "cop" not in row:
        return generic(row, loc, ctx)
    opts = _options([_req(row, loc, k) for k in ("opa", "opb", "opc", "opd")], loc)
    # The GitHub release numbers the correct option 1-4; the Hugging Face copy 0-3.
    return EvalItem(_row_id(row, loc, "id"), loc, str(_req(row, loc, "question")), opts,
                    _gold_letter(int(row["cop"]), opts, loc, zero_based=bool(row.get("_hf"))))


PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


def pubmedqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    if "final_decision" not in row:
        return generic(row, loc, ctx)
    contexts = row.get("CONTEXTS") or (row.get("context") or {}).get("contexts") or []
    question = str(_req(row, loc, "QUESTION", "question"))
    text = ("Context: " + " ".join(contexts) + "\n" if contexts else "") + f"Question: {question}"
    return EvalItem(_row_id(row, loc, "id", "pubid"), loc, text, dict(PUBMEDQA_OPTIONS),
                    _gold_letter(str(row["final_decision"]), PUBMEDQA_OPTIONS, loc))


def mmlu(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    if "choices" in row:  # Hugging Face cais/mmlu
        row = {**row, "options": row["choices"]}
    item = generic(row, loc, ctx)
    if item.options and row.get("subject"):
        item.id = item.id if row.get("id") else f"{row['subject']}-{loc.rsplit(':', 1)[-1].strip('[]')}"
    return item


def medxpertqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    if "label" in row and "options" in row:
        opts = _options(row["options"], loc)
        return EvalItem(_row_id(row, loc, "id"), loc, str(_req(row, loc, "question")), opts,
                        _gold_letter(row["label"], opts, loc), _images(row, loc, ctx, "images", "image"))
    return generic(row, loc, ctx)


def afrimedqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem | None:
    if "answer_options" not in row:
        return generic(row, loc, ctx)
    if str(row.get("question_type", "mcq")).strip().lower() != "mcq":
        return None  # short-answer and consumer questions are not multiple choice
    raw = _options(row["answer_options"], loc)  # {"option1": ...} arrives re-lettered A, B, ...
    correct = str(_req(row, loc, "correct_answer")).strip()
    m = re.fullmatch(r"option(\d+)", correct, re.I)
    gold = _gold_letter(int(m.group(1)), raw, loc, zero_based=False) if m else _gold_letter(correct, raw, loc)
    return EvalItem(_row_id(row, loc, "sample_id", "id"), loc, str(_req(row, loc, "question")), raw, gold)


def _vqa(row: Row, loc: str, ctx: ReadContext, image_key: str) -> EvalItem:
    return EvalItem(
        id=_row_id(row, loc, "qid", "id"),
        location=loc,
        question=str(_req(row, loc, "question")),
        answer=str(_req(row, loc, "answer")),
        images=_images(row, loc, ctx, image_key, "image", "images"),
        answer_type=str(row.get("answer_type", "")).lower() or None,
    )


def vqa_rad(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    return _vqa(row, loc, ctx, "image_name")


def slake(row: Row, loc: str, ctx: ReadContext) -> EvalItem | None:
    if str(row.get("q_lang", "en")).lower() != "en":
        return None  # SLAKE is bilingual; the published protocol scores the English questions
    return _vqa(row, loc, ctx, "img_name")


_TRUE = {"1", "1.0", "yes", "true", "y", "positive"}
_FALSE = {"0", "0.0", "no", "false", "n", "negative"}


def _norm(s: str) -> str:
    return re.sub(r"[\s_]+", " ", s.strip().lower())


def cxr(row: Row, loc: str, ctx: ReadContext, conditions: tuple[str, ...] = ()) -> EvalItem:
    """CheXpert-style label columns (1 / 0 / -1 uncertain / blank) or CXR14's `Finding Labels` ("A|B")."""
    images = _images(row, loc, ctx, "image", "images", "path", "Path", "Image Index", "image_path")
    if not images:
        raise RowError(f"{loc}: no image path (column 'image', 'path' or 'Image Index')")
    labels: dict[str, bool] = {}
    if "Finding Labels" in row:
        found = {_norm(x) for x in str(row["Finding Labels"]).split("|")}
        labels = {c: _norm(c) in found for c in conditions}
    else:
        raw = row.get("labels") if isinstance(row.get("labels"), dict) else row
        cols = {_norm(k): v for k, v in raw.items()}
        for c in conditions:
            v = cols.get(_norm(c))
            s = str(v).strip().lower() if v is not None else ""
            if s in _TRUE:
                labels[c] = True
            elif s in _FALSE:
                labels[c] = False
    if not labels:
        raise RowError(f"{loc}: no labels for any of the conditions {', '.join(conditions)}")
    return EvalItem(_row_id(row, loc, "id", "dicom_id", "Image Index"), loc, images=images, labels=labels)


def report(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    images = _images(row, loc, ctx, "images", "image", "image_path")
    if not images:
        raise RowError(f"{loc}: no image path (field 'image' or 'images')")
    return EvalItem(_row_id(row, loc, "id", "study_id"), loc, str(row.get("question") or ""),
                    answer=str(_req(row, loc, "report", "findings", "answer")), images=images)


READERS: dict[str, Converter] = {
    "generic": generic,
    "medqa": medqa,
    "medmcqa": medmcqa,
    "pubmedqa": pubmedqa,
    "mmlu": mmlu,
    "medxpertqa": medxpertqa,
    "afrimedqa": afrimedqa,
    "vqa_rad": vqa_rad,
    "slake": slake,
    "cxr": cxr,  # type: ignore[dict-item]
    "report": report,
}

IMAGE_DIR_NAMES = ("VQA_RAD Image Folder", "imgs", "images")


def default_image_roots(path: Path) -> list[Path]:
    """Beside the data file first, then the releases' image folders (VQA-RAD's, SLAKE's imgs/, images/)."""
    base = path if path.is_dir() else path.parent
    return [base] + [base / name for name in IMAGE_DIR_NAMES if (base / name).is_dir()]


@dataclass
class ReadResult:
    items: list[EvalItem]
    errors: list[str]  # "file:line: problem" for rows skipped with --on-error skip
    skipped: int  # rows the format itself leaves out (non-English SLAKE, AfriMed-QA short answers)


def read_items(spec: TaskSpec, path: Path, on_error: str = "fail", image_root: Path | None = None,
               conditions: tuple[str, ...] = (), limit: int | None = None) -> ReadResult:
    """Every usable row of a data file as `EvalItem`s; malformed rows fail or are listed (`on_error`)."""
    ctx = ReadContext(path, [image_root] if image_root else default_image_roots(path))
    conv = READERS[spec.reader]
    items: list[EvalItem] = []
    errors: list[str] = []
    seen: set[str] = set()
    skipped = 0
    for loc, row in load_rows(path, spec.reader):
        try:
            if isinstance(row, RowError):
                raise row
            if not isinstance(row, dict):
                raise RowError(f"{loc}: expected an object per row")
            item = cxr(row, loc, ctx, conditions) if spec.reader == "cxr" else conv(row, loc, ctx)
            if item is None:
                skipped += 1
                continue
            _check(spec, item)
            if item.id in seen:
                raise RowError(f"{loc}: duplicate id {item.id!r}")
        except RowError as e:
            if on_error == "fail":
                raise
            errors.append(str(e))
            continue
        seen.add(item.id)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise BadInput(f"{path}: no usable items for task {spec.name!r}" + (f" ({len(errors)} malformed rows)" if errors else ""))
    return ReadResult(items, errors, skipped)


def _check(spec: TaskSpec, item: EvalItem) -> None:
    """Row-level requirements of each task kind."""
    if spec.kind == "mcq":
        if not item.options or item.answer not in item.options:
            raise RowError(f"{item.location}: a multiple-choice row needs options and the correct option")
        if spec.name == "image_mcq" and not item.images:
            raise RowError(f"{item.location}: an image question needs an image path")
    elif spec.kind == "vqa" and not item.images:
        raise RowError(f"{item.location}: a VQA row needs an image path")
    elif spec.kind in ("vqa", "report") and not item.answer:
        raise RowError(f"{item.location}: missing reference answer")
