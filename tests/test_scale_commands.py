"""`--workers N` and `--ray` on `embed`, `batch`, `eval` and `localize --batch`: the same outputs as one process.

Oracles: the single-process run of the same command on the same inputs (vectors compared exactly or within 1e-6,
answers and boxes exactly, eval metrics exactly); a re-run of a finished `batch` skips every row. Workers are real
`spawn` processes (and real Ray actors), models are the tiny random checkpoints of `testing/`, upstreams the
scripted OpenAI-compatible test server on loopback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from medgemma_toolkit.testing.upstream import ScriptedUpstream


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    from medgemma_toolkit.testing.tiny_siglip import build_tiny_siglip

    return build_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tiny-siglip")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("scaleimgs")
    rng = np.random.default_rng(3)
    out = []
    for k in range(7):
        p = d / f"im{k}.png"
        Image.fromarray((rng.random((30 + 5 * k, 41, 3)) * 255).astype(np.uint8)).save(p)
        out.append(p)
    return out


def _embed(siglip_dir: Path, pngs: list[Path], *extra: str, env: dict[str, str] | None = None) -> dict:
    args = ["embed", "-m", str(siglip_dir), "--batch-size", "3", "--text", "edema", "--text", "normal"]
    for p in pngs:
        args += ["-i", str(p)]
    r = run_cli(*args, "--json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _same_embeddings(a: dict, b: dict) -> None:
    strip = [{k: v for k, v in i.items() if k != "embedding"} for i in a["items"]]
    assert strip == [{k: v for k, v in i.items() if k != "embedding"} for i in b["items"]]
    va = np.array([i["embedding"] for i in a["items"]], dtype=np.float32)
    vb = np.array([i["embedding"] for i in b["items"]], dtype=np.float32)
    np.testing.assert_allclose(va, vb, rtol=0, atol=1e-6)
    assert {k: v for k, v in a.items() if k not in ("items", "files")} == {
        k: v for k, v in b.items() if k not in ("items", "files")
    }


def test_embed_workers_equal_one_process(siglip_dir, pngs, tmp_path):
    one = _embed(siglip_dir, pngs)
    two = _embed(siglip_dir, pngs, "--workers", "2", "--out", str(tmp_path / "e.npy"))
    _same_embeddings(one, two)
    assert [i["input"] for i in two["items"]] == list(range(7)) + [0, 1]
    np.testing.assert_array_equal(
        np.load(tmp_path / "e.npy"), np.array([i["embedding"] for i in two["items"]], dtype=np.float32)
    )


def _echo(body: dict) -> str:
    """The scripted model's answer: the question it was asked, reversed (each row gets its own answer)."""
    text = body["messages"][-1]["content"]
    text = text if isinstance(text, str) else " ".join(p.get("text", "") for p in text if isinstance(p, dict))
    return f"answer to {text[::-1]}"


def _rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "question": f"question number {i}?"}) + "\n" for i in range(n)))
    return path


def _answers(path: Path) -> dict[str, str]:
    return {r["id"]: r["answer"] for r in map(json.loads, path.read_text().splitlines())}


def test_batch_workers_through_one_upstream_same_answers_and_resume(tmp_path):
    inp = _rows(tmp_path / "rows.jsonl", 11)
    with ScriptedUpstream(_echo) as up:
        base = ["batch", "--upstream", up.url, "--input", str(inp), "--batch-size", "2"]
        one = run_cli(*base, "--out", str(tmp_path / "one.jsonl"))
        two = run_cli(*base, "--out", str(tmp_path / "two.jsonl"), "--workers", "2")
        assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
        assert "11 rows answered, 0 already done" in two.stdout
        assert _answers(tmp_path / "one.jsonl") == _answers(tmp_path / "two.jsonl")
        assert len(_answers(tmp_path / "one.jsonl")) == 11
        # A re-run skips what is done: a row added since is the only one asked.
        inp.write_text(inp.read_text() + json.dumps({"id": "new", "question": "one more?"}) + "\n")
        n = len(up.requests)
        again = run_cli(*base, "--out", str(tmp_path / "two.jsonl"), "--workers", "2", "--resume")
        assert again.returncode == 0, again.stderr
        assert "1 rows answered, 11 already done" in again.stdout and len(up.requests) == n + 1
    assert len((tmp_path / "two.jsonl").read_text().splitlines()) == 12


def _json_answer(body: dict) -> str:
    """A schema-following answer for even rows, a non-validating one for odd rows (the driver must tell them apart)."""
    text = body["messages"][-1]["content"]
    text = text if isinstance(text, str) else " ".join(p.get("text", "") for p in text if isinstance(p, dict))
    n = int(re.search(r"(\d+)", text).group(1))
    return json.dumps({"n": n}) if n % 2 == 0 else json.dumps({"n": "odd"})


def test_batch_workers_with_schema_validate_in_the_driver_as_one_process(tmp_path):
    """`batch --workers 2 --schema`: the schema reaches the upstream (as response_format) from every worker, and the
    rows written say "object" or "error" exactly as one process writes them."""
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}))
    inp = _rows(tmp_path / "rows.jsonl", 6)
    with ScriptedUpstream(_json_answer) as up:
        base = ["batch", "--upstream", up.url, "--input", str(inp), "--batch-size", "2", "--schema", str(schema)]
        one = run_cli(*base, "--out", str(tmp_path / "one.jsonl"))
        two = run_cli(*base, "--out", str(tmp_path / "two.jsonl"), "--workers", "2")
        assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
        assert all(r.get("response_format", {}).get("type") == "json_schema" for r in up.requests)
    rows = {}
    for name in ("one", "two"):
        recs = {r["id"]: r for r in map(json.loads, (tmp_path / f"{name}.jsonl").read_text().splitlines())}
        rows[name] = {k: (r.get("object"), "error" in r) for k, r in recs.items()}
    assert rows["one"] == rows["two"]
    assert rows["two"]["r0"] == ({"n": 0}, False) and rows["two"]["r1"] == (None, True)


