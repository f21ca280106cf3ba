"""With `--workers N`, the driver loads no model and no image is decoded twice (issue 32's follow-ups).

Oracle: a per-process count of the real calls (`tests/count_calls/sitecustomize.py` wraps `MedGemma.load`'s
`load_backend` and `MedGemma.media`'s `load_parts` in every process, the spawned workers included) and the
single-process run of the same command, whose outputs the workers' must equal. Models are the tiny random
checkpoints of `testing/`; workers are real `spawn` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from conftest import sr_batch_rows
from PIL import Image

from medgemma_toolkit.testing.synthetic_cxr import make_cxr

HOOK = Path(__file__).parent / "count_calls"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))


@dataclass
class Counted:
    returncode: int
    stdout: str
    stderr: str
    driver: int  # the pid of the command's own process
    calls: Counter  # (pid, name) -> calls

    def in_driver(self, name: str) -> int:
        return self.calls[(self.driver, name)]

    def in_workers(self, name: str) -> dict[int, int]:
        return {pid: n for (pid, what), n in self.calls.items() if what == name and pid != self.driver}

    def total(self, name: str) -> int:
        return sum(n for (_, what), n in self.calls.items() if what == name)


def counted_cli(log: Path, *args: str, env: dict[str, str] | None = None) -> Counted:
    """`medgemma ARGS...` as a real process, with every model load and image decode of it and its local workers
    counted per process (Ray actors run in the cluster's environment: only the driver is counted there)."""
    log.unlink(missing_ok=True)
    base = env or dict(os.environ)
    path = os.pathsep.join(p for p in (str(HOOK), base.get("PYTHONPATH", "")) if p)
    env = {**base, "HF_HUB_OFFLINE": "1", "MEDGEMMA_COUNT_LOG": str(log), "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medgemma_toolkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, err = proc.communicate(timeout=600)
    lines = log.read_text().splitlines() if log.exists() else []
    calls = Counter((int(pid), name) for pid, name in (line.split() for line in lines))
    return Counted(proc.returncode, out, err, proc.pid, calls)


def _cxr(path: Path) -> Path:
    ds = make_cxr(rows=48, cols=40)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.900", "1.2.826.0.1.3680043.8.498.901"
    ds.save_as(path, enforce_file_format=True)
    return path


def _findings(path: Path) -> list[tuple[str, list[str]]]:
    """(answer text, cited instances) of each Finding of an SR, in order."""
    out = []
    for c in hd.sr.srread(path).ContentSequence:
        if c.ValueType == "TEXT" and c.ConceptNameCodeSequence[0].CodeMeaning == "Finding":
            refs = [
                i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in c.ContentSequence if i.ValueType == "IMAGE"
            ]
            out.append((str(c.TextValue), sorted(refs)))
    return out


def test_batch_sr_workers_load_nothing_in_the_driver_and_decode_each_image_once(tiny_model_dir, tmp_path):
    """`batch --sr --workers 2`: the driver loads no model (it used to load one for the SRs), every image source is
    decoded once in the whole run (it used to be decoded again for the SR), and the SRs equal one process's. A
    resumed run decodes only the new row's images and those of the earlier rows its study's SR cites again."""
    inp, _ = sr_batch_rows(tmp_path, _cxr)
    rows = [json.loads(line) for line in inp.read_text().splitlines()]
    sources = sum(len(r.get("images", [r.get("image")])) for r in rows)  # 9 image sources in all
    runs = {}
    for name, extra in (("one", []), ("two", ["--workers", "2"])):
        runs[name] = counted_cli(
            tmp_path / f"{name}.log", "batch", "-m", str(tiny_model_dir), "--input", str(inp), "-o",
            str(tmp_path / f"{name}.jsonl"), "--max-new-tokens", "2", "--batch-size", "1", "--sr",
            str(tmp_path / f"srs-{name}"), *extra,
        )  # fmt: skip
        assert runs[name].returncode == 0, runs[name].stderr
        assert "wrote 2 SRs" in runs[name].stdout
    one, two = runs["one"], runs["two"]
    assert one.in_driver("load_backend") == 1 and one.total("load_parts") == sources
    assert two.in_driver("load_backend") == 0 and two.in_driver("load_parts") == 0
    assert 1 <= len(two.in_workers("load_backend")) <= 2 and set(two.in_workers("load_backend").values()) == {1}
    assert two.total("load_parts") == sources
    names = sorted(p.name for p in (tmp_path / "srs-one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "srs-two").iterdir()) and len(names) == 2
    for n in names:
        assert _findings(tmp_path / "srs-one" / n) == _findings(tmp_path / "srs-two" / n)

    # A row added to the CXR's study: its SR is written again, citing "b" too, whose image only is read again.
    ct_sr = next(p for p in (tmp_path / "srs-two").iterdir() if len(_findings(p)) == 2)
    before = ct_sr.read_bytes()
    inp.write_text(inp.read_text() + json.dumps({"id": "e", "question": "Again?", "image": "cxr.dcm"}) + "\n")
    again = counted_cli(
        tmp_path / "again.log", "batch", "-m", str(tiny_model_dir), "--input", str(inp), "-o",
        str(tmp_path / "two.jsonl"), "--max-new-tokens", "2", "--batch-size", "1", "--sr", str(tmp_path / "srs-two"),
        "--workers", "2", "--resume",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "1 rows answered, 4 already done" in again.stdout and "wrote 1 SRs" in again.stdout
    assert again.in_driver("load_backend") == 0 and again.total("load_parts") == 2
    assert ct_sr.read_bytes() == before
    cxr_sr = next(p for p in (tmp_path / "srs-two").iterdir() if p != ct_sr)
    cxr_uid = str(pydicom.dcmread(tmp_path / "cxr.dcm").SOPInstanceUID)
    assert [refs for _, refs in _findings(cxr_sr)] == [[cxr_uid], [cxr_uid]]


def _records(run: Path) -> dict[str, dict]:
    recs = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    return {r["key"]: {k: v for k, v in r.items() if k not in ("seconds", "cached")} for r in recs}


def test_eval_workers_load_nothing_in_the_driver_same_records_cached_and_resumed(tiny_model_dir, tmp_path):
    """`eval --workers 2` on an image task: no model load and no image read in the driver (it used to load the
    model for the run's identity); records, manifests and metrics equal one process's, when generated, when served
    from the result cache (the cached answers' images read by a worker) and when resumed."""
    base = ["eval", "-m", str(tiny_model_dir), "--task", "image_mcq", "--max-new-tokens", "2", "--batch-size", "2"]
    base += ["--bootstrap", "20"]
    one = counted_cli(tmp_path / "one.log", *base, "--limit", "6", "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    assert one.in_driver("load_backend") == 1

    # Half, then the rest with --resume; no cache, so the workers generate every answer.
    first = counted_cli(
        tmp_path / "a.log", *base, "--limit", "3", "-o", str(tmp_path / "two"), "--no-cache", "--workers", "2"
    )
    rest = counted_cli(
        tmp_path / "b.log", *base, "--limit", "6", "-o", str(tmp_path / "two"), "--no-cache", "--workers", "2",
        "--resume",
    )  # fmt: skip
    for run in (first, rest):
        assert run.returncode == 0, run.stderr
        assert run.in_driver("load_backend") == 0 and run.in_driver("load_parts") == 0
        assert sum(run.in_workers("load_backend").values()) >= 2  # one to describe the model, then the workers
    assert "generated 3, resumed 3, cached 0" in rest.stdout
    assert _records(tmp_path / "one") == _records(tmp_path / "two") and len(_records(tmp_path / "one")) == 6

    # Every answer in the result cache (run "one" filled it): the workers only read the images for the manifests.
    cached = counted_cli(tmp_path / "c.log", *base, "--limit", "6", "-o", str(tmp_path / "three"), "--workers", "2")
    assert cached.returncode == 0, cached.stderr
    assert "generated 0, resumed 0, cached 6" in cached.stdout
    assert cached.in_driver("load_backend") == 0 and cached.in_driver("load_parts") == 0
    assert _records(tmp_path / "one") == _records(tmp_path / "three")
    assert all(r["images"] for r in _records(tmp_path / "three").values())
    s1, s2, s3 = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two", "three"))
    assert s1["metrics"] == s2["metrics"] == s3["metrics"] and s1["model"] == s2["model"] == s3["model"]


def test_batch_and_localize_workers_open_no_model_in_the_driver(tmp_path):
    """The other model commands with workers: the driver does not even open a client to the shared upstream;
    each worker opens one."""
    from medgemma_toolkit.testing.upstream import ScriptedUpstream

    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "question": f"Q{i}?"}) + "\n" for i in range(4))
    )
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "i.png")
    (tmp_path / "rows.csv").write_text("image,objects\n" + "i.png,heart\n" * 4)
    box = 'Final Answer: ```json[{"box_2d": [100, 100, 750, 600], "label": "heart"}]```'
    with ScriptedUpstream(box) as up:
        runs = [
            counted_cli(tmp_path / "b.log", "batch", "--upstream", up.url, "--input", str(tmp_path / "rows.jsonl"),
                        "-o", str(tmp_path / "o.jsonl"), "--batch-size", "1", "--workers", "2"),
            counted_cli(tmp_path / "l.log", "localize", "--upstream", up.url, "--batch", str(tmp_path / "rows.csv"),
                        "--workers", "2"),
        ]  # fmt: skip
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.in_driver("load_backend") == 0 and run.total("load_backend") >= 1
        assert set(run.in_workers("load_backend").values()) == {1}


@pytest.mark.slow
def test_batch_sr_and_eval_on_a_two_node_ray_cluster_load_nothing_in_the_driver(ray_cluster, tiny_model_dir, tmp_path):
    """`batch --sr --ray` and `eval --ray`: the same SRs and records as one process, no model in the driver."""
    _cxr(tmp_path / "cxr.dcm")
    rows = [{"id": f"r{i}", "question": f"Question {i}?", "image": "cxr.dcm"} for i in range(3)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ray = ["--ray", ray_cluster.address, "--workers", "2"]
    batch = ["batch", "-m", str(tiny_model_dir), "--input", str(tmp_path / "rows.jsonl"), "--max-new-tokens", "2"]
    batch += ["--batch-size", "1"]
    one = counted_cli(tmp_path / "1.log", *batch, "-o", str(tmp_path / "one.jsonl"), "--sr", str(tmp_path / "sr1"))
    on_ray = counted_cli(
        tmp_path / "2.log", *batch, "-o", str(tmp_path / "ray.jsonl"), "--sr", str(tmp_path / "sr2"), *ray,
        env=ray_cluster.env,
    )  # fmt: skip
    assert one.returncode == 0 and on_ray.returncode == 0, (one.stderr, on_ray.stderr)
    assert on_ray.in_driver("load_backend") == 0 and on_ray.in_driver("load_parts") == 0
    (a,), (b,) = (list((tmp_path / d).iterdir()) for d in ("sr1", "sr2"))
    assert _findings(a) == _findings(b) and len(_findings(b)) == 3

    ev = ["eval", "-m", str(tiny_model_dir), "--task", "image_mcq", "--limit", "4", "--max-new-tokens", "2"]
    ev += ["--batch-size", "2", "--bootstrap", "20", "--no-cache"]
    one = counted_cli(tmp_path / "3.log", *ev, "-o", str(tmp_path / "e1"))
    on_ray = counted_cli(tmp_path / "4.log", *ev, "-o", str(tmp_path / "e2"), *ray, env=ray_cluster.env)
    assert one.returncode == 0 and on_ray.returncode == 0, (one.stderr, on_ray.stderr)
    assert on_ray.in_driver("load_backend") == 0 and on_ray.in_driver("load_parts") == 0
    assert _records(tmp_path / "e1") == _records(tmp_path / "e2")
