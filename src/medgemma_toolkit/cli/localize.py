"""`localize`: boxes around named anatomy in one image (or a table of images), drawn if asked."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from PIL import Image

    from ..api import MedGemma
    from ..imaging import ImageOptions
    from ..localize.run import LocalizeResult

from . import app
from .common import IMAGE_DEFAULTS, MODEL_DEFAULTS, SCALE_DEFAULTS, ImageArgs, ModelOptions, ScaleArgs, option_groups
from .sr import ScOpt, SrOpt, StowOpt, check_sr_options


@app.command()
@option_groups(mo=ModelOptions, img=ImageArgs, scl=ScaleArgs)
def localize(
    objects: Annotated[
        Optional[list[str]], typer.Argument(help='What to find, e.g. "right lung" "left clavicle" (one answer each)')
    ] = None,
    mo: ModelOptions = MODEL_DEFAULTS,
    image: Annotated[
        Optional[str],
        typer.Option(
            "--image",
            "-i",
            help="One 2D image: PNG, JPEG, TIFF, BMP, WebP or DICOM file, or a DICOMweb instance "
            "(dicomweb://host/path/studies/S/series/R/instances/I; a study or series holding one instance)",
        ),
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
    sc: ScOpt = None,
    stow: StowOpt = None,
    scl: ScaleArgs = SCALE_DEFAULTS,
) -> None:
    """Find anatomy in a chest X-ray with Google's localisation prompt; boxes in the original image's pixels.

    Example: medgemma localize -m medgemma-1.5-4b-it --image cxr.dcm "right lung" "left clavicle" -o boxes.png
    Example: medgemma localize --upstream http://gpu:8000 --image wide.png "right lung" --json
    Example: medgemma localize -m medgemma-1.5-4b-it --batch images.csv "heart" -o overlays/ > boxes.jsonl
    Example: medgemma localize -m medgemma-1.5-4b-it --batch images.csv "heart" --workers 2 > boxes.jsonl
    Example: medgemma localize -m medgemma-1.5-4b-it -i cxr.dcm "right lung" --sr boxes_sr.dcm --stow https://pacs/dicom-web
    Example: medgemma localize -m medgemma-1.5-4b-it -i dicomweb://pacs/dicom-web/studies/S/series/R/instances/I "heart" --sr sr.dcm
    """
    from ..errors import BadInput
    from ..imaging import load_image
    from ..imaging.dicomweb import parse_dicomweb_uri
    from ..localize.overlay import save_overlay
    from ..localize.run import check_objects
    from ..localize.run import localize as run_localize

    if (image is None) == (batch is None):
        raise BadInput("give --image IMAGE (one image) or --batch FILE (a table of images)")
    opts = img.options()
    check_sr_options(sr, stow, sc)
    if (sr is not None or sc is not None) and batch is not None:
        raise BadInput("--sr and --sc write one file for one image; use them with --image, not --batch")
    plan = scl.plan()
    if plan.parallel and batch is None:
        raise BadInput("--workers and --ray spread the rows of --batch FILE; one --image runs in this process")
    if batch is not None:
        from ..localize.table import run_table

        default = check_objects(objects) if objects else []

        def write(rec: dict) -> None:
            print(json.dumps(rec, ensure_ascii=False), flush=True)

        if plan.parallel:
            from ..localize.scaled import LocalizeWorker, run_table_scattered
            from .scaling import model_loader, scatter_for

            scatter = scatter_for(plan, mo.device, quiet=False, what="rows")
            assert scatter is not None
            worker = LocalizeWorker(model_loader(mo), opts, output, max_new_tokens)
            rows, failed = run_table_scattered(scatter, worker, batch, default, write)
        else:
            rows, failed = run_table(mo.load(), batch, default, opts, write, output, max_new_tokens)
        if failed:
            print(f"note: {failed} of {rows} rows failed (see their 'error')", file=sys.stderr)
        return
    assert image is not None
    names = check_objects(objects or [])
    dicom_out = sr is not None or sc is not None
    remote = parse_dicomweb_uri(image)
    if remote is not None:  # fetched before the model loads: a wrong reference or a refused login fails fast
        source, picture = _remote_image(remote, opts)
    else:
        source = _sr_source(Path(image)) if dicom_out else None  # a PNG with --sr fails before the model loads
        picture = load_image(image, opts)  # before loading a model: a bad image fails fast
    mg = mo.load()
    result = run_localize(mg, picture, names, max_new_tokens)
    sr_fields: dict = {}
    if dicom_out:
        sr_fields = _write_dicom(mg, source, picture, result, opts, sr, sc, stow)
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


def _remote_image(ref: Any, opts: ImageOptions) -> tuple[Any, Image.Image]:
    """A DICOMweb instance (credentials, origin and redirect rules of `imaging/dicomweb.py`, as `ask` reads them):
    its dataset, whose header the SR cites, and its frame as RGB at its own size."""
    from ..imaging.dicom import dicom_to_rgb
    from ..imaging.dicomweb import fetch_one_instance

    ds = fetch_one_instance(ref, opts.budget)
    return ds, dicom_to_rgb(ds, f"DICOMweb instance on {ref.host}", opts)


def _sr_source(image: Path) -> Any:
    """The source's DICOM header; a non-DICOM image is a one-line error (an SR must reference an instance)."""
    from ..sr import read_header

    return read_header(image)


def _write_dicom(
    mg: MedGemma,
    source: Any,
    picture: Image.Image,
    result: LocalizeResult,
    opts: ImageOptions,
    sr: Path | None,
    sc: Path | None,
    stow_url: str | None,
) -> dict[str, Any]:
    """The boxes as a TID 1500 report on the frame `load_image` decoded (the middle one unless --frame) and/or as
    a Secondary Capture of the drawn overlay; then STOW-RS of both if asked. Returns the `--json` fields."""
    from ..localize.overlay import draw_boxes
    from ..sr import Region, algorithm_of, measurement_report
    from ..sr.capture import overlay_capture
    from .sr import store, write_dicom

    algo = algorithm_of(mg, result.preset)
    boxes = [(b.label, b.xyxy) for b in result.boxes]
    out: dict = {}
    written = []
    if sr is not None:
        frames = int(getattr(source, "NumberOfFrames", 1) or 1)
        frame = ((frames // 2 if opts.frame is None else opts.frame) + 1) if frames > 1 else None
        report = measurement_report(source, [Region(label, xyxy) for label, xyxy in boxes], algo, frame)
        n = len(boxes)
        written.append(write_dicom(report, sr, f"TID 1500 measurement report, {n} region{'s' if n != 1 else ''}"))
        out["sr"] = str(sr)
    if sc is not None:
        written.append(write_dicom(overlay_capture(source, draw_boxes(picture, boxes), algo), sc, "Secondary Capture"))
        out["sc"] = str(sc)
    if stow_url is not None:
        out["stored"] = store(written, stow_url)
    return out
