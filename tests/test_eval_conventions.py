"""VQA metric conventions: ours (`toolkit`, the default) and `multimedeval`, checked against MultiMedEval's own
functions' outputs on the SLAKE / VQA-RAD sample golds (tests/data/multimedeval_vqa_reference.json, made by
benchmarks/multimedeval_reference.py from corentin-ryr/MultiMedEval at the commit named in the file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from medgemma_toolkit.errors import BadInput
from medgemma_toolkit.eval.conventions import CONVENTIONS, get_convention, multimedeval_clean, multimedeval_tokens
from medgemma_toolkit.eval.kinds import get_kind

REFERENCE = json.loads((Path(__file__).parent / "data" / "multimedeval_vqa_reference.json").read_text())
MME = CONVENTIONS["multimedeval"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))


def test_reference_covers_the_sample_golds():
    golds = {p["gold"] for p in REFERENCE["pairs"]}
    assert {"yes", "no", "none", "two"} <= golds and len(REFERENCE["pairs"]) >= 150
    assert REFERENCE["source"]["repo"] == "corentin-ryr/MultiMedEval" and len(REFERENCE["source"]["commit"]) == 40


@pytest.mark.parametrize("pair", REFERENCE["pairs"], ids=lambda p: f"{p['gold']}|{p['prediction']}")
def test_multimedeval_convention_equals_multimedeval(pair):
    assert multimedeval_clean(pair["prediction"]) == pair["clean_prediction"]
    assert multimedeval_clean(pair["gold"].lower().strip()) == pair["clean_gold"]
    assert sorted(multimedeval_tokens(pair["prediction"])) == pair["prediction_tokens"]
    got = MME.score(pair["prediction"], pair["gold"], None)
    assert got.score == pytest.approx(pair["f1"], abs=1e-12)
    assert got.closed == pair["closed"]
    if pair["closed"]:
        assert got.correct == pair["closed_correct"]
    else:
        assert got.correct == (pair["recall"] >= 0.75)


@pytest.mark.parametrize(
    "pred, gold, answer_type, toolkit, multimedeval",
    [
        # (correct, F1, closed) under each convention, side by side: the differences issue #34 names.
        ("X-Ray", "x ray", "open", (False, 0.0, False), (True, 1.0, False)),
        ("2", "two", "open", (False, 0.0, False), (True, 1.0, False)),
        ("not seen", "no", "closed", (False, 0.0, True), (True, 0.0, True)),  # "not" counts for a closed "no" only
        ("yes", "yes", "open", (True, 1.0, False), (True, 1.0, True)),  # a yes/no gold is closed for MultiMedEval
        ("left lung", "left", "closed", (False, 2 / 3, True), (True, 2 / 3, False)),  # closed only by answer_type
    ],
)
def test_conventions_side_by_side(pred, gold, answer_type, toolkit, multimedeval):
    for name, want in (("toolkit", toolkit), ("multimedeval", multimedeval)):
        got = CONVENTIONS[name].score(pred, gold, answer_type)
        assert (got.correct, got.closed) == (want[0], want[2]), name
        assert got.score == pytest.approx(want[1], abs=1e-7), name


def test_multimedeval_is_refused_for_tasks_it_defines_nothing_for():
    assert get_convention("toolkit", get_kind("mcq")).name == "toolkit"
    assert get_convention("multimedeval", get_kind("vqa")).name == "multimedeval"
    with pytest.raises(BadInput, match="VQA metrics only"):
        get_convention("multimedeval", get_kind("mcq"))
    with pytest.raises(BadInput, match="unknown metric convention"):
        get_convention("vqa-v2", get_kind("vqa"))


def test_eval_records_the_convention_and_scores_by_it(scripted_model_dir, tmp_path):
    """The same answers scored under both conventions; summary and records say which."""
    runs = {}
    for name in ("toolkit", "multimedeval"):
        out = tmp_path / name
        r = run_cli(
            "eval",
            "--model",
            str(scripted_model_dir),
            "--task",
            "vqa_rad",
            "--out",
            str(out),
            "--metric-convention",
            name,
            "--bootstrap",
            "50",
        )
        assert r.returncode == 0, r.stderr
        s = json.loads((out / "summary.json").read_text())
        assert s["metric_convention"]["name"] == name
        assert f"{name}@1" in (out / "report.md").read_text()
        recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
        for rec in recs:
            v = CONVENTIONS[name].score(rec["parsed"], rec["gold"], rec["answer_type"])
            assert (rec["correct"], rec["closed"]) == (v.correct, v.closed)
            assert rec["score"] == pytest.approx(v.score)
        runs[name] = s
    r = run_cli(
        "eval",
        "--model",
        str(scripted_model_dir),
        "--task",
        "medqa",
        "--metric-convention",
        "multimedeval",
        "--out",
        str(tmp_path / "mcq"),
    )
    assert r.returncode != 0 and "VQA metrics only" in r.stderr and "Traceback" not in r.stderr
