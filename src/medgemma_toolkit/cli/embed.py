"""`embed`, `classify` and `probe`: MedSigLIP embeddings, zero-shot labels and linear probes."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from ..embed import MedSigLIP

from . import app
from .common import (
    IMAGE_DEFAULTS,
    SCALE_DEFAULTS,
    DeviceOpt,
    DownloadOpt,
    DTypeOpt,
    ImageArgs,
    ScaleArgs,
    check_sources,
    option_groups,
)

ImagesOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--image",
        "-i",
        help="Image file (PNG/JPEG/TIFF/DICOM), DICOM series directory, whole-slide image or dicomweb:// URI; repeat",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object")]
PROGRESS_MIN = 8  # inputs from which a progress bar is shown on a terminal


@dataclasses.dataclass(frozen=True)
class EmbedModelOptions:
    """Which SigLIP checkpoint and how its inputs are prepared: the options of `embed`, `classify` and `probe`."""

    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", "-m", help="medsiglip-448 (default), a hub id, a registered name or a SiglipModel directory"
        ),
    ] = None
    device: DeviceOpt = "auto"
    dtype: DTypeOpt = "auto"
    allow_download: DownloadOpt = False
    batch_size: Annotated[int, typer.Option(help="Images per forward pass")] = 16
    decode_threads: Annotated[
        Optional[int],
        typer.Option("--decode-threads", help="Threads decoding images ahead of the model (default: up to 4)"),
    ] = None
    resize: Annotated[
        str,
        typer.Option(
            help="'notebook' (Google's eval resize: bilinear, no antialiasing, aspect not kept) or 'processor' (the checkpoint's image processor)"
        ),
    ] = "notebook"

    def load(self) -> MedSigLIP:
        from ..embed import MedSigLIP

        return MedSigLIP.load(
            self.model,
            device=self.device,
            dtype=self.dtype,
            allow_download=self.allow_download,
            resize=self.resize,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            workers=self.decode_threads,
        )


EMBED_DEFAULTS = EmbedModelOptions()


@contextmanager
def progress_bar(n_inputs: int, quiet: bool, what: str = "images") -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr for large inputs on a terminal; counts model input images (a series is many)."""
    if quiet or n_inputs < PROGRESS_MIN or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(what),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("embed", total=None)
        yield lambda n: bar.advance(task, n)


def _need_images(image: list[str] | None) -> list[str]:
    from ..errors import BadInput

    if not image:
        raise BadInput("give at least one --image")
    check_sources(image)
    return image


@app.command()
@option_groups(eo=EmbedModelOptions, img=ImageArgs, sc=ScaleArgs)
def embed(
    eo: EmbedModelOptions = EMBED_DEFAULTS,
    image: ImagesOpt = None,
    text: Annotated[Optional[list[str]], typer.Option("--text", help="Text to embed; repeat")] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Write the vectors to .parquet (with manifest columns) or .npy (+ .jsonl)"),
    ] = None,
    as_json: JsonOpt = False,
    img: ImageArgs = IMAGE_DEFAULTS,
    sc: ScaleArgs = SCALE_DEFAULTS,
) -> None:
    """Image and text embeddings (unit vectors) from MedSigLIP; one per model input image, with its manifest.

    Example: medgemma embed --image cxr.dcm --image ct_series/ --text "pleural effusion" --out emb.parquet
    Example: medgemma embed --image a.dcm --image b.dcm --out emb.parquet --workers 2
    """
    import numpy as np

    from ..embed.output import rows_for, write_embeddings
    from ..errors import BadInput

    if not image and not text:
        raise BadInput("give --image and/or --text")
    check_sources(image)
    opts = img.options()
    plan = sc.plan()
    if plan.parallel:
        import functools

        from ..embed.scaled import EmbedWorker, embed_scattered
        from .scaling import scatter_for

        scatter = scatter_for(plan, eo.device, quiet=as_json, what="image groups")
        assert scatter is not None
        worker = EmbedWorker(functools.partial(EmbedModelOptions.load, eo), opts)
        ims, txs, info = embed_scattered(scatter, worker, image or [], text, eo.batch_size)
    else:
        ms = eo.load()
        with progress_bar(len(image or []), as_json) as prog:
            ims = ms.embed_images(image or [], opts, prog)
        txs = ms.embed_texts(text) if text else None
        info = ms.info()
    rows = rows_for(ims.entries, "image") + (rows_for(txs.entries, "text") if txs else [])
    vecs = np.concatenate([ims.vectors] + ([txs.vectors] if txs else []))
    written = write_embeddings(out, rows, vecs) if out is not None else []
    if as_json:
        items = [{**r, "embedding": [float(v) for v in vec]} for r, vec in zip(rows, vecs)]
        print(json.dumps({**info, "items": items, "files": [str(p) for p in written]}, ensure_ascii=False))
        return
    for r, vec in zip(rows, vecs):
        what = r["text"] if r["kind"] == "text" else _describe(r)
        print(f"{r['kind']:5} {what}: [{', '.join(f'{v:+.4f}' for v in vec[:4])}, ...]")
    done = f"{len(rows)} embedding(s) of size {info['dim']} from {info['model']}"
    print(done + (f"; wrote {written[0]}" if written else ""))


