"""`medgemma extract` over folders and rows files: one trace per document, per-document errors, resumable `--out`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
from conftest import wait_until
from PIL import Image

# Small on purpose: every answer is a few tokens, so a run of several documents takes seconds on the tiny model.
SMALL = {
    "type": "object",
    "properties": {"flag": {"type": "string", "enum": ["low", "normal", "high"]}},
    "required": ["flag"],
    "additionalProperties": False,
}


def _docs(folder: Path, n: int) -> list[Path]:
    """`n` one-page PDFs (Pillow's PDF writer) and a PNG, in a folder with a hidden file and a text file beside."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"report{i:02d}.pdf"
        Image.new("RGB", (60, 80), (20 * i, 100, 200)).save(p)
        paths.append(p)
    (folder / "notes.txt").write_text("not a document")
    Image.new("RGB", (8, 8)).save(folder / ".hidden.png")
    return paths


def _schema(tmp_path: Path) -> Path:
    p = tmp_path / "small.json"
    p.write_text(json.dumps(SMALL))
    return p


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_folder_and_rows_file_with_per_document_errors(tiny_model_dir, tmp_path, cli):
    docs = _docs(tmp_path / "reports", 2)
    rows = tmp_path / "rows.csv"
    rows.write_text(f"id,path\nA,reports/{docs[0].name}\nB,reports/missing.pdf\nC,\n")
    out = tmp_path / "out.jsonl"
    args = ["extract", "-m", str(tiny_model_dir), "--schema", str(_schema(tmp_path)), "--max-new-tokens", "16"]
    r = cli(*args, "-i", str(tmp_path / "reports"), "--input", str(rows), "--column", "path", "-o", str(out), "--json")
    assert r.returncode == 1, r.stderr  # two rows failed, so the run reports failure
    traces = [json.loads(line) for line in r.stdout.splitlines()]
    recs = _records(out)
    assert [t["source"] for t in traces] == [x["source"] for x in recs]
    assert [x["key"] for x in recs] == [str(docs[0]), str(docs[1]), "A", "B", "C"]
    assert set(traces[0]) == {"source", "object", "error", "raw", "finish_reason", "pages"}
    for rec in recs[:3]:
        assert rec["error"] is None, rec
        jsonschema.validate(rec["object"], SMALL)
        assert [p["page"] for p in rec["pages"]] == [1]
    assert recs[2]["source"] == str(docs[0])  # the row's path, relative to the CSV's folder
    assert "document not found: reports/missing.pdf" in recs[3]["error"]
    assert "no document path in column 'path'" in recs[4]["error"]
    assert "3 of 5 documents extracted" in r.stderr

    # Without --resume an existing --out is refused before the model loads; with it nothing is redone.
    r = cli(*args, "-i", str(tmp_path / "reports"), "-o", str(out))
    assert r.returncode != 0 and "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli(
        *args, "-i", str(tmp_path / "reports"), "--input", str(rows), "--column", "path", "-o", str(out), "--resume"
    )
    assert r.returncode == 1 and r.stdout == ""  # the failures are still the run's, not retried
    assert len(_records(out)) == 5


def test_bad_inputs_are_one_line_before_loading(tmp_path, cli):
    schema = str(_schema(tmp_path))
    r = cli("extract", "-m", "/nonexistent-model", "--schema", schema)
    assert r.returncode != 0 and "no documents" in r.stderr
    r = cli("extract", "-m", "/nonexistent-model", "--schema", schema, "--input", str(tmp_path / "none.csv"))
    assert r.returncode != 0 and "file not found" in r.stderr
    rows = tmp_path / "dup.jsonl"
    rows.write_text('{"id": "x", "document": "a.pdf"}\n{"id": "x", "document": "b.pdf"}\n')
    r = cli("extract", "-m", "/nonexistent-model", "--schema", schema, "--input", str(rows))
    assert r.returncode != 0 and "listed twice" in r.stderr and "Traceback" not in r.stderr
    r = cli("extract", "-m", "/nonexistent-model", "--schema", schema, "-i", str(tmp_path), "--resume")
    assert r.returncode != 0 and "give -o" in r.stderr


def test_killed_run_resumes_without_duplicates(tiny_model_dir, tmp_path):
    """SIGKILL a real process mid-run, tear its last line, then --resume: every document once, none lost."""
    docs = _docs(tmp_path / "reports", 12)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "medgemma_toolkit", "extract", "-m", str(tiny_model_dir)]
    cmd += ["--schema", str(_schema(tmp_path)), "--max-new-tokens", "16", "-i", str(tmp_path / "reports")]
    cmd += ["-o", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: out.exists() and out.read_text().count("\n") >= 1, timeout=120)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = out.read_text().count("\n")
    assert 1 <= before < len(docs)
    with out.open("a") as f:  # what a kill in the middle of a write leaves: half a line, never to be trusted
        f.write('{"key": "' + str(docs[-1]) + '", "object": {"fl')
    time.sleep(0.01)
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    keys = [x["key"] for x in _records(out)]
    assert sorted(keys) == sorted(str(d) for d in docs) and len(keys) == len(set(keys)) == len(docs)
    assert len(r.stdout.splitlines()) == len(docs) - before  # only the documents not done before were run


def test_batch_schema_every_row_validates_or_says_why(tiny_model_dir, tmp_path, cli):
    nested = Path(__file__).parent / "data" / "structured" / "nested.json"
    schema = json.loads(nested.read_text())
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": f"Lab report {i} as JSON."}) + "\n" for i in range(2))
    )
    out = tmp_path / "answers.jsonl"
    args = ["batch", "-m", str(tiny_model_dir), "--input", str(rows), "--schema", str(nested)]
    r = cli(*args, "-o", str(out), "--max-new-tokens", "512")
    assert r.returncode == 0, r.stderr
    recs = _records(out)
    assert sorted(x["id"] for x in recs) == ["q0", "q1"]
    for rec in recs:
        assert "error" not in rec, rec
        jsonschema.validate(rec["object"], schema)
        assert json.loads(rec["answer"]) == rec["object"]
    # Cut at 3 tokens no answer can be whole JSON: each row says so, and the run still ends.
    cut = tmp_path / "cut.jsonl"
    r = cli(*args, "-o", str(cut), "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    for rec in _records(cut):
        assert "cut at the token limit" in rec["error"] and "object" not in rec and rec["answer"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "if": {"required": ["a"]}}')
    r = cli(
        "batch", "-m", "/nonexistent-model", "--input", str(rows), "-o", str(tmp_path / "x.jsonl"), "--schema", str(bad)
    )
    assert r.returncode != 0 and "--schema" in r.stderr and len(r.stderr.strip().splitlines()) == 1
