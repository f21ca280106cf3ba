"""Readers for the image benchmarks: VQA-RAD, SLAKE, chest X-ray labels (NIH ChestX-ray14, CheXpert) and reports.

Chest X-ray label names differ per release (CXR14 writes "Effusion" for pleural effusion); the task YAML maps each
release's names to the condition names asked, so a condition is never scored "no" just because it is spelled
differently. Conditions a file does not label are reported, not silently scored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import cast

from .items import EvalItem
from .rows import ReadContext, Row, RowError, SkipRow, image_paths, is_blank, req, row_id, row_images


def _vqa(row: Row, loc: str, ctx: ReadContext, image_key: str) -> EvalItem:
    answer = req(row, loc, "answer")
    atype = str(row.get("answer_type") or "").strip().lower() or None
    if atype is None and str(answer).strip().lower() in ("yes", "no"):
        atype = "closed"  # HF copies (e.g. flaviagiammarino/vqa-rad) drop answer_type: yes/no answers are closed
    return EvalItem(
        id=row_id(row, loc, "qid", "id"),
        location=loc,
        question=str(req(row, loc, "question")).strip(),
        answer=str(answer).strip(),
        images=image_paths(row, loc, ctx, image_key, "image", "images"),
        answer_type=atype,
    )


def vqa_rad(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """VQA-RAD: the release's `VQA_RAD Dataset Public.json` (qid, image_name, question, answer, answer_type
    CLOSED/OPEN, phrase_type with "test_*" for the test split) or a `testset.json` copy, images beside it."""
    return _vqa(row, loc, ctx, "image_name")


def slake(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """SLAKE 1.0: `Slake1.0/test.json` (qid, img_name "xmlab1/source.jpg", question, answer, answer_type, q_lang),
    images under `imgs/`. The published protocol scores the English questions."""
    if str(row.get("q_lang", "en")).strip().lower() != "en":
        raise SkipRow("not English (q_lang)")
    return _vqa(row, loc, ctx, "img_name")


# -- chest X-ray labels ---------------------------------------------------------------------------------------------
_TRUE = {"1", "1.0", "yes", "true", "y", "positive"}
_FALSE = {"0", "0.0", "no", "false", "n", "negative"}
_UNCERTAIN = {"-1", "-1.0", "uncertain"}


def norm_label(s: str) -> str:
    return re.sub(r"[\s_]+", " ", str(s).strip().lower())


@dataclass
class CxrLabels:
    """How one file's labels map to the conditions being asked (built from the task's `label_names`)."""

    conditions: tuple[str, ...]
    names: dict[str, dict[str, str]]  # release -> {its label name: condition}
    release: str | None = None  # "cxr14", "chexpert" or "columns" once the first row is seen
    covered: set[str] = field(default_factory=set)  # conditions this file labels at all

    def detect(self, row: Row) -> None:
        if self.release is not None:
            return
        if "Finding Labels" in row:
            self.release = "cxr14"
            mapped = {norm_label(v) for v in self.names.get("cxr14", {}).values()}
        else:
            labels = cast(Row, row.get("labels")) if isinstance(row.get("labels"), dict) else row
            self.release = "chexpert" if "Path" in row and "No Finding" in row else "columns"
            alias = {norm_label(k): norm_label(v) for k, v in self.names.get(self.release, {}).items()}
            mapped = {alias.get(norm_label(k), norm_label(k)) for k in labels}
        self.covered = {c for c in self.conditions if norm_label(c) in mapped}

    def of(self, row: Row, loc: str) -> dict[str, bool]:
        self.detect(row)
        wanted = {norm_label(c): c for c in self.covered}
        alias = {norm_label(k): norm_label(v) for k, v in self.names.get(self.release or "", {}).items()}
        out: dict[str, bool] = {}
        if self.release == "cxr14":
            found = {alias.get(norm_label(x), norm_label(x)) for x in str(row["Finding Labels"]).split("|")}
            return {c: key in found for key, c in wanted.items()}
        raw = cast(Row, row.get("labels")) if isinstance(row.get("labels"), dict) else row
        # CheXpert leaves a finding blank when the report does not mention it; with "No Finding" = 1 the report
        # states there is no pathology, so the five conditions count as absent there (protocol choice, versioned).
        no_finding = str(raw.get("No Finding", "")).strip().lower() in _TRUE
        for k, v in raw.items():
            key = alias.get(norm_label(k), norm_label(k))
            if key not in wanted:
                continue
            s = "" if is_blank(v) else str(v).strip().lower()
            if s in _TRUE:
                out[wanted[key]] = True
            elif s in _FALSE or (s == "" and no_finding):
                out[wanted[key]] = False
            elif s and s not in _UNCERTAIN:
                raise RowError(f"{loc}: label {k!r} is {s[:10]!r}; expected 1, 0, -1 or blank")
        return out


def cxr(row: Row, loc: str, ctx: ReadContext, labels: CxrLabels) -> EvalItem:
    """NIH ChestX-ray14 `Data_Entry_2017.csv` (Image Index, Finding Labels "A|B"; images under images_*/images/,
    give --images) or CheXpert `train.csv`/`valid.csv` (Path "CheXpert-v1.0-small/train/...", relative to the
    folder above the CSV; 1 / 0 / -1 uncertain / blank), or any CSV with an image column and one per condition."""
    images = image_paths(row, loc, ctx, "image", "images", "Path", "path", "Image Index", "image_path")
    if not images:
        raise RowError(f"{loc}: no image path (column 'Path', 'Image Index' or 'image')")
    got = labels.of(row, loc)
    if not got:
        raise SkipRow("no gradable label for the conditions asked (uncertain or not mentioned)")
    return EvalItem(row_id(row, loc, "id", "dicom_id", "Image Index", "Path"), loc, images=images, labels=got)


def report(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    images = row_images(row, loc, ctx, "images", "image", "image_path")
    if not images:
        raise RowError(f"{loc}: no image path (field 'image' or 'images')")
    return EvalItem(
        row_id(row, loc, "id", "study_id"),
        loc,
        str(row.get("question") or ""),
        answer=str(req(row, loc, "report", "findings", "answer")),
        images=images,
    )