def _describe(r: dict[str, Any]) -> str:
    extra = r.get("label") or (f"patch {r['patch']}" if r.get("patch") else None)
    return f"{r.get('source')}" + (f" ({extra})" if extra else "")


def _labels(labels: str | None, labels_file: Path | None) -> list[str]:
    from ..errors import BadInput

    if labels and labels_file:
        raise BadInput("give --labels or --labels-file, not both")
    if labels_file is not None:
        try:
            raw = labels_file.read_text().splitlines()
        except OSError as e:
            raise BadInput(f"--labels-file {labels_file}: cannot read ({e.strerror})") from None
    else:
        raw = (labels or "").split(",")
    out = [s.strip() for s in raw if s.strip()]
    if len(out) < 1:
        raise BadInput("give the candidate labels: --labels 'pleural effusion,normal' or --labels-file FILE")
    if len(set(out)) != len(out):
        raise BadInput("labels must be distinct")
    return out


@app.command()
@option_groups(eo=EmbedModelOptions, img=ImageArgs)
def classify(
    eo: EmbedModelOptions = EMBED_DEFAULTS,
    image: ImagesOpt = None,
    labels: Annotated[Optional[str], typer.Option(help="Comma-separated candidate labels (zero-shot)")] = None,
    labels_file: Annotated[Optional[Path], typer.Option(help="Candidate labels, one per line")] = None,
    template: Annotated[
        str, typer.Option(help="Text around each label, {} = the label (default: the label as written)")
    ] = "{}",
    scoring: Annotated[
        str,
        typer.Option(
            help="'softmax' over the labels (the model card's) or 'sigmoid' (SigLIP's independent per-label probability)"
        ),
    ] = "softmax",
    probe: Annotated[
        Optional[Path], typer.Option(help="Apply a probe made by `medgemma probe --out DIR` instead of zero-shot")
    ] = None,
    as_json: JsonOpt = False,
    img: ImageArgs = IMAGE_DEFAULTS,
) -> None:
    """Zero-shot labels for images (one score per label), or a trained linear probe's classes with --probe.

    Example: medgemma classify --image cxr.png --labels "pleural effusion,normal chest x-ray" --json
    """
    from ..embed.model import zero_shot_row

    images = _need_images(image)
    opts = img.options()
    if probe is not None:
        from ..embed.probe import apply_probe, load_probe, probe_model
        from ..errors import BadInput

        if labels or labels_file:
            raise BadInput("--probe brings its own classes; drop --labels")
        pr = load_probe(probe)
        if eo.model is None:  # the probe's own embedding model, not the default medsiglip-448
            eo = dataclasses.replace(eo, model=probe_model(pr))
        ms = eo.load()
        with progress_bar(len(images), as_json) as prog:
            emb = ms.embed_images(images, opts, prog)
        classes = list(pr["classes"])
        proba = apply_probe(pr, emb.vectors)
        rows = [
            {**e, "scores": dict(zip(classes, map(float, p))), "top": classes[int(p.argmax())]}
            for e, p in zip(emb.entries, proba)
        ]
        head: dict[str, Any] = {"labels": classes, "scoring": "probe", "probe": str(probe)}
    else:
        cands = _labels(labels, labels_file)
        ms = eo.load()
        tv = ms.embed_texts(ms.label_texts(cands, template)).vectors
        with progress_bar(len(images), as_json) as prog:
            emb = ms.embed_images(images, opts, prog)
        logits, scores = ms.scores(emb.vectors, tv, scoring)  # type: ignore[arg-type]
        rows = [zero_shot_row(e, cands, logits[i], scores[i]) for i, e in enumerate(emb.entries)]
        head = {"labels": cands, "scoring": scoring, "template": template}
    if as_json:
        print(json.dumps({**ms.info(), **head, "results": rows}, ensure_ascii=False))
        return
    for r in rows:
        ranked = sorted(r["scores"].items(), key=lambda kv: -kv[1])
        print(f"{_describe(r)}: " + ", ".join(f"{k} {v:.3f}" for k, v in ranked))


