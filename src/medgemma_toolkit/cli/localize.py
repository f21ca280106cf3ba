"""`localize`: boxes around named anatomy in one image (or a table of images), drawn if asked."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .common import IMAGE_DEFAULTS, MODEL_DEFAULTS, ImageArgs, ModelOptions, option_groups
from .sr import SrOpt, StowOpt


@app.command()
@option_groups(mo=ModelOptions, img=ImageArgs)
def localize(
    objects: Annotated[
        Optional[list[str]], typer.Argument(help='What to find, e.g. "right lung" "left clavicle" (one answer each)')
    ] = None,
    mo: ModelOptions = MODEL_DEFAULTS,
    image: Annotated[
        Optional[Path], typer.Option("--image", "-i", help="One 2D image: PNG, JPEG, TIFF, BMP, WebP or DICOM file")
    ] = None,
    batch: Annotated[
        Optional[Path],
        typer.Option(
            help="CSV/TSV/JSONL with an 'image' column (paths relative to the file) and optional 'objects' "
            "(';'-separated); prints one JSON line per row"
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print {boxes: [{label, box_2d (model's 0-1000 frame), xyxy (pixels)}], answer, unparsed}"
        ),
    ] = False,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--out", "-o", "--output", help="Write the image with the boxes drawn (PNG); with --batch, a folder"
        ),
    ] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Per object; default: the preset's (1000)")] = None,
    img: ImageArgs = IMAGE_DEFAULTS,
    sr: SrOpt = None,
    stow: StowOpt = None,
) -> None:
    """Find anatomy in a chest X-ray with Google's localisation prompt; boxes in the original image's pixels.

    Example: medgemma localize -m medgemma-1.5-4b-it --image cxr.dcm "right lung" "left clavicle" -o boxes.png
    Example: medgemma localize --upstream http://gpu:8000 --image wide.png "right lung" --json
    Example: medgemma localize -m medgemma-1.5-4b-it --batch images.csv "heart" -o overlays/ > boxes.jsonl
    Example: medgemma localize -m medgemma-1.5-4b-it -i cxr.dcm "right lung" --sr boxes_sr.dcm --stow https://pacs/dicom-web
    """
    from ..errors import BadInput
    from ..imaging import load_image
    from ..localize.overlay import save_overlay
    from ..localize.run import check_objects
    from ..localize.run import localize as run_localize

    if (image is None) == (batch is None):
        raise BadInput("give --image IMAGE (one image) or --batch FILE (a table of images)")
    opts = img.options()
    from .sr import check_sr_options

    check_sr_options(sr, stow)
    if sr is not None and batch is not None:
        raise BadInput("--sr writes one report for one image; use it with --image, not --batch")
    if batch is not None:
        from ..localize.table import run_table

        default = check_objects(objects) if objects else []
        mg = mo.load()

        def write(rec: dict) -> None:
            print(json.dumps(rec, ensure_ascii=False), flush=True)

        rows, failed = run_table(mg, batch, default, opts, write, output, max_new_tokens)
        if failed:
            print(f"note: {failed} of {rows} rows failed (see their 'error')", file=sys.stderr)
        return
    assert image is not None
    names = check_objects(objects or [])
    source = _sr_source(image) if sr is not None else None  # a PNG with --sr fails before the model loads
    picture = load_image(image, opts)  # before loading a model: a bad image fails fast
    mg = mo.load()
    result = run_localize(mg, picture, names, max_new_tokens)
    sr_fields: dict = {}
    if sr is not None:
        sr_fields = _write_sr(mg, source, result, opts, sr, stow, quiet=False)
    if output is not None:
        save_overlay(picture, [(b.label, b.xyxy) for b in result.boxes], output)
    if as_json:
        out = result.to_dict()
        out["demo_model"] = mg.is_demo
        if output is not None:
            out["overlay"] = str(output)
        out.update(sr_fields)
        print(json.dumps(out, ensure_ascii=False))
        return
    for b in result.boxes:
        x0, y0, x1, y1 = b.xyxy
        print(f"{b.label}: x0={x0:g} y0={y0:g} x1={x1:g} y1={y1:g}  (box_2d {list(b.box_2d)})")
    for u in result.unparsed:
        print(f"unparsed: {u}", file=sys.stderr)
    if not result.boxes:
        print("no boxes found in the answer", file=sys.stderr)
    if output is not None:
        print(f"wrote {output} ({picture.width}x{picture.height}, {len(result.boxes)} boxes)", file=sys.stderr)


def _sr_source(image: Path):
    """The source's DICOM header; a non-DICOM image is a one-line error (an SR must reference an instance)."""
    from ..sr import read_header

    return read_header(image)


def _write_sr(mg, source, result, opts, path: Path, stow_url: str | None, quiet: bool) -> dict:
    """The boxes as a TID 1500 report on the frame `load_image` decoded (the middle one unless --frame)."""
    from ..sr import Region, algorithm_of, measurement_report
    from .sr import write_and_store

    frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    frame = ((frames // 2 if opts.frame is None else opts.frame) + 1) if frames > 1 else None
    regions = [Region(b.label, b.xyxy) for b in result.boxes]
    report = measurement_report(source, regions, algorithm_of(mg, result.preset), frame)
    what = f"TID 1500 measurement report, {len(regions)} region{'s' if len(regions) != 1 else ''}"
    return write_and_store(report, path, stow_url, what, quiet)
