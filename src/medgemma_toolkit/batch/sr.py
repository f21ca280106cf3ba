"""`batch --sr DIR`: one Comprehensive SR per study over the batch's answers, written after the run.

- **Grouping**: a row belongs to the study of its last image (a comparison's current: the study its SR is filed in,
  see `sr.evidence.home_first`). Rows of one study share one SR, a Request/Finding pair per row, in input order.
- **File names**: `DIR/study-<sha256 of the StudyInstanceUID, 16 hex digits>.dcm`: a UID can identify a patient's
  study, so names carry the same one-way hash as evaluation records (`imaging.manifest.for_records`).
- **Errors**: a row whose images are not DICOM (or that has none) is an error line, never a crash; the others go on.
- **Resumable**: SRs are written atomically (`sr.write_sr`), so a file that exists is whole; a study is skipped when
  its SR cites as many answers as the study now has, and written again otherwise (rows added or answered since).
- **What is cited**: the instances the model saw. Each row's request is built once: the manifest of what its
  prompt holds (a CT series' sampled slices only) is kept when the row is answered (`Evidence.seen`, filled in this
  process or sent back by the worker that answered it), so no image is decoded twice. Only rows answered by an
  earlier run, in a study whose SR is written again, have their request built here (or by a worker) once more.
- **No model in the driver**: with `--workers`/`--ray` the workers send back the manifests and the model's
  `AlgorithmInfo`; the SRs are written from those and from the instances' headers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInput

if TYPE_CHECKING:
    from ..api import MedGemma
    from ..sr.algorithm import AlgorithmInfo
    from .run import BatchRow

# Row id -> the manifest of the images its prompt held (`imaging.manifest.prompt_manifest`), or the one line saying
# why its request could not be built.
Seen = dict[str, "list[dict[str, Any]] | str"]


@dataclass
class Evidence:
    """What the SRs of `batch --sr` cite, gathered while the batch runs (see the module's docstring): the rows by
    study (read before the model loads), the SR folder, each answered row's manifest and the model's identity."""

    groups: dict[str, list[BatchRow]]
    sr_dir: Path
    errors: list[str] = field(default_factory=list)  # one line per row that cannot have an SR
    seen: Seen = field(default_factory=dict)
    algorithm: AlgorithmInfo | None = None

    def to_describe(self, out_path: Path, pending: Collection[str] = ()) -> list[BatchRow]:
        """Rows answered in `out_path` with no manifest in `seen`, in a study whose SR will be written: before a
        run (`pending`: the ids about to be asked) a study counts when it has a pending row or its SR is not
        complete; after a run, only the latter."""
        answers = _answers(out_path)
        rows: list[BatchRow] = []
        for study, members in self.groups.items():
            done = [r for r in members if r.id in answers]
            path = sr_path(self.sr_dir, study)
            complete = path.is_file() and _cites(path) == len(done)
            if done and (not complete or any(r.id in pending for r in members)):
                rows.extend(r for r in done if r.id not in self.seen)
        return rows


def describe_rows(mg: MedGemma, rows: list[BatchRow], think: bool, max_new_tokens: int | None) -> Seen:
    """The manifest of each row's request (its images decoded once, here), or why it could not be built."""
    from ..imaging.manifest import prompt_manifest
    from .run import row_request

    seen: Seen = {}
    for r in rows:
        try:
            seen[r.id] = prompt_manifest(row_request(mg, r, think, max_new_tokens).prompt)
        except BadInput as e:  # a file changed since the run, a server gone: that row only
            seen[r.id] = str(e)
    return seen


@dataclass
class StudyReports:
    written: list[Path] = field(default_factory=list)
    skipped: int = 0  # studies whose SR was already complete
    errors: list[str] = field(default_factory=list)  # one line per row left out of the SRs


def sr_path(sr_dir: Path, study_uid: str) -> Path:
    return sr_dir / f"study-{hashlib.sha256(study_uid.encode()).hexdigest()[:16]}.dcm"


def study_of(row: BatchRow) -> str:
    """The StudyInstanceUID of the row's last image (header only, or the DICOMweb reference's study)."""
    from ..imaging.dicomweb import parse_dicomweb_uri
    from ..imaging.series import series_files
    from ..sr.evidence import NEEDS_DICOM, check_dicom_sources, read_header

    if not row.images:
        raise BadInput(f"the row has no image; {NEEDS_DICOM}")
    check_dicom_sources(row.images)  # every image, so a PNG beside a DICOM is caught before the model loads
    last = row.images[-1]
    ref = parse_dicomweb_uri(last)
    if ref is not None:
        return ref.study
    files = series_files(last)
    return str(read_header(files[0] if files else last).StudyInstanceUID)


def group_rows(rows: list[BatchRow]) -> tuple[dict[str, list[BatchRow]], list[str]]:
    """Before the model loads: rows by study, and an error line for each row that cannot have an SR."""
    groups: dict[str, list[BatchRow]] = {}
    errors: list[str] = []
    for r in rows:
        try:
            groups.setdefault(study_of(r), []).append(r)
        except BadInput as e:
            errors.append(f"{r.location}: no SR for this row: {e}")
    return groups, errors


def _answers(out_path: Path) -> dict[str, str]:
    """id -> answer of every answered row in the batch's output (rows that failed have no answer)."""
    found: dict[str, str] = {}
    if not out_path.is_file():
        return found
    with out_path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash: that row is not done
            if isinstance(rec, dict) and "answer" in rec and "error" not in rec:
                found[str(rec.get("id"))] = str(rec["answer"] or "")
    return found


def _cites(path: Path) -> int | None:
    """How many answers (Finding items) an existing SR holds; None when it is not a readable SR."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        return sum(
            1 for item in ds.ContentSequence if item.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
        )  # fmt: skip
    except Exception:  # anything unreadable is rewritten
        return None


def write_study_reports(evidence: Evidence, out_path: Path) -> StudyReports:
    """One SR per study whose answers are in `out_path` (see the module's docstring), from `evidence` alone: no
    model is needed here."""
    from ..prompts.presets import get_preset
    from ..sr import evidence_for, study_report, write_sr

    result = StudyReports(errors=list(evidence.errors))
    answers = _answers(out_path)
    for study, members in evidence.groups.items():
        done = [r for r in members if r.id in answers]
        path = sr_path(evidence.sr_dir, study)
        if not done or (path.is_file() and _cites(path) == len(done)):
            result.skipped += bool(done)
            continue
        items: list[tuple[str, str, list[Any]]] = []
        for r in done:
            seen = evidence.seen.get(r.id, "its images were not read in this run")
            try:
                if isinstance(seen, str):
                    raise BadInput(seen)
                items.append((r.question, answers[r.id], evidence_for(seen, r.images)))
            except BadInput as e:  # a file changed since the run, a server gone: that row only
                result.errors.append(f"{r.location}: no SR for this row: {e}")
        if not items or evidence.algorithm is None:
            continue
        algorithm = evidence.algorithm
        if done[0].preset:  # a longitudinal row's own preset, else the model's (in `algorithm` already)
            preset = get_preset(done[0].preset)
            algorithm = replace(algorithm, preset=f"{preset.name}@{preset.version}")
        write_sr(study_report(items, algorithm), path)
        result.written.append(path)
    return result
