"""`deid`: strip identifying information from DICOM files before they leave the hospital (or reach a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import app
from .common import SCALE_DEFAULTS, ScaleArgs, option_groups


def _flag(help_: str) -> Any:
    return typer.Option(help=help_)


@app.command()
@option_groups(sc=ScaleArgs)
def deid(
    src: Annotated[
        Optional[Path], typer.Argument(metavar="IN", help="DICOM file or directory (searched recursively)")
    ] = None,
    dst: Annotated[
        Optional[str],
        typer.Argument(
            metavar="OUT",
            help="Output directory (mirrors a directory IN, names replaced unless --keep-file-names); for a file IN: OUT/ or an existing directory gets OUT/<name>, anything else is the output file",
        ),
    ] = None,
    report: Annotated[
        Optional[Path], typer.Option(help="Report JSON path (default: OUT/deid_report.json, or OUTFILE.deid.json)")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty OUT")] = False,
    uid_key: Annotated[
        Optional[Path],
        typer.Option("--uid-key", help="File with a secret (16+ bytes): same UIDs and date shifts across runs"),
    ] = None,
    verify: Annotated[
        Optional[Path],
        typer.Option(
            "--verify",
            metavar="DIR",
            help="Check a tree instead: list attributes the profile forbids (names only); exit 1 if any",
        ),
    ] = None,
    trust_declared_options: Annotated[
        bool,
        typer.Option(
            "--trust-declared-options",
            help="With --verify: relax the Basic Profile check by the options each file declares (default: strict)",
        ),
    ] = False,
    reject_burned_in: Annotated[
        bool,
        typer.Option(
            "--reject-burned-in",
            help="Skip (and report) images whose BurnedInAnnotation is YES, or absent in US/SC/XA/OT and secondary captures",
        ),
    ] = False,
    rename_files: Annotated[
        Optional[bool],
        typer.Option(
            "--rename-files/--keep-file-names",
            help="Replace every folder and file name of the output tree by a keyed stand-in (DICOMDIR file IDs follow); default: on for a directory IN",
        ),
    ] = None,
    clean_pixels: Annotated[
        bool,
        typer.Option(
            "--clean-pixels",
            help="Clean Pixel Data option: find text burned into images (OCR, tesseract) and blank it; sets BurnedInAnnotation NO",
        ),
    ] = False,
    pixel_rules: Annotated[
        Optional[Path],
        typer.Option(
            "--pixel-rules",
            metavar="FILE",
            help="With --clean-pixels: JSON rules of regions to blank per Manufacturer/ManufacturerModelName/Rows/Columns",
        ),
    ] = None,
    retain_safe_private: Annotated[
        Optional[Path],
        typer.Option(
            "--retain-safe-private",
            metavar="FILE",
            help="Retain Safe Private: keep the private elements listed in FILE (creator,group,element rows)",
        ),
    ] = None,
    retain_uids: Annotated[bool, _flag("Retain UIDs option")] = False,
    retain_device_identity: Annotated[bool, _flag("Retain Device Identity option")] = False,
    retain_institution_identity: Annotated[bool, _flag("Retain Institution Identity option")] = False,
    retain_patient_characteristics: Annotated[bool, _flag("Retain Patient Characteristics option")] = False,
    retain_full_dates: Annotated[
        bool, _flag("Retain Longitudinal Temporal Information with Full Dates option")
    ] = False,
    retain_modified_dates: Annotated[
        bool,
        _flag(
            "Retain Longitudinal Temporal Information with Modified Dates option: one shift per patient (keyed like --uid-key)"
        ),
    ] = False,
    clean_structured_content: Annotated[
        bool,
        _flag(
            "Clean Structured Content option: declare it (SR content trees and waveform annotations are always kept, identifying leaves replaced, TEXT cleaned)"
        ),
    ] = False,
    clean_descriptors: Annotated[
        bool, _flag("Clean Descriptors option: keep descriptions with the file's identifiers taken out")
    ] = False,
    sc: ScaleArgs = SCALE_DEFAULTS,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Finish an interrupted run into the same OUT: skip the files it journaled as done (needs --uid-key and the same options)",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
) -> None:
    """De-identify DICOM with the PS3.15 Annex E Basic Profile (Table E.1-1, every row, at every depth) and options.

    The report names changed attributes, never values. Pixel data is kept unchanged unless --clean-pixels (a
    warning is printed when BurnedInAnnotation is YES or unknown). Exit code 2 when any DICOM file failed (nothing
    is written for it).

    --workers N spreads a directory over N processes; --ray ADDRESS over a Ray cluster (every node must read IN and
    write OUT: shared storage). Both give the same files and report as one process.

    Examples: medgemma deid study/ study_deid/ ; medgemma deid a.dcm out/ ; medgemma deid --clean-pixels us/ us_deid/ ;
    medgemma deid --verify study_deid/ ; medgemma deid --workers 8 archive/ archive_deid/ ;
    medgemma deid --ray auto --uid-key key.bin /shared/archive /shared/archive_deid
    """
    import sys

    from ..deid import Options, SafePrivate, deidentify_path
    from ..errors import BadInput

    if verify is not None:
        if src is not None or dst is not None:
            raise BadInput("--verify takes one directory and no IN/OUT")
        _verify(verify, trust_declared_options)
        return
    if src is None or dst is None:
        raise BadInput("give IN and OUT (or --verify DIR)")
    plan = sc.plan()
    if (plan.parallel or resume) and src.is_file():
        raise BadInput("--workers, --ray and --resume take a directory IN")
    try:
        opts = Options(
            retain_safe_private=retain_safe_private is not None,
            retain_uids=retain_uids,
            retain_device_identity=retain_device_identity,
            retain_institution_identity=retain_institution_identity,
            retain_patient_characteristics=retain_patient_characteristics,
            retain_full_dates=retain_full_dates,
            retain_modified_dates=retain_modified_dates,
            clean_descriptors=clean_descriptors,
            clean_structured_content=clean_structured_content,
        )
    except ValueError as e:
        raise BadInput(str(e)) from None
    safe = SafePrivate.load(retain_safe_private) if retain_safe_private is not None else None
    cleaner = None
    if pixel_rules is not None and not clean_pixels:
        raise BadInput("--pixel-rules needs --clean-pixels")
    if clean_pixels:
        from ..deid.pixels import PixelCleaner, load_rules

        cleaner = PixelCleaner(load_rules(pixel_rules) if pixel_rules is not None else None)
    key = None
    if uid_key is not None:
        try:
            key = uid_key.read_bytes()
        except OSError:
            raise BadInput(f"{uid_key}: cannot read the UID key file") from None
    rep = deidentify_path(
        src,
        dst,
        overwrite=overwrite,
        report_path=report,
        uid_key=key,
        options=opts,
        safe_private=safe,
        reject_burned_in=reject_burned_in,
        pixel_cleaner=cleaner,
        rename_files=rename_files,
        plan=plan,
        resume=resume,
        quiet=quiet,
    )
    print(
        f"de-identified {rep['files_written']} file(s) into {dst}; skipped {rep['files_skipped']} (not DICOM); "
        f"rejected {rep['files_rejected']} (burned-in); failed {rep['files_failed']}; report: {rep['report_path']}"
    )
    if rep["warnings"]:
        print(
            f"warning: {rep['warnings']} file(s) may have identifying text burned into the pixels (see the report)",
            file=sys.stderr,
        )
    if rep["files_failed"]:
        raise BadInput(
            f"{rep['files_failed']} DICOM file(s) failed (truncated or corrupt; nothing written for "
            f"them, see the report)"
        )


def _verify(root: Path, trust_declared_options: bool) -> None:
    from ..deid import verify_tree
    from ..errors import BadInput

    if not root.is_dir():
        raise BadInput(f"{root}: not a directory")
    checked = flagged = failed = 0
    for rel, found, error in verify_tree(root, trust_declared_options):
        if error is not None:
            failed += 1
            print(f"{rel}: error: {error}")
            continue
        checked += 1
        if found:
            flagged += 1
            print(f"{rel}: {', '.join(found)}")
    print(f"verified {checked} DICOM file(s): {flagged} with attributes the profile forbids; {failed} unreadable")
    if flagged or failed:
        raise typer.Exit(1)
