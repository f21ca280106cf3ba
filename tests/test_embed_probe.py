"""`medgemma probe` and `classify --probe`: a separable synthetic set is learnt (accuracy CI above chance), the saved
probe scores like scikit-learn's own classifier, and a run killed mid-embedding resumes from its cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import wait_until
from PIL import Image

from medgemma_toolkit.testing.tiny_siglip import build_tiny_siglip


def write_set(root, n_per_class: int, side: int, seed: int = 0):
    """Two colour classes of noisy images: red-dominant vs blue-dominant (separable by design)."""
    rng = np.random.default_rng(seed)
    for cls, ch in (("red", 0), ("blue", 2)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n_per_class):
            a = (rng.random((side, side + 7, 3)) * 120).astype(np.uint8)
            a[..., ch] += 120
            Image.fromarray(a).save(root / cls / f"{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("psig") / "tiny-siglip")


def test_probe_learns_separable_set_and_classify_applies_it(siglip_dir, tmp_path, cli):
    from sklearn.linear_model import LogisticRegression

    data = write_set(tmp_path / "data", 20, 40)
    out = tmp_path / "run"
    res = cli("probe", "-m", str(siglip_dir), "--data", str(data), "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert m["n"] == 40 and m["classes"] == {"blue": 20, "red": 20} and m["chance"] == 0.5
    assert m["accuracy_ci95"][0] > m["chance"], m  # the whole 95% interval above chance
    assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0] == "source,label,predicted,p_blue,p_red" and len(lines) == 41

    # The saved probe (plain JSON) gives scikit-learn's predict_proba, refitted here on the cached features.
    feats = np.concatenate([np.load(f)["features"] for f in sorted((out / "embeddings").glob("chunk-*.npz"))])
    labels = ["blue"] * 20 + ["red"] * 20  # folders in sorted order
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(feats, labels)
    new = write_set(tmp_path / "new", 3, 40, seed=5)
    imgs = sorted(str(p) for p in new.rglob("*.png"))
    res = cli("classify", "-m", str(siglip_dir), "--probe", str(out), "--json", *[a for p in imgs for a in ("-i", p)])
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["labels"] == ["blue", "red"] and got["scoring"] == "probe"
    from medgemma_toolkit import MedSigLIP

    x = MedSigLIP.load(str(siglip_dir)).embed_images(imgs).vectors
    want = ref.predict_proba(x)
    np.testing.assert_allclose([[r["scores"]["blue"], r["scores"]["red"]] for r in got["results"]], want, atol=1e-4)
    assert [r["top"] for r in got["results"]] == ["blue"] * 3 + ["red"] * 3

    # A second run into the same folder needs --resume (the cache is not silently reused or overwritten).
    again = cli("probe", "-m", str(siglip_dir), "--data", str(data), "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr


def test_probe_three_classes_from_csv(siglip_dir, tmp_path, cli):
    from medgemma_toolkit.embed.probe import apply_probe, load_probe

    data = write_set(tmp_path / "d", 10, 24)
    rng = np.random.default_rng(3)
    (data / "green").mkdir()
    for k in range(10):
        a = (rng.random((24, 31, 3)) * 120).astype(np.uint8)
        a[..., 1] += 120
        Image.fromarray(a).save(data / "green" / f"{k:03d}.png")
    rows = ["path,label"] + [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "r3"
    res = cli("probe", "-m", str(siglip_dir), "--data", str(data / "labels.csv"), "--out", str(out), "--folds", "3")
    assert res.returncode == 0, res.stderr
    assert "30 examples, 3 classes, 3-fold CV" in res.stdout
    probe = load_probe(out)
    assert probe["classes"] == ["blue", "green", "red"] and np.asarray(probe["coef"]).shape == (3, 32)
    p = apply_probe(probe, np.random.default_rng(0).normal(size=(4, 32)))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    # Issue 28: without -m, `classify --probe` loads the model the probe was trained on (not medsiglip-448).
    one = str(sorted(data.rglob("*.png"))[0])
    res = cli("classify", "--probe", str(out), "-i", one, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["labels"] == ["blue", "green", "red"]
    bad = cli(
        "probe",
        "-m",
        str(siglip_dir),
        "--data",
        str(data / "labels.csv"),
        "--out",
        str(tmp_path / "r4"),
        "--folds",
        "20",
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: --folds 20")


@pytest.mark.slow
def test_probe_survives_a_kill_mid_embedding(tmp_path):
    """A real `medgemma probe` process is SIGKILLed after its first cached chunk; --resume keeps the chunks it
    finished (untouched) and ends with the same features and metrics as an uninterrupted run."""
    model = build_tiny_siglip(tmp_path / "mid", image_size=224, patch_size=16, hidden_size=192, layers=4)
    data = write_set(tmp_path / "data", 80, 300)  # 160 examples: 5 chunks of 32, ~30 ms each to embed here
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "medgemma_toolkit", "probe", "-m", str(model), "--data", str(data), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    cache = out / "embeddings"
    try:
        assert wait_until(lambda: any(cache.glob("chunk-*.npz")) or proc.poll() is not None, timeout=120, every=0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = sorted(cache.glob("chunk-*.npz"))
    assert 1 <= len(done) < 5 and not (out / "probe.json").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in done}

    res = subprocess.run(cmd + ["--resume", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in done} == stamps  # reused, not recomputed
    assert len(list(cache.glob("chunk-*.npz"))) == 5 and not list(cache.glob("*.tmp*"))
    resumed = json.loads(res.stdout)

    fresh = tmp_path / "fresh"
    res2 = subprocess.run(cmd[:-1] + [str(fresh), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert res2.returncode == 0, res2.stderr
    for k in range(5):
        a = np.load(cache / f"chunk-{k:05d}.npz")["features"]
        b = np.load(fresh / "embeddings" / f"chunk-{k:05d}.npz")["features"]
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert resumed["accuracy"] == json.loads(res2.stdout)["accuracy"]