def test_eval_workers_same_records_and_metrics(tiny_model_dir, tmp_path):
    base = ["eval", "--model", str(tiny_model_dir), "--task", "medqa", "--limit", "6", "--max-new-tokens", "4"]
    base += ["--batch-size", "2", "--bootstrap", "50", "--no-cache"]
    one = run_cli(*base, "--out", str(tmp_path / "one"))
    two = run_cli(*base, "--out", str(tmp_path / "two"), "--workers", "2")
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)

    def records(run: str) -> dict[str, dict]:
        recs = [json.loads(x) for x in (tmp_path / run / "records.jsonl").read_text().splitlines()]
        return {r["key"]: {k: v for k, v in r.items() if k != "seconds"} for r in recs}

    assert records("one") == records("two") and len(records("one")) == 6
    s1, s2 = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert s1["metrics"] == s2["metrics"] and s1["counts"] == s2["counts"]


BOXES = 'Final Answer: ```json[{"box_2d": [%d, 100, 750, 600], "label": "x"}]```'


def _box_for(body: dict) -> str:
    """A box whose left edge depends on the object asked for, so each row's answer is its own."""
    text = json.dumps(body["messages"])
    m = re.search(r"object(\d+)", text)
    return BOXES % (100 + 10 * int(m.group(1)) if m else 0)


def test_localize_batch_workers_same_boxes_in_table_order(tmp_path):
    lines = ["image,objects"]
    for k in range(6):
        Image.new("RGB", (40 + 10 * k, 30), (90, 90, 90)).save(tmp_path / f"i{k}.png")
        lines.append(f"i{k}.png,object{k}")
    lines.append("missing.png,object9")
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    with ScriptedUpstream(_box_for) as up:
        base = ["localize", "--upstream", up.url, "--batch", str(tmp_path / "rows.csv")]
        one = run_cli(*base, "-o", str(tmp_path / "ov1"))
        two = run_cli(*base, "-o", str(tmp_path / "ov2"), "--workers", "2")
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    r1 = [json.loads(x) for x in one.stdout.splitlines()]
    r2 = [json.loads(x) for x in two.stdout.splitlines()]
    assert [r["row"] for r in r2] == [f"rows.csv:{n}" for n in range(2, 9)]
    for a, b in zip(r1, r2):
        assert {k: v for k, v in a.items() if k != "overlay"} == {k: v for k, v in b.items() if k != "overlay"}
    assert len({tuple(r["boxes"][0]["xyxy"]) for r in r2[:6]}) == 6 and "file not found" in r2[6]["error"]
    assert "1 of 7 rows failed" in two.stderr
    for a, b in zip(r1[:6], r2[:6]):
        assert Path(a["overlay"]).name == Path(b["overlay"]).name
        assert np.array_equal(np.asarray(Image.open(a["overlay"])), np.asarray(Image.open(b["overlay"])))


def test_scale_flags_checked_before_any_model_loads(tmp_path, pngs):
    cases = [
        (["embed", "-m", str(tmp_path / "nope"), "-i", str(pngs[0]), "--workers", "0"], "--workers 0"),
        (["localize", "--upstream", "http://127.0.0.1:9", "-i", str(pngs[0]), "x", "--workers", "2"], "--batch"),
        (
            ["batch", "--input", str(_rows(tmp_path / "r.jsonl", 1)), "-o", str(tmp_path / "o"), "--ray", "nohost"],
            "--ray",
        ),
    ]
    for args, needle in cases:
        r = run_cli(*args)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)


@pytest.mark.slow
def test_embed_and_batch_on_a_two_node_ray_cluster(ray_cluster, siglip_dir, pngs, tmp_path):
    """The issue's tests: `embed --ray` equals one process's vectors; `batch --ray` through a scripted upstream
    gives one process's answers, and a re-run skips what is done. Actors on both nodes (one CPU each)."""
    env = ray_cluster.env  # the driver imports the tree the nodes import, and joins as they do
    one = _embed(siglip_dir, pngs)
    on_ray = _embed(siglip_dir, pngs, "--ray", ray_cluster.address, "--workers", "2", env=env)
    _same_embeddings(one, on_ray)

    inp = _rows(tmp_path / "rows.jsonl", 9)
    with ScriptedUpstream(_echo) as up:
        base = ["batch", "--upstream", up.url, "--input", str(inp), "--batch-size", "2"]
        single = run_cli(*base, "--out", str(tmp_path / "one.jsonl"))
        ray = run_cli(
            *base, "--out", str(tmp_path / "ray.jsonl"), "--ray", ray_cluster.address, "--workers", "2", env=env
        )
        assert single.returncode == 0 and ray.returncode == 0, (single.stderr, ray.stderr)
        assert _answers(tmp_path / "one.jsonl") == _answers(tmp_path / "ray.jsonl")
        n = len(up.requests)
        again = run_cli(*base, "--out", str(tmp_path / "ray.jsonl"), "--ray", ray_cluster.address, "--resume", env=env)
        assert again.returncode == 0 and "0 rows answered, 9 already done" in again.stdout, again.stderr
        assert len(up.requests) == n