@app.command()
@option_groups(eo=EmbedModelOptions, img=ImageArgs)
def probe(
    data: Annotated[Path, typer.Option(help="Folder of class sub-folders, or CSV/TSV/JSONL with path,label")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder: embedding cache, probe.json, metrics.json, predictions.csv")
    ],
    eo: EmbedModelOptions = EMBED_DEFAULTS,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (stratified)")] = 5,
    seed: Annotated[int, typer.Option(help="Fold shuffling and bootstrap seed")] = 0,
    c: Annotated[float, typer.Option("--c", help="Inverse L2 regularisation strength (scikit-learn's C)")] = 1.0,
    max_iter: Annotated[int, typer.Option(help="Solver iterations")] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its cached embeddings")] = False,
    as_json: JsonOpt = False,
    img: ImageArgs = IMAGE_DEFAULTS,
) -> None:
    """Train a linear probe (logistic regression) on MedSigLIP embeddings, cross-validated, with 95% intervals.

    Example: medgemma probe --data cxr_folders/ --out runs/probe1 ; medgemma classify --probe runs/probe1 -i x.png
    """
    from ..embed.probe import cached_features, fit_probe, probe_to_json, read_dataset, write_predictions
    from ..errors import BadInput

    if folds < 2:
        raise BadInput("--folds must be at least 2")
    examples = read_dataset(data)
    opts = img.options()
    out.mkdir(parents=True, exist_ok=True)
    ms = eo.load()
    with progress_bar(len(examples), as_json, "examples") as prog:
        x = cached_features(ms, examples, out / "embeddings", resume, opts, prog)
    metrics, proba, clf = fit_probe(x, [e.label for e in examples], folds, seed, c, max_iter)
    classes = [str(k) for k in clf.classes_]
    write_predictions(out / "predictions.csv", examples, classes, proba)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "probe.json").write_text(json.dumps(probe_to_json(clf, ms, metrics)))
    if as_json:
        print(json.dumps({"out": str(out), **metrics}))
        return
    lo, hi = metrics["accuracy_ci95"]
    print(
        f"{metrics['n']} examples, {len(classes)} classes, {folds}-fold CV: accuracy {metrics['accuracy']:.3f} "
        f"(95% CI {lo:.3f}-{hi:.3f}; chance {metrics['chance']:.3f}), macro AUC "
        f"{metrics['auc_macro']:.3f}; probe saved to {out / 'probe.json'}"
    )
