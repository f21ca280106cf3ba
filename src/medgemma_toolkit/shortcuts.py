"""The toolkit's tasks as plain functions, for notebooks and scripts: evaluate, deidentify, localize_anatomy.

Each is a thin, typed front to the same code the `medgemma` command runs (so results match the CLI's), importing
its capability only when called. Embeddings: `MedSigLIP.load(...).embed_images(...)`.

>>> import medgemma_toolkit as mgt
>>> with mgt.MedGemma.load("medgemma-4b-it") as mg:
...     summary = mgt.evaluate(mg, "medqa", limit=20)
...     boxes = mgt.localize_anatomy(mg, "cxr.png", ["right lung"]).boxes
>>> mgt.deidentify("study/", "study_deid/")["files_written"]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from .api import MedGemma
    from .localize.run import LocalizeResult


def evaluate(
    model: MedGemma,
    task: str,
    *,
    data: str | None = None,
    out: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    split: str | None = None,
    max_new_tokens: int | None = None,
    think: bool = False,
    resume: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Score `model` on a benchmark task with MedGemma's protocol, as `medgemma eval` does; returns summary.json.

    Args:
        model: a loaded `MedGemma`.
        task: a task name (`medgemma eval list`) or a task `.yaml` file.
        data: the release's data file; default the task's shipped sample.
        out: the run folder (records, summary, report); default a new `eval-runs/TASK-<UTC time>` (with
            `resume`, the task's latest), as `medgemma eval` picks it.
        limit: score only the first N items.
        options: further `EvalOptions` fields (batch_size, mode, conditions, image_root, ids, n_boot, ...).
    """
    from .eval.runner import EvalOptions, default_run_dir, run_eval
    from .eval.spec import get_task

    opts = EvalOptions(
        task=task,
        data=data,
        out=Path(out) if out is not None else default_run_dir(get_task(task).name, resume),
        limit=limit,
        split=split,
        max_new_tokens=max_new_tokens,
        think=think,
        resume=resume,
        progress=False,
        **options,
    )
    return run_eval(model, opts)


def deidentify(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    report: str | os.PathLike[str] | None = None,
    uid_key: bytes | None = None,
    reject_burned_in: bool = False,
) -> dict[str, Any]:
    """De-identify a DICOM file or tree into `dst` (PS3.15 Basic Profile), as `medgemma deid`; returns the summary.

    `uid_key` makes UIDs and date shifts the same across runs; without it each run draws its own. Check the
    summary's `files_failed`.
    """
    from .deid.files import deidentify_path

    return deidentify_path(
        src, dst, overwrite=overwrite, report_path=report, uid_key=uid_key, reject_burned_in=reject_burned_in
    )


def localize_anatomy(
    model: MedGemma,
    image: str | os.PathLike[str] | Image.Image,
    objects: list[str],
    *,
    max_new_tokens: int | None = None,
) -> LocalizeResult:
    """Boxes around named anatomy in one 2D image (Google's localisation prompt), in the image's own pixels."""
    from PIL import Image as PILImage

    from .imaging import load_image
    from .localize.run import localize as run_localize

    picture = image if isinstance(image, PILImage.Image) else load_image(image)
    return run_localize(model, picture, objects, max_new_tokens)
