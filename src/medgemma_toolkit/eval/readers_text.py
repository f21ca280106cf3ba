"""Readers for the text benchmarks, one per release, matched to the files as their projects publish them.

Each takes one row (see `rows.load_rows`) and returns an `EvalItem`, raises `RowError` (malformed) or `SkipRow`
(a row the single-answer task cannot score: unlabelled, several correct options, not multiple choice).
"""

from __future__ import annotations

import re
from typing import Any, cast

from .items import LETTERS, EvalItem
from .rows import (
    MMLU_MED_SUBJECTS,
    ReadContext,
    Row,
    RowError,
    SkipRow,
    gold_letter,
    image_paths,
    is_blank,
    options_of,
    req,
    row_id,
    row_images,
)


def generic(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """The generic format: id, question, options (mapping / list / JSON string), answer, image(s)."""
    options = (
        options_of(row["options"], loc) if not is_blank(row.get("options")) and row["options"] not in ([], {}) else {}
    )
    answer = next((row[k] for k in ("answer", "answer_idx", "label") if not is_blank(row.get(k))), None)
    gold = (
        gold_letter(answer, options, loc)
        if options and answer is not None
        else (None if answer is None else str(answer))
    )
    return EvalItem(
        id=row_id(row, loc, "id", "qid"),
        location=loc,
        question=str(req(row, loc, "question")).strip(),
        options=options,
        answer=gold,
        images=row_images(row, loc, ctx, "images", "image", "image_path"),
        answer_type=(str(row["answer_type"]).lower() if row.get("answer_type") else None),
    )


def medqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """MedQA (jind11/MedQA `questions/US/4_options/phrases_no_exclude_test.jsonl`, and its HF copies): question,
    options {A..D}, answer_idx."""
    if "answer_idx" not in row:
        return generic(row, loc, ctx)
    opts = options_of(req(row, loc, "options"), loc)
    return EvalItem(
        row_id(row, loc, "id"),
        loc,
        str(req(row, loc, "question")).strip(),
        opts,
        gold_letter(row["answer_idx"], opts, loc),
    )


def medmcqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """MedMCQA (`dev.json`/`test.json`, JSON lines): question, opa..opd, cop 1-4 (GitHub) or 0-3 (HF copy)."""
    if not any(k in row for k in ("cop", "opa")):
        return generic(row, loc, ctx)
    opts = options_of([req(row, loc, k) for k in ("opa", "opb", "opc", "opd")], loc)
    cop = row.get("cop")
    if is_blank(cop) or str(cop).strip() in ("-1", "-1.0"):
        raise SkipRow("unlabelled (no correct option: the release's test rows)")
    # The GitHub release numbers the correct option 1-4; the Hugging Face copy 0-3.
    return EvalItem(
        row_id(row, loc, "id"),
        loc,
        str(req(row, loc, "question")).strip(),
        opts,
        gold_letter(int(float(cast(Any, cop))), opts, loc, zero_based=bool(row.get("_hf"))),
    )


PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


def pubmedqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """PubMedQA `data/ori_pqal.json` {PMID: {QUESTION, CONTEXTS, final_decision}} or the HF copy (pubid,
    question, context.contexts, final_decision); asked as yes / no / maybe with the contexts."""
    if "final_decision" not in row and "QUESTION" not in row:
        return generic(row, loc, ctx)
    if is_blank(row.get("final_decision")):
        raise SkipRow("unlabelled (no final_decision)")
    ctx_field = row.get("context")
    contexts = row.get("CONTEXTS") or (ctx_field.get("contexts") if isinstance(ctx_field, dict) else None) or []
    question = str(req(row, loc, "QUESTION", "question")).strip()
    text = (
        "Context: " + " ".join(str(c).strip() for c in contexts) + "\n" if contexts else ""
    ) + f"Question: {question}"
    return EvalItem(
        row_id(row, loc, "id", "pubid"),
        loc,
        text,
        dict(PUBMEDQA_OPTIONS),
        gold_letter(str(row["final_decision"]), PUBMEDQA_OPTIONS, loc),
    )


def mmlu(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """MMLU (hendrycks/test `data/test/<subject>_test.csv`, header-less: question, A, B, C, D, answer letter) or
    the HF copy cais/mmlu (question, subject, choices, answer 0-3). Only the medical subjects are scored."""
    subject = str(row.get("subject") or "")
    if subject and subject not in MMLU_MED_SUBJECTS:
        raise SkipRow("not one of the medical subjects")
    if "choices" in row:  # Hugging Face cais/mmlu
        row = {**row, "options": row["choices"]}
    item = generic(row, loc, ctx)
    if subject and is_blank(row.get("id")):
        item.id = f"{subject}-{loc.rsplit(':', 1)[-1].strip('[]').rsplit('[', 1)[-1]}"
    return item


_CHOICES_IN_TEXT = re.compile(r"\n\s*Answer Choices:\s*\(A\)")


def _single_label(label: Any, loc: str) -> Any:
    if isinstance(label, list):
        if len(label) != 1:
            raise SkipRow("several correct options (single-answer task)") if label else RowError(f"{loc}: empty label")
        return label[0]
    return label


def medxpertqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """MedXpertQA (TsinghuaC3I/MedXpertQA `eval/data/medxpertqa/input/medxpertqa_{text,mm}_input.jsonl`: options
    [{letter, content}], label ["J"], MM images [{image_path}]; or the HF copy: options {A..J}, label "J")."""
    if "label" not in row or "options" not in row:
        return generic(row, loc, ctx)
    opts = options_of(row["options"], loc)
    question = str(req(row, loc, "question")).strip()
    item = EvalItem(
        row_id(row, loc, "id"),
        loc,
        question,
        opts,
        gold_letter(_single_label(row["label"], loc), opts, loc),
        image_paths(row, loc, ctx, "images", "image"),
    )
    # The release's question text already ends with "Answer Choices: (A) ... (J) ...": not listed twice.
    item.options_in_question = bool(_CHOICES_IN_TEXT.search(question))
    return item


_NA = {"n/a", "na", "none", ""}


def afrimedqa(row: Row, loc: str, ctx: ReadContext) -> EvalItem:
    """AfriMed-QA (intron-innovation/AfriMed-QA CSVs, e.g. the HF repo's sample_10.csv): question_type, question,
    answer_options (JSON {"option1": ...}, "N/A" for unused slots), correct_answer ("option3", or several)."""
    if "answer_options" not in row:
        return generic(row, loc, ctx)
    qtype = str(row.get("question_type") or "mcq").strip().lower()
    if qtype != "mcq":
        raise SkipRow(f"{qtype} question (not multiple choice)")
    raw = row["answer_options"]
    if isinstance(raw, str):
        import json

        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise RowError(f"{loc}: answer_options is not valid JSON") from None
    if not isinstance(raw, dict):
        raise RowError(f"{loc}: answer_options must be a JSON object of option1..optionN")
    # option k keeps letter k (as the release's own evaluation letters them); "N/A" slots are not options.
    opts: dict[str, str] = {}
    for key, text in raw.items():
        m = re.fullmatch(r"option(\d+)", str(key).strip(), re.I)
        if not m or not 1 <= int(m.group(1)) <= len(LETTERS):
            raise RowError(f"{loc}: unexpected answer_options key {str(key)[:20]!r}")
        if not is_blank(text) and str(text).strip().lower() not in _NA:
            opts[LETTERS[int(m.group(1)) - 1]] = str(text).strip()
    if len(opts) < 2:
        raise RowError(f"{loc}: fewer than two options")
    correct = [c.strip() for c in str(req(row, loc, "correct_answer")).split(",") if c.strip()]
    if len(correct) != 1:
        raise SkipRow("several correct options (single-answer task)")
    m = re.fullmatch(r"option(\d+)", correct[0], re.I)
    gold = LETTERS[int(m.group(1)) - 1] if m else gold_letter(correct[0], opts, loc)
    if gold not in opts:
        raise RowError(f"{loc}: correct_answer {correct[0]!r} names an empty or N/A option")
    return EvalItem(
        row_id(row, loc, "sample_id", "id"),
        loc,
        " ".join(str(req(row, loc, "question")).split()),
        dict(sorted(opts.items())),
        gold,
    )
