"""De-identify a DICOM file or a directory tree into a new location, with a JSON report of what changed.

Naming: a directory IN is mirrored under the directory OUT, every folder and file name replaced by a keyed
stand-in unless file names are kept (names are often patient IDs; DICOMDIR file IDs follow). A file IN goes into OUT/<name of IN> when OUT is an
existing directory or is written with a trailing slash (`deid a.dcm out/`, created if needed); otherwise OUT is
the output file's own path. Files are streamed one at a time (memory does not grow with their number); each is
read fully and checked before anything is written, then written under a temporary name in the target directory
and renamed, so an output is either complete or absent. UIDs are replaced with one keyed function for the whole
run, so studies, series and references stay consistent across files. Non-DICOM files are skipped and counted;
broken DICOM files are errors (counted, named in the report, nothing written for them).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput, MedGemmaError, UnsupportedFormat
from ..provenance import toolkit_version
from .dicomdir import drop_records, file_ids, is_dicomdir, record_links, record_patients, relink, repair_records
from .engine import UIDMap, deidentify_dataset, method_codes
from .pixels import CLEAN_PIXEL_CODE, PixelCleaner, PixelCleanError
from .profile import Options, edition
from .read import read_checked
from .safe_private import SafePrivate

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..scale import ScalePlan

REPORT_NAME = "deid_report.json"
TEXT_MODALITIES = {"US", "SC", "XA", "OT"}
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def _inputs(src: Path) -> Iterator[tuple[Path, Path]]:
    """(input file, path relative to the output root), lazily, in a stable order."""
    if src.is_file():
        yield src, Path(src.name)
        return
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith("."):
                p = Path(root) / f
                yield p, p.relative_to(src)


def renamed(rel: Path, uids: UIDMap) -> Path:
    """`rel` with every folder and file name replaced by a keyed stand-in (a file's suffix and the name DICOMDIR
    kept), the same for the same input path within a run (across runs with the same key)."""
    parts = rel.parts
    out = []
    for i, part in enumerate(parts):
        if i == len(parts) - 1 and part.upper() == "DICOMDIR":
            out.append(part)
            continue
        stem = uids.file_name("/".join(parts[: i + 1]))
        out.append(stem + (Path(part).suffix.lower() if i == len(parts) - 1 else ""))
    return Path(*out)


def burned_in_risk(ds: Dataset) -> bool:
    """BurnedInAnnotation YES, or absent/unknown in a modality that commonly carries text in its pixels."""
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return True
    text_kind = str(ds.get("Modality", "") or "").upper() in TEXT_MODALITIES or str(
        ds.get("SOPClassUID", "")
    ).startswith(SECONDARY_CAPTURE_PREFIX)
    return burned != "NO" and text_kind


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings quote the values they complain about (UIDs, names): none reaches stderr or a log."""
    log = logging.getLogger("pydicom")
    disabled = log.disabled
    log.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.disabled = disabled


def _complete_meta(ds: Dataset) -> None:
    """A data set read without a file meta group gets one, so that what we write is a Part 10 file (the
    transfer syntax is the encoding it was read in)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        return
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (None, None))
        if implicit is None:
            return
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _stale(path: Path) -> None:
    """Remove what a killed run left beside `path` (`.NAME.<pid>.tmp`): a re-run must not leave it behind."""
    prefix = f".{path.name}."
    for old in path.parent.glob(f"{glob_escape(prefix)}*.tmp"):
        if old.name[len(prefix) : -len(".tmp")].isdigit():  # only NAME's own leftovers, not NAME.deid.json's
            old.unlink(missing_ok=True)


def _write_atomic(ds: Dataset, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    _stale(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _complete_meta(ds)
    try:
        try:  # a standard Part 10 file: preamble, complete file meta group (its length recomputed)
            ds.save_as(tmp, enforce_file_format=True)
        except (AttributeError, ValueError):  # a raw data set without what a file meta group needs: as read
            ds.save_as(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class _Report:
    """The JSON report, written as it goes (per-file entries are not kept in memory), renamed when complete."""

    def __init__(self, path: Path, head: dict) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _stale(path)
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.f = open(self.tmp, "w", encoding="utf-8")
        self.f.write(json.dumps(head, indent=2)[:-2] + ',\n  "files": [')
        self.first = True

    def add(self, entry: dict) -> None:
        self.f.write(("\n    " if self.first else ",\n    ") + json.dumps(entry))
        self.first = False

    def close(self, tail: dict) -> None:
        self.f.write("\n  ],\n" + json.dumps(tail, indent=2)[2:] + "\n")
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def _targets(src_p: Path, dst: str, overwrite: bool) -> tuple[Path, Path, bool]:
    """(output file or root, default report path, single file?) by the naming rule of the module docstring."""
    dst_p = Path(dst)
    if src_p.resolve() == dst_p.resolve() or (src_p.is_dir() and dst_p.resolve().is_relative_to(src_p.resolve())):
        raise BadInput(f"{dst}: the output must not be the input or inside it")
    if src_p.is_file():
        if dst.endswith(("/", os.sep)) or dst_p.is_dir():
            dst_p = dst_p / src_p.name
        if dst_p.exists() and not overwrite:
            raise BadInput(f"{dst_p}: exists (use --overwrite)")
        return dst_p, dst_p.with_name(dst_p.name + ".deid.json"), True
    if dst_p.exists() and not dst_p.is_dir():
        raise BadInput(f"{dst}: is a file; a directory input needs an output directory")
    if dst_p.exists() and any(dst_p.iterdir()) and not overwrite:
        raise BadInput(f"{dst}: output directory is not empty (use --overwrite)")
    return dst_p, dst_p / REPORT_NAME, False


def report_head(opts: Options, keyed: bool, rename: bool, cleans_pixels: bool) -> dict:
    """The report's settings part (the same for a run in one process, a pool or on Ray)."""
    return {
        "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
        "table": edition(),
        "options": opts.selected(),
        "method_codes": [
            {"CodeValue": v, "CodingSchemeDesignator": "DCM", "CodeMeaning": m} for v, m in method_codes(opts)
        ],
        "private_tags": "kept when on the safe list" if opts.retain_safe_private else "removed",
        "uids": "kept"
        if opts.retain_uids
        else "replaced (2.25 form, "
        + ("the same across runs with the same key)" if keyed else "consistent within this run)"),
        "file_names": "replaced (keyed stand-ins)" if rename else "kept",
        "pixels": "burned-in text blanked (OCR and rules)" if cleans_pixels else "unchanged",
        "toolkit_version": toolkit_version(),
    }


