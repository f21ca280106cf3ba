"""`medgemma probe`: a linear probe (logistic regression) on cached MedSigLIP embeddings, cross-validated.

Google's data-efficient classification notebook (Google-Health/medsiglip `train_data_efficient_classifier.ipynb`)
trains scikit-learn's `LogisticRegression` on image embeddings; this does the same with stratified k-fold
cross-validation, so every example is scored by a probe that never saw it, then fits the saved probe on all of it.

Run folder (`--out DIR`): `embeddings/` (the cache: `spec.json` plus one `chunk-NNNNN.npz` per group of examples,
each written atomically, so a killed run resumes at the first missing chunk with `--resume`), `probe.json` (the
classifier: classes, weights, bias, model, preprocessing; plain JSON, no pickle), `metrics.json` (accuracy with
its Wilson 95% interval, macro one-vs-rest AUC with a bootstrap interval, per-class recall) and `predictions.csv`
(the out-of-fold probabilities). One example may give several images (a CT series): its features are the mean of
its image embeddings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailable, BadInput
from ..imaging import ImageOptions
from ..rowfile import read_rows

if TYPE_CHECKING:
    from .model import MedSigLIP

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom"}
CHUNK = 32  # examples per cache file: what a kill can cost


@dataclass(frozen=True)
class Example:
    source: str
    label: str


def read_dataset(data: str | Path) -> list[Example]:
    """A folder of class sub-folders (`DATA/<label>/<image>`, sub-folders of a class folder are series) or a
    CSV/TSV/JSONL with `path` (or `image`) and `label` columns, paths relative to the file's folder."""
    d = Path(data)
    if d.is_dir():
        out: list[Example] = []
        for cls_dir in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for p in sorted(cls_dir.iterdir()):
                if p.name.startswith("."):
                    continue
                if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES:
                    out.append(Example(str(p), cls_dir.name))
        if not out:
            raise BadInput(f"--data {d}: no class sub-folders with images (expected DATA/<label>/<image files>)")
        return out
    if not d.is_file():
        raise BadInput(f"--data {d}: not a folder or a CSV/TSV/JSONL file")
    out = []
    for line in read_rows(d):
        if line.error or not isinstance(line.row, dict):
            raise BadInput(f"{line.where}: {line.error or 'not an object'}")
        path = line.row.get("path") or line.row.get("image")
        label = line.row.get("label")
        if not path or label in (None, ""):
            raise BadInput(f"{line.where}: needs 'path' (or 'image') and 'label'")
        p = Path(str(path))
        out.append(Example(str(p if p.is_absolute() else d.parent / p), str(label)))
    if not out:
        raise BadInput(f"--data {d}: no rows")
    return out


def _spec(ms: MedSigLIP, examples: list[Example]) -> dict[str, Any]:
    h = hashlib.sha256("\n".join(f"{e.source}\t{e.label}" for e in examples).encode()).hexdigest()[:16]
    return {"model": str(ms.path), **ms.info(), "examples": len(examples), "data_sha256": h, "chunk": CHUNK}


