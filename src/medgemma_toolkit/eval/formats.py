"""Which reader reads which release, and `read_items`: rows -> `EvalItem`s, with splits, id lists and counted skips.

The readers themselves live in `readers_text` / `readers_image`, the file loading in `rows`. A row in none of the
known shapes is a `RowError` naming its file and line; a row the task cannot score is skipped with a counted reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import BadInput
from . import readers_image as img
from . import readers_text as txt
from .items import EvalItem
from .rows import ReadContext, Row, RowError, SkipRow, default_image_roots, load_rows
from .spec import TaskSpec

__all__ = ["READERS", "ReadContext", "ReadResult", "RowError", "SkipRow", "read_items", "read_ids"]

Converter = Callable[[Row, str, ReadContext], EvalItem]


@dataclass(frozen=True)
class Reader:
    convert: Converter
    releases: str  # the releases and files this reader expects, as `medgemma eval list` shows them


READERS: dict[str, Reader] = {
    "generic": Reader(txt.generic, "generic JSONL/CSV: id, question, options, answer, image(s)"),
    "medqa": Reader(
        txt.medqa,
        "MedQA jind11/MedQA questions/US/4_options/*_test.jsonl (question, options, "
        "answer_idx); HF copies with the same columns",
    ),
    "medmcqa": Reader(
        txt.medmcqa,
        "MedMCQA dev.json / test.json, JSON lines (opa..opd, cop 1-4; test rows "
        "unlabelled); HF openlifescienceai/medmcqa (cop 0-3)",
    ),
    "pubmedqa": Reader(
        txt.pubmedqa,
        "PubMedQA pubmedqa/pubmedqa data/ori_pqal.json ({PMID: {QUESTION, CONTEXTS, "
        "final_decision}}), --split test = the 500 PMIDs of test_ground_truth.json; "
        "HF qiaojin/PubMedQA:pqa_labeled",
    ),
    "mmlu": Reader(
        txt.mmlu,
        "MMLU hendrycks/test data/test/ folder or one <subject>_test.csv (header-less); "
        "HF cais/mmlu (choices, answer 0-3)",
    ),
    "medxpertqa": Reader(
        txt.medxpertqa,
        "MedXpertQA TsinghuaC3I/MedXpertQA eval/data/medxpertqa/input/"
        "medxpertqa_text_input.jsonl or _mm_input.jsonl (images/ beside it); "
        "HF TsinghuaC3I/MedXpertQA:Text|MM",
    ),
    "afrimedqa": Reader(
        txt.afrimedqa,
        "AfriMed-QA intron-innovation/AfriMed-QA CSV, e.g. sample_10.csv or "
        "afri_med_qa_15k_v2.5_phase_2_15275.csv (mcq rows; answer_options JSON)",
    ),
    "vqa_rad": Reader(
        img.vqa_rad,
        "VQA-RAD 'VQA_RAD Dataset Public.json' (--split test = phrase_type test_*) or a "
        "testset.json copy, images beside it or in 'VQA_RAD Image Folder'",
    ),
    "slake": Reader(img.slake, "SLAKE Slake1.0/test.json (English rows) with Slake1.0/imgs/"),
    "cxr": Reader(
        img.cxr,  # type: ignore[arg-type]
        "NIH ChestX-ray14 Data_Entry_2017.csv (--images: the folder with images_*/images/) or "
        "CheXpert-v1.0(-small)/train.csv | valid.csv inside the release folder",
    ),
    "report": Reader(img.report, "JSONL/CSV: image(s) and the reference report (report / findings)"),
}


@dataclass
class ReadResult:
    items: list[EvalItem]
    errors: list[str]  # "file:line: problem" for rows skipped with --on-error skip
    skipped: int  # rows the task cannot score (see skip_reasons)
    skip_reasons: dict[str, int] = field(default_factory=dict)  # reason -> rows
    warnings: list[str] = field(default_factory=list)  # e.g. a condition the file does not label
    selection: dict[str, Any] = field(default_factory=dict)  # split / ids used, and how many rows they dropped


def read_ids(path: Path) -> list[str]:
    """Ids from a file: one per line (# comments), a JSON list, or a JSON object's keys (test_ground_truth.json)."""
    if not Path(path).is_file():
        raise BadInput(f"{path}: ids file not found")
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadInput(f"{Path(path).name}:{e.lineno}: not valid JSON ({e.msg})") from None
        ids = [str(x) for x in data]  # a list's entries or an object's keys
    else:
        ids = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not ids:
        raise BadInput(f"{path}: no ids")
    return ids


def _split_rule(spec: TaskSpec, split: str | None, data: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(row rule, split passed to the Hugging Face loader) for --split on this task and data."""
    if split is None:
        return None, None
    hf = str(data).startswith("hf:") or data.is_dir() and (data / "dataset_dict.json").exists()
    rule = spec.splits.get(split)
    if rule is None:
        if hf:
            return None, split  # a Hugging Face dataset's own split name
        have = ", ".join(spec.splits) or "none"
        raise BadInput(
            f"task {spec.name!r} defines no split {split!r} (it has: {have}); for a Hugging Face "
            "dataset, --split is its split name"
        )
    if hf and rule.get("hf_split"):
        return None, rule["hf_split"]
    if "file" in rule and not hf and rule["file"] not in data.name.lower():
        raise BadInput(
            f"{data.name}: the {split} split of {spec.name} is its own file (*{rule['file']}*); "
            "give that file as --data"
        )
    return rule, None


def _in_split(rule: dict[str, Any], row: Row, item: EvalItem, loc: str, ids: set[str] | None) -> bool:
    if "ids_file" in rule:
        return item.id in (ids or set())
    if "id_prefix" in rule:
        return item.id.startswith(rule["id_prefix"])
    if "column" in rule:
        col = rule["column"]
        if col not in row:
            raise BadInput(
                f"{loc}: no {col!r} column to select the split by; is the file already that split? Run without --split"
            )
        v = str(row[col]).strip().lower()
        return v == rule["equals"] if "equals" in rule else v.startswith(rule["prefix"])
    return True


# The fields the releases keep their ids in (each reader takes its item id from one of these).
_ID_FIELDS = ("id", "qid", "pubid", "sample_id", "Image Index", "dicom_id", "Path")


def _may_be_selected(
    row: Row, rule: dict[str, Any] | None, split_ids: set[str] | None, wanted: set[str] | None
) -> bool:
    """False when the raw row is already known to fall outside --split / --ids (before reading its images)."""
    raw_ids = {str(row[k]) for k in _ID_FIELDS if row.get(k) not in (None, "")}
    if raw_ids:  # conservative: a row leaves only when none of its id fields could be the selected id
        if wanted is not None and not raw_ids & wanted:
            return False
        if rule and "ids_file" in rule and not raw_ids & (split_ids or set()):
            return False
        if rule and "id_prefix" in rule and not any(i.startswith(rule["id_prefix"]) for i in raw_ids):
            return False
    if rule and "column" in rule and rule["column"] in row:
        v = str(row[rule["column"]]).strip().lower()
        return v == rule["equals"] if "equals" in rule else v.startswith(rule["prefix"])
    return True


def read_items(
    spec: TaskSpec,
    path: Path,
    on_error: str = "fail",
    image_root: Path | None = None,
    conditions: tuple[str, ...] = (),
    limit: int | None = None,
    split: str | None = None,
    ids: list[str] | None = None,
) -> ReadResult:
    """Every usable row of a data file as `EvalItem`s; malformed rows fail or are listed (`on_error`), rows the task
    cannot score are counted by reason, `split` / `ids` select rows before `limit` applies."""
    ctx = ReadContext(path, [image_root] if image_root else default_image_roots(path), image_root is not None)
    conv = READERS[spec.reader].convert
    rule, hf_split = _split_rule(spec, split, path)
    split_ids = (
        set(read_ids(Path(str(files(__package__).joinpath("splits").joinpath(rule["ids_file"])))))
        if rule and "ids_file" in rule
        else None
    )
    wanted = set(ids) if ids is not None else None
    labels = img.CxrLabels(conditions, spec.label_names) if spec.reader == "cxr" else None
    items: list[EvalItem] = []
    errors: list[str] = []
    reasons: Counter[str] = Counter()
    seen: set[str] = set()
    outside = 0
    for loc, row in load_rows(path, spec.reader, hf_split):
        try:
            if isinstance(row, RowError):
                raise row
            if not isinstance(row, dict):
                raise RowError(f"{loc}: expected an object per row")
            if not _may_be_selected(row, rule, split_ids, wanted):
                outside += 1  # decided on the raw row: its images need not exist (a partial CXR14 download)
                continue
            item = img.cxr(row, loc, ctx, labels) if labels is not None else conv(row, loc, ctx)
            if (rule and not _in_split(rule, row, item, loc, split_ids)) or (
                wanted is not None and item.id not in wanted
            ):
                outside += 1
                continue
            _check(spec, item)
            if item.id in seen:
                raise RowError(f"{loc}: duplicate id {item.id!r}")
        except SkipRow as s:
            reasons[s.reason] += 1
            continue
        except RowError as e:
            if on_error == "fail":
                raise
            errors.append(str(e))
            continue
        seen.add(item.id)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    warnings = []
    if labels is not None and labels.release is not None:
        missing = [c for c in conditions if c not in labels.covered]
        if missing:
            warnings.append(f"{path.name} ({labels.release}) has no label for {', '.join(missing)}: not asked")
    selection: dict[str, Any] = {
        "split": split,
        "ids": len(wanted) if wanted is not None else None,
        "rows_outside_selection": outside,
    }
    if wanted is not None and limit is None:
        missing_ids = len(wanted - seen)
        if missing_ids:
            warnings.append(f"{missing_ids} of {len(wanted)} ids in --ids are not in {path.name} (or not scorable)")
    if not items:
        why = [f"{len(errors)} malformed rows"] if errors else []
        why += [f"{n} skipped: {r}" for r, n in reasons.items()]
        why += [f"{outside} outside the chosen split/ids"] if outside else []
        raise BadInput(f"{path}: no usable items for task {spec.name!r}" + (f" ({'; '.join(why)})" if why else ""))
    return ReadResult(items, errors, sum(reasons.values()), dict(reasons), warnings, selection)


def _check(spec: TaskSpec, item: EvalItem) -> None:
    """Row-level requirements of the task's kind."""
    spec.task_kind.check(spec, item)
