"""`deid --workers N` / `deid --ray ADDRESS` / `deid --resume`: the tree de-identified by many workers, with the
same outputs, byte for byte, and the same report as one process.

Why they are the same: every keyed value (UIDs, date shifts, pseudonyms, file-name stand-ins) is an HMAC of the
input under one run key, so a worker needs nothing but that key: the driver draws it once (or takes `--uid-key`)
and ships it with the settings. Each worker builds its `UIDMap` once, de-identifies the files it is handed with the
single-process code (`files._one`) and writes each output atomically; the driver puts the report entries back in
input order (`scale.InOrder`), sums the counts, and treats DICOMDIRs last, itself, exactly as the one-process run
does (their records of files that were not written are dropped).

Resumable: the driver journals each file whose output is in place (`OUT/.deid-journal.jsonl`, with its report
entry); `--resume` skips those and redoes the rest. It needs `--uid-key` (a fresh random key would give the
remaining files other UIDs than the first run's) and the same settings (checked against the journal).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..scale import InOrder, Journal, ScalePlan, run
from .engine import UIDMap
from .files import REPORT_NAME, _inputs, _one, _Report, _targets, quiet_pydicom, renamed, report_head
from .pixels import PixelCleaner
from .profile import Options
from .safe_private import SafePrivate

JOURNAL_NAME = ".deid-journal.jsonl"
COUNTS = ("files_written", "files_skipped", "files_failed", "files_rejected", "warnings")


@dataclass(frozen=True)
class DeidJob:
    """What every worker needs: the run key and the settings (pickled once per worker, never per file)."""

    out: str
    key: bytes
    rename: bool
    options: Options
    safe_private: SafePrivate | None
    reject_burned_in: bool
    pixel_cleaner: PixelCleaner | None


@dataclass(frozen=True)
class FileUnit:
    """One input file: its path and its path relative to IN (the report and the output tree are named by it)."""

    path: str
    rel: str


def make_worker(job: DeidJob) -> functools.partial[dict[str, Any]]:
    """Called once per worker process or Ray actor: one `UIDMap` for all the files it is handed."""
    return functools.partial(deid_one, job, UIDMap(salt=job.key))


def deid_one(job: DeidJob, uids: UIDMap, unit: FileUnit) -> dict[str, Any]:
    """De-identify one file (written atomically by `_one`); its report entry, counts and UIDs replaced."""
    counts = dict.fromkeys(COUNTS, 0)
    rel = Path(unit.rel)
    out = Path(job.out)
    target = out / (renamed(rel, uids) if job.rename else rel)
    before = uids.count
    with quiet_pydicom():
        entry = _one(Path(unit.path), rel, target, uids, job.options, job.safe_private, job.reject_burned_in,
                     job.pixel_cleaner, counts)  # fmt: skip
    entry["file"] = str(target.relative_to(out))
    return {"entry": entry, "counts": counts, "uids": uids.count - before}


def deidentify_tree(
    src: Path,
    dst: str,
    plan: ScalePlan,
    *,
    overwrite: bool,
    resume: bool,
    report_path: str | os.PathLike[str] | None,
    uid_key: bytes | None,
    options: Options,
    safe_private: SafePrivate | None,
    reject_burned_in: bool,
    pixel_cleaner: PixelCleaner | None,
    rename_files: bool | None,
    quiet: bool,
) -> dict:
    """The directory `src` into `dst` by `plan`'s workers; the same summary as `deidentify_path`'s."""
    if not src.is_dir():
        raise BadInput(f"{src}: --workers, --ray and --resume take a directory IN")
    if resume and uid_key is None:
        raise BadInput("--resume needs --uid-key: a new random key would give the remaining files other UIDs")
    out, default_report, _ = _targets(src, dst, overwrite or resume)
    rename = True if rename_files is None else rename_files
    head = report_head(options, uid_key is not None, rename, pixel_cleaner is not None)
    key = uid_key if uid_key is not None else secrets.token_bytes(32)
    job = DeidJob(str(out), key, rename, options, safe_private, reject_burned_in, pixel_cleaner)
    # The journal must tell runs with another key apart without holding the key: a keyed fingerprint of it.
    fingerprint = hmac.new(key, b"deid-journal", hashlib.sha256).hexdigest()[:32]
    src_id = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:32]  # not the path: it may name a patient
    try:
        journal = Journal(out / JOURNAL_NAME, {**head, "key": fingerprint, "src": src_id}, resume)
    except OSError as e:
        raise BadInput(f"{out}: cannot write ({e.strerror or type(e).__name__})") from None
    try:
        report = _Report(Path(report_path) if report_path else default_report, head)
    except OSError as e:
        journal.close(remove=False)
        raise BadInput(f"{report_path or default_report}: cannot write ({e.strerror or type(e).__name__})") from None
    totals = dict.fromkeys(COUNTS, 0)
    uids_replaced = 0
    not_written: set[Path] = set()

    def emit(_: int, item: tuple[FileUnit, dict[str, Any]]) -> None:
        nonlocal uids_replaced
        unit, result = item
        report.add(result["entry"])
        for k in COUNTS:
            totals[k] += result["counts"][k]
        uids_replaced += result["uids"]
        if "error" in result["entry"] or "rejected" in result["entry"]:
            not_written.add(Path(unit.rel))

    ordered: InOrder[tuple[FileUnit, dict[str, Any]]] = InOrder(emit)
    try:
        units, deferred = _units(src)
        todo = []
        for i, unit in enumerate(units):
            if unit.rel in journal.done:
                ordered.put(i, (unit, journal.done[unit.rel]))
            else:
                todo.append((i, unit))

        def on_result(item: tuple[int, FileUnit], result: dict[str, Any]) -> None:
            journal.add(item[1].rel, result)  # after the output is in place (or known not to be written)
            ordered.put(item[0], (item[1], result))

        run(todo, functools.partial(_indexed_worker, job), plan, on_result, quiet=quiet, what="de-identifying",
            batch_size=16)  # fmt: skip
        uids = UIDMap(salt=key)
        with quiet_pydicom():
            for path, rel in deferred:  # DICOMDIRs last, here, as in one process
                target = out / (renamed(rel, uids) if rename else rel)
                counts = dict.fromkeys(COUNTS, 0)
                entry = _one(path, rel, target, uids, options, safe_private, reject_burned_in, pixel_cleaner,
                             counts, not_written, uids if rename else None)  # fmt: skip
                entry["file"] = str(target.relative_to(out))
                report.add(entry)
                for k in COUNTS:
                    totals[k] += counts[k]
        uids_replaced += len(uids)
    except BaseException:
        report.abort()
        journal.close(remove=False)
        raise
    summary = {**totals, "uids_replaced": uids_replaced}
    report.close(summary)
    journal.close(remove=True)
    if not totals["files_written"] and not totals["files_failed"] and not totals["files_rejected"]:
        report.path.unlink(missing_ok=True)
        raise BadInput(f"{src}: no DICOM files to de-identify")
    return {**head, **summary, "report_path": str(report.path)}


def _indexed_worker(job: DeidJob) -> functools.partial[dict[str, Any]]:
    """`make_worker` for (index, unit) pairs: the index only rides along for the driver's ordering."""
    return functools.partial(_drop_index, make_worker(job))


def _drop_index(worker: functools.partial[dict[str, Any]], item: tuple[int, FileUnit]) -> dict[str, Any]:
    return worker(item[1])


def _units(src: Path) -> tuple[list[FileUnit], list[tuple[Path, Path]]]:
    """Every input file in the one-process order, DICOMDIRs apart (they go last, in the driver)."""
    units: list[FileUnit] = []
    deferred: list[tuple[Path, Path]] = []
    for path, rel in _inputs(src):
        if path.name.upper().startswith("DICOMDIR"):
            deferred.append((path, rel))
        else:
            units.append(FileUnit(str(path), str(rel)))
    return units, deferred


__all__ = ["JOURNAL_NAME", "REPORT_NAME", "DeidJob", "FileUnit", "deidentify_tree"]