def deidentify_path(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    overwrite: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    uid_key: bytes | None = None,
    options: Options | None = None,
    safe_private: SafePrivate | None = None,
    reject_burned_in: bool = False,
    pixel_cleaner: PixelCleaner | None = None,
    rename_files: bool | None = None,
    plan: ScalePlan | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> dict:
    """De-identify `src` (file or directory) into `dst`; write the report and return its summary.

    `plan` (`--workers N`, `--ray ADDRESS`) or `resume` (skip what an interrupted run finished, by its journal):
    a directory is done by `parallel.deidentify_tree`, with the same outputs and report; otherwise, this one
    process, streaming.

    `pixel_cleaner`: Clean Pixel Data (burned-in text blanked, see `pixels.py`) for every image.
    `rename_files` (default: on for a directory input): every folder and file name of the output tree is replaced
    by a keyed stand-in (`renamed`), DICOMDIR file IDs with them, since names are often patient IDs; the report
    names the output paths.

    `uid_key`: a secret that makes UIDs and date shifts the same across runs (e.g. a study sent in several
    batches); without it each run draws a random one, so runs cannot be linked. The summary's `files_failed`
    counts broken DICOM inputs: the caller should exit non-zero when it is not 0.
    """
    src_p = Path(src)
    if not src_p.exists():
        raise BadInput(f"{src}: not found")
    if uid_key is not None and len(uid_key) < 16:
        raise BadInput("the UID key must hold at least 16 bytes")
    opts = options or Options()
    if opts.retain_safe_private and safe_private is None:
        raise BadInput("Retain Safe Private needs a list of safe private elements (--safe-private FILE)")
    if (plan is not None and plan.parallel) or resume:
        from ..scale import ScalePlan as _Plan
        from .parallel import deidentify_tree

        return deidentify_tree(src_p, os.fspath(dst), plan or _Plan(), overwrite=overwrite, resume=resume,
                               report_path=report_path, uid_key=uid_key, options=opts, safe_private=safe_private,
                               reject_burned_in=reject_burned_in, pixel_cleaner=pixel_cleaner,
                               rename_files=rename_files, quiet=quiet)  # fmt: skip
    out, default_report, single = _targets(src_p, os.fspath(dst), overwrite)
    uids = UIDMap(salt=uid_key)
    rename = not single if rename_files is None else rename_files and not single
    head = report_head(opts, uid_key is not None, rename, pixel_cleaner is not None)
    try:
        report = _Report(Path(report_path) if report_path else default_report, head)
    except OSError as e:  # a read-only or missing output location
        raise BadInput(f"{report_path or default_report}: cannot write ({e.strerror or type(e).__name__})") from None
    counts = {"files_written": 0, "files_skipped": 0, "files_failed": 0, "files_rejected": 0, "warnings": 0}
    try:
        with quiet_pydicom():
            _run(src_p, out, single, rename, uids, opts, safe_private, reject_burned_in, pixel_cleaner, counts, report)
    except BaseException:
        report.abort()
        raise
    summary = {**counts, "uids_replaced": len(uids)}
    report.close(summary)
    if not counts["files_written"] and not counts["files_failed"] and not counts["files_rejected"]:
        report.path.unlink(missing_ok=True)
        raise BadInput(f"{src}: no DICOM files to de-identify")
    return {**head, **summary, "report_path": str(report.path)}


def _run(
    src_p: Path,
    out: Path,
    single: bool,
    rename: bool,
    uids: UIDMap,
    opts: Options,
    safe_private: SafePrivate | None,
    reject_burned_in: bool,
    pixel_cleaner: PixelCleaner | None,
    counts: dict,
    report: _Report,
) -> None:
    """Every input, DICOMDIRs last (their records of files that were not written are dropped)."""
    not_written: set[Path] = set()
    deferred = []  # DICOMDIRs last: their records of files that were not written are dropped
    for path, rel in _inputs(src_p):
        if path.name.upper().startswith("DICOMDIR") and not single:
            deferred.append((path, rel))
            continue
        target = out if single else out / (renamed(rel, uids) if rename else rel)
        entry = _one(path, rel, target, uids, opts, safe_private, reject_burned_in, pixel_cleaner, counts)
        entry["file"] = str(target.relative_to(out)) if not single else entry["file"]
        if "error" in entry or "rejected" in entry:
            not_written.add(rel)
        report.add(entry)
    for path, rel in deferred:
        target = out / (renamed(rel, uids) if rename else rel)
        entry = _one(path, rel, target, uids, opts, safe_private, reject_burned_in, pixel_cleaner, counts,
                     not_written, uids if rename else None)  # fmt: skip
        entry["file"] = str(target.relative_to(out))
        report.add(entry)


def _one(
    path: Path,
    rel: Path,
    target: Path,
    uids: UIDMap,
    opts: Options,
    safe: SafePrivate | None,
    reject_burned_in: bool,
    cleaner: PixelCleaner | None,
    counts: dict,
    not_written: set[Path] | None = None,
    rename: UIDMap | None = None,
) -> dict:
    try:
        ds = read_checked(path)
    except UnsupportedFormat:
        counts["files_skipped"] += 1
        return {"file": str(rel), "skipped": "not DICOM"}
    except MedGemmaError as e:
        counts["files_failed"] += 1
        return {"file": str(rel), "error": str(e).replace(str(path), "").lstrip(": ") or "unreadable"}
    regions = None
    if cleaner is not None and 0x7FE00010 in ds and "Rows" in ds:
        try:
            regions = cleaner.clean(ds)
        except PixelCleanError as e:
            counts["files_failed"] += 1
            return {"file": str(rel), "error": str(e)}
        ds.BurnedInAnnotation = "NO"  # every frame went through OCR and the rules
    if reject_burned_in and regions is None and burned_in_risk(ds):
        counts["files_rejected"] += 1
        return {"file": str(rel), "rejected": "burned-in annotation possible (BurnedInAnnotation YES or absent)"}
    links = patients = None
    drop: set[int] = set()
    ids: list[tuple[str, ...] | None] = []
    if is_dicomdir(ds):
        links = record_links(ds)
        patients = record_patients(ds, links)
        gone = {str(p).casefold() for p in not_written or ()}
        ids = file_ids(ds)
        drop = {i for i, f in enumerate(ids) if f and str(rel.parent.joinpath(*f)).casefold() in gone}
    rep = deidentify_dataset(ds, uids, opts, safe, record_patients=patients)
    if regions is not None:
        from pydicom.dataset import Dataset

        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = CLEAN_PIXEL_CODE[0], "DCM", CLEAN_PIXEL_CODE[1]
        ds.DeidentificationMethodCodeSequence.append(code)
    try:
        if links is not None and patients is not None:
            repair_records(ds, [uids.pseudonym(p) if p else "" for p in patients])
            if rename is not None:  # the file IDs follow the renamed files
                base = len(renamed(rel, rename).parent.parts)
                for rec, f in zip(ds.DirectoryRecordSequence, ids):
                    if f:
                        rec.ReferencedFileID = list(renamed(rel.parent.joinpath(*f), rename).parts[base:])
            relink(ds, drop_records(ds, links, drop))
            if drop:
                rep.warnings.append(f"{len(drop)} directory record(s) of files not written were dropped")
        _write_atomic(ds, target)
    except Exception as e:  # a value pydicom cannot write back: nothing is left behind
        counts["files_failed"] += 1
        return {"file": str(rel), "error": f"cannot write ({type(e).__name__})"}
    counts["files_written"] += 1
    counts["warnings"] += len(rep.warnings)
    entry = {"file": str(rel), **rep.to_dict()}
    if regions is not None:
        entry["pixel_regions_cleaned"] = [r.to_dict() for r in regions]
    return entry
