"""`deid`: strip identifying information from DICOM files before they leave the hospital (or reach a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app


@app.command()
def deid(
    src: Annotated[Path, typer.Argument(metavar="IN", help="DICOM file or directory (searched recursively)")],
    dst: Annotated[Path, typer.Argument(metavar="OUT", help="Output file or directory (the input tree is mirrored)")],
    report: Annotated[Optional[Path], typer.Option(help="Report JSON path (default: OUT/deid_report.json)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty OUT")] = False,
    uid_key: Annotated[Optional[Path], typer.Option("--uid-key", help="File with a secret (16+ bytes): same UID mapping across runs")] = None,
) -> None:
    """De-identify DICOM with the PS3.15 Annex E Basic Profile; the report names changed attributes, never values.

    UIDs are remapped consistently within the run, private tags are removed, pixel data is kept (a warning is
    printed when BurnedInAnnotation is YES or unknown).

    Example: medgemma deid study/ study_deid/
    """
    import sys

    from ..deid import deidentify_path

    from ..errors import BadInput

    key = None
    if uid_key is not None:
        try:
            key = uid_key.read_bytes()
        except OSError:
            raise BadInput(f"{uid_key}: cannot read the UID key file") from None
    rep = deidentify_path(src, dst, overwrite=overwrite, report_path=report, uid_key=key)
    skipped = len(rep["files_skipped"])
    print(f"de-identified {rep['files_written']} file(s) into {dst}; skipped {skipped}; report: {rep['report_path']}")
    if rep["warnings"]:
        n = sum(1 for f in rep["files"] if f["warnings"])
        print(f"warning: {n} file(s) may have identifying text burned into the pixels (see the report)", file=sys.stderr)
