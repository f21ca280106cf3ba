"""De-identify a DICOM file or a directory tree into a new location, with a JSON report of what changed.

UIDs are remapped with one map for the whole run, so studies, series and references stay consistent across
files. Non-DICOM files are skipped (and counted); nothing is written over the input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import __version__
from ..errors import BadInput, MedGemmaError
from .engine import FileReport, UIDMap, deidentify_dataset
from .profile import basic_profile

REPORT_NAME = "deid_report.json"


def _inputs(src: Path) -> list[tuple[Path, Path]]:
    """(input file, path relative to the output root)."""
    if src.is_file():
        return [(src, Path(src.name))]
    pairs = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith("."):
                p = Path(root) / f
                pairs.append((p, p.relative_to(src)))
    return pairs


def deidentify_path(src: str | os.PathLike[str], dst: str | os.PathLike[str], overwrite: bool = False,
                    report_path: str | os.PathLike[str] | None = None, uid_key: bytes | None = None) -> dict:
    """De-identify `src` (file or directory) into `dst`; write and return the report.

    A file goes to `dst` (or into it, when `dst` is an existing directory); a directory's tree is mirrored under
    `dst`. The report goes to `report_path`, by default `dst/deid_report.json` (or beside an output file).
    `uid_key`: a secret that makes the UID mapping the same across runs (e.g. a study sent in several batches);
    without it each run draws a random one, so runs cannot be linked.
    """
    from ..imaging.series import read_instance

    src_p, dst_p = Path(src), Path(dst)
    if not src_p.exists():
        raise BadInput(f"{src}: not found")
    if src_p.resolve() == dst_p.resolve() or (src_p.is_dir() and dst_p.resolve().is_relative_to(src_p.resolve())):
        raise BadInput(f"{dst}: the output must not be the input or inside it")
    single = src_p.is_file()
    if single and dst_p.is_dir():
        dst_p = dst_p / src_p.name
    out_root = dst_p.parent if single else dst_p
    if not single and dst_p.exists() and any(dst_p.iterdir()) and not overwrite:
        raise BadInput(f"{dst}: output directory is not empty (use --overwrite)")
    if single and dst_p.exists() and not overwrite:
        raise BadInput(f"{dst}: exists (use --overwrite)")
    if uid_key is not None and len(uid_key) < 16:
        raise BadInput("the UID key must hold at least 16 bytes")
    uids = UIDMap(salt=uid_key)
    files: list[dict] = []
    skipped: list[dict] = []
    warnings = 0
    for path, rel in _inputs(src_p):
        target = dst_p if single else dst_p / rel
        try:
            ds = read_instance(path)
        except MedGemmaError as e:
            skipped.append({"file": str(rel), "reason": "not DICOM" if "not a DICOM" in str(e) else "unreadable"})
            continue
        rep: FileReport = deidentify_dataset(ds, uids)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            ds.save_as(target)
        except Exception as e:  # a value pydicom cannot write back; never leave a half-written file behind
            target.unlink(missing_ok=True)
            skipped.append({"file": str(rel), "reason": f"cannot write ({type(e).__name__})"})
            continue
        warnings += len(rep.warnings)
        files.append({"file": str(rel), **rep.to_dict()})
    if not files:
        raise BadInput(f"{src}: no DICOM files to de-identify")
    profile = basic_profile()
    report = {
        "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
        "profile_table_version": profile.version,
        "options": {"private_tags": "removed",
                    "uids": "remapped (2.25 form, " + ("consistent across runs with the same key)" if uid_key
                                                       else "consistent within this run)")},
        "toolkit_version": __version__,
        "files_written": len(files),
        "files_skipped": skipped,
        "uids_remapped": len(uids),
        "warnings": warnings,
        "files": files,
    }
    rp = Path(report_path) if report_path else (out_root / REPORT_NAME if not single else dst_p.with_name(dst_p.name + ".deid.json"))
    rp.parent.mkdir(parents=True, exist_ok=True)
    rp.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(rp)
    return report