def cached_features(
    ms: MedSigLIP,
    examples: list[Example],
    cache: Path,
    resume: bool,
    options: ImageOptions = ImageOptions(),
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(n_examples, dim) features, embedding only the chunks the cache lacks."""
    cache.mkdir(parents=True, exist_ok=True)
    spec = _spec(ms, examples)
    spec_file = cache / "spec.json"
    if spec_file.exists():
        if not resume:
            raise BadInput(f"{cache.parent}: has embeddings from an earlier run; pass --resume to continue it")
        if json.loads(spec_file.read_text()) != spec:
            raise BadInput(f"{cache.parent}: its cache was made with another model, preprocessing or data")
    else:
        spec_file.write_text(json.dumps(spec, indent=2))
    for stale in cache.glob("*.tmp.npz"):  # a chunk being written when the last run was killed
        stale.unlink()
    feats: list[np.ndarray] = []
    for c in range(0, len(examples), CHUNK):
        f = cache / f"chunk-{c // CHUNK:05d}.npz"
        group = examples[c : c + CHUNK]
        if f.exists():
            feats.append(np.load(f)["features"])
            if progress is not None:
                progress(len(group))
            continue
        emb = ms.embed_images([e.source for e in group], options)
        owners = np.asarray([e["input"] for e in emb.entries])
        x = np.stack([emb.vectors[owners == k].mean(axis=0) for k in range(len(group))]).astype(np.float32)
        tmp = f.with_name(f.name + ".tmp.npz")
        np.savez(tmp, features=x)
        os.replace(tmp, f)  # a chunk is there whole or not at all
        feats.append(x)
        if progress is not None:
            progress(len(group))
    return np.concatenate(feats)


def fit_probe(
    x: np.ndarray, y: list[str], folds: int = 5, seed: int = 0, c: float = 1.0, max_iter: int = 1000
) -> tuple[dict[str, Any], np.ndarray, Any]:
    """(metrics, out-of-fold probabilities, classifier fitted on everything)."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
    except ImportError:
        raise BackendUnavailable("probe needs scikit-learn: pip install 'medgemma-toolkit[embed]'") from None
    from ..stats import bootstrap_statistic, wilson_interval

    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise BadInput("--data has one class; a probe needs at least two")
    if counts.min() < folds:
        raise BadInput(f"--folds {folds}: the smallest class has {counts.min()} example(s); lower --folds")
    labels = np.asarray(y)
    clf = LogisticRegression(C=c, max_iter=max_iter)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(clf, x, labels, cv=cv, method="predict_proba")
    pred = classes[proba.argmax(axis=1)]
    correct = int((pred == labels).sum())
    n = len(labels)
    lo, hi = wilson_interval(correct, n)
    onehot = (labels[:, None] == classes[None, :]).astype(int)

    def auc(idx: list[int]) -> float | None:
        t, p = onehot[idx], proba[idx]
        if (t.sum(axis=0) == 0).any():
            return None  # a resample without some class has no AUC
        return (
            float(roc_auc_score(t, p, average="macro")) if len(classes) > 2 else float(roc_auc_score(t[:, 1], p[:, 1]))
        )

    point = auc(list(range(n)))
    auc_lo, auc_hi = bootstrap_statistic(n, auc, seed=seed)
    metrics = {
        "n": n,
        "classes": {str(k): int(v) for k, v in zip(classes, counts)},
        "folds": folds,
        "accuracy": correct / n,
        "accuracy_ci95": [lo, hi],
        "chance": float(counts.max() / n),
        "auc_macro": point,
        "auc_macro_ci95": [auc_lo, auc_hi],
        "recall": {str(k): float((pred[labels == k] == k).mean()) for k in classes},
        "ci_method": {"accuracy": "wilson", "auc_macro": "bootstrap over examples (1000, seeded)"},
    }
    clf.fit(x, labels)
    return metrics, proba, clf


def probe_to_json(clf: Any, ms: MedSigLIP, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "logistic-regression",
        "classes": [str(k) for k in clf.classes_],
        "coef": clf.coef_.tolist(),
        "intercept": clf.intercept_.tolist(),
        "model": ms.name,
        # Where the embedding model was found, so `classify --probe DIR` loads the very model the probe was fit on.
        "model_path": str(Path(ms.path).resolve()),
        **{k: v for k, v in ms.info().items() if k != "model"},
        "metrics": {k: metrics[k] for k in ("n", "accuracy", "accuracy_ci95", "auc_macro")},
    }


def load_probe(directory: str | Path) -> dict[str, Any]:
    f = Path(directory) / "probe.json"
    try:
        probe = json.loads(f.read_text())
        _ = probe["classes"], probe["coef"], probe["intercept"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInput(f"--probe {directory}: no readable probe.json (made by `medgemma probe --out DIR`)") from None
    return dict(probe)


def probe_model(probe: dict[str, Any]) -> str | None:
    """The embedding model a probe was trained on: its checkpoint folder if still there, else the name it was given.

    A probe's weights only mean something on the embeddings of that model, so this is `classify --probe`'s default."""
    path = probe.get("model_path")
    if isinstance(path, str) and Path(path).is_dir():
        return path
    name = probe.get("model")
    return name if isinstance(name, str) and name else None


def apply_probe(probe: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Class probabilities (n, n_classes), as the fitted classifier's predict_proba: one logistic for two classes
    (the weights score the second class), a softmax over classes otherwise."""
    w = np.asarray(probe["coef"], dtype=np.float64)
    b = np.asarray(probe["intercept"], dtype=np.float64)
    if x.shape[1] != w.shape[1]:
        raise BadInput(f"--probe: it was trained on {w.shape[1]}-d embeddings; this model gives {x.shape[1]}-d")
    z = x.astype(np.float64) @ w.T + b
    if len(probe["classes"]) == 2 and w.shape[0] == 1:
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_predictions(path: Path, examples: list[Example], classes: list[str], proba: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "label", "predicted", *[f"p_{c}" for c in classes]])
        for e, p in zip(examples, proba):
            w.writerow([e.source, e.label, classes[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    os.replace(tmp, path)
