"""`stow`, and the `--sr`/`--stow` helpers `ask` and `localize` share: DICOM results back into the PACS."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

SrOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--sr",
        help="Also write the result as a DICOM Structured Report (needs DICOM input; Patient/Study copied from it)",
    ),
]
ScOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--sc",
        help="Also write the image with the boxes burnt in as a DICOM Secondary Capture, for viewers without SR",
    ),
]
StowOpt = Annotated[
    Optional[str],
    typer.Option(
        "--stow",
        help="Store the --sr (and --sc) file on this DICOMweb server (STOW-RS), e.g. https://pacs/dicom-web; credentials "
        "from MEDGEMMA_DICOMWEB_TOKEN or _USER/_PASSWORD",
    ),
]


def check_sr_options(sr: Path | None, stow_url: str | None, sc: Path | None = None) -> None:
    """Before any model loads: --stow needs a file to store (--sr, or --sc), its URL must be a usable DICOMweb
    root, and the outputs must be file names."""
    from ..errors import BadInput

    if sr is not None or sc is not None:
        require_highdicom()
    if stow_url is not None:
        if sr is None and sc is None:
            raise BadInput("--stow stores what --sr (or --sc) writes; give --sr OUT.dcm too")
        from ..sr.stow import parse_stow_url

        parse_stow_url(stow_url)
    for flag, path in (("--sr", sr), ("--sc", sc)):
        if path is not None and path.is_dir():
            raise BadInput(f"{flag} {path}: is a directory; give a file name such as result.dcm")
    if sr is not None and sc is not None and sr.resolve() == sc.resolve():
        raise BadInput("--sr and --sc name the same file")


def require_highdicom() -> None:
    import importlib.util

    from ..errors import BackendUnavailable

    if importlib.util.find_spec("highdicom") is None:
        raise BackendUnavailable("--sr needs highdicom: pip install 'medgemma-toolkit[sr]'")


def write_dicom(obj: Any, path: Path, what: str, quiet: bool = False) -> Path:
    """Write a highdicom object to `path`; say so on stderr (the path and what it is, never its contents)."""
    from ..sr import write_sr

    write_sr(obj, path)
    if not quiet:
        print(f"wrote {path} ({what})", file=sys.stderr)
    return path


def store(paths: list[Path], stow_url: str, quiet: bool = False) -> list[dict[str, Any]]:
    """STOW-RS of the files just written, one stderr line each; a refused instance fails the command."""
    from ..sr.stow import read_for_stow, stow

    results = []
    for r in stow(read_for_stow(paths), stow_url):
        results.append(r)
        if not quiet or not r.ok:
            print(r.line(), file=sys.stderr)
    _fail_if_refused(results)
    return [r.to_dict() for r in results]


def write_and_store(sr: Any, path: Path, stow_url: str | None, what: str, quiet: bool = False) -> dict[str, Any]:
    """Write `sr` to `path` and store it if asked. Returns the fields `--json` adds."""
    write_dicom(sr, path, what, quiet)
    out: dict[str, Any] = {"sr": str(path)}
    if stow_url is not None:
        out["stored"] = store([path], stow_url, quiet)
    return out


def _fail_if_refused(results: list) -> None:
    from ..imaging.dicomweb import DicomWebError

    refused = [r for r in results if not r.ok]
    if refused:
        raise DicomWebError(f"{len(refused)} of {len(results)} instances were not stored on {refused[0].host}")


def stow(
    files: Annotated[list[Path], typer.Argument(help="DICOM files to store (SRs, Secondary Captures, any instance)")],
    to: Annotated[str, typer.Option("--to", help="The DICOMweb root, e.g. https://pacs/dicom-web")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per instance")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only failures")] = False,
) -> None:
    """Store DICOM files on a PACS over DICOMweb (STOW-RS); one line per instance.

    Credentials come from MEDGEMMA_DICOMWEB_TOKEN (bearer) or MEDGEMMA_DICOMWEB_USER/_PASSWORD and go to that
    server only; redirects are refused. Exit status 2 when any instance was refused.

    Example: medgemma stow result_sr.dcm --to https://pacs.example.org/dicom-web
    Example: medgemma stow out/*.dcm --to http://127.0.0.1:8042/dicom-web --json
    """
    from ..sr.stow import parse_stow_url, read_for_stow
    from ..sr.stow import stow as run_stow

    parse_stow_url(to)  # a bad URL fails before any file is read
    results = []
    for r in run_stow(read_for_stow(files), to):
        results.append(r)
        if as_json:
            print(json.dumps(r.to_dict()), flush=True)
        elif not quiet or not r.ok:
            print(r.line(), flush=True)
    _fail_if_refused(results)
