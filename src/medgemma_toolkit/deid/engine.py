"""Apply Table E.1-1 to one pydicom Dataset, in place, at every depth, and say what changed (names, never values).

Every element of every sequence item is looked up in the table (a sequence the table does not list is still
entered); an element stored as VR UN is decoded first (`un.py`) or removed. A D action on a content tree (SR
ContentSequence, ECG WaveformAnnotationSequence, GraphicAnnotationSequence, VerifyingObserverSequence) keeps the
tree and applies the table inside it, with report text cleaned, so the object stays valid. Beyond the table,
safety nets cover what vendors put where the table does not look: private elements are removed (unless on the
safe list with Retain Safe Private), whole curve (50xx) and overlay (60xx) groups go (their data and comments are
X; an overlay without its data is not valid, and its description and label are free text), remaining person
names (VR PN) are emptied, remaining instance UIDs outside the standard's root are replaced, and the file meta
group keeps only its structural elements. Pixel data is not touched here (`pixels.py` cleans it when asked), so a
warning is raised when BurnedInAnnotation is YES or absent.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from ..imaging.deflate import PIXEL_TAGS
from .clean import Scrubber, shift_date, shift_datetime
from .profile import BASIC_CODE, OPTION_CODES, Options, is_curve_group, is_overlay_group, table
from .safe_private import SafePrivate
from .un import decode_un

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

STANDARD_UID_ROOT = "1.2.840.10008."
KEEP_UIDS = {
    "SOPClassUID",
    "ReferencedSOPClassUID",
    "MediaStorageSOPClassUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "CodingSchemeUID",
    "ReferencedSOPClassUIDInFile",
}
META_KEEP = {0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
METHOD = "PS3.15 E.1-1 Basic Profile (medgemma-toolkit)"  # LO: at most 64 characters
_DUMMY = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "UR": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
    "OF": b"\x00" * 4,
    "OD": b"\x00" * 8,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
}
TEXT_VRS = {"PN", "LO", "SH", "CS", "LT", "ST", "UT", "UC", "AE", "UR"}
# Content trees whose D (dummy) action keeps the tree, each identifying leaf handled by its own table row (PNAME,
# DATE, DATETIME, TIME, UIDREF) and free text cleaned, so the object stays valid (one empty item is not a valid
# SR content tree, ECG annotation or presentation state): ContentSequence, WaveformAnnotationSequence,
# GraphicAnnotationSequence, and VerifyingObserverSequence (its Type 1 name, organisation and time get dummies).
# CODE, NUM and the structure are kept. (InstitutionCodeSequence and the like stay one empty item: their codes
# themselves identify.)
TREES = {0x0040A730, 0x0040B020, 0x00700001, 0x0040A073}
TREE_TEXT = {0x0040A160}  # TextValue (TEXT content items): not in the table, cleaned of the file's identifiers


class UIDMap:
    """Old UID -> new UID, the same within a run, not linkable across runs unless a key is given.

    New UIDs are "2.25." + 128 bits of HMAC-SHA-256(key, old UID): a pure function, so nothing is stored and
    memory does not grow with the number of files.
    """

    def __init__(self, salt: bytes | None = None) -> None:
        self._salt = secrets.token_bytes(32) if salt is None else salt
        self.count = 0

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip().rstrip("\x00")
        if not uid:
            return uid
        self.count += 1
        digest = hmac.new(self._salt, b"uid:" + uid.encode("ascii", "replace"), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def date_shift(self, patient_id: str) -> int:
        """Days to add to every date of this patient: the same for a patient within a run (across runs with
        the same key), between -3650 and -1."""
        digest = hmac.new(self._salt, b"date:" + patient_id.encode("utf-8", "replace"), hashlib.sha256).digest()
        return -1 - int.from_bytes(digest[:8], "big") % 3650

    def pseudonym(self, patient_id: str) -> str:
        """A stand-in patient ID (for a Type 1 slot such as a DICOMDIR PATIENT record): the same for a patient
        within a run, not the original."""
        digest = hmac.new(self._salt, b"pid:" + patient_id.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
        return "P" + digest[:15].upper()

    def file_name(self, original: str) -> str:
        """A stand-in for one component of a file path (`original`: the path up to and including it), 8 characters
        of A-Z and 2-7 as a DICOMDIR file ID allows: folder names are often patient IDs or names."""
        import base64

        digest = hmac.new(self._salt, b"file:" + original.casefold().encode("utf-8", "replace"), hashlib.sha256)
        return base64.b32encode(digest.digest()[:5]).decode("ascii")

    def __len__(self) -> int:
        return self.count


@dataclass
class FileReport:
    """What happened to one dataset, by attribute keyword (or tag for unnamed ones)."""

    removed: set[str] = field(default_factory=set)
    emptied: set[str] = field(default_factory=set)
    dummied: set[str] = field(default_factory=set)
    cleaned: set[str] = field(default_factory=set)
    kept_by_option: set[str] = field(default_factory=set)
    uids_remapped: set[str] = field(default_factory=set)
    private_removed: int = 0
    private_kept: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "removed": sorted(self.removed),
            "emptied": sorted(self.emptied),
            "dummied": sorted(self.dummied),
            "cleaned": sorted(self.cleaned),
            "kept_by_option": sorted(self.kept_by_option),
            "uids_remapped": sorted(self.uids_remapped),
            "private_elements_removed": self.private_removed,
            "private_elements_kept": self.private_kept,
            "warnings": list(self.warnings),
        }


def _name(elem: DataElement) -> str:
    return elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"


@dataclass
class _Ctx:
    uids: UIDMap
    opts: Options
    rep: FileReport
    sop_class: str | None
    shift: int
    scrub: Scrubber | None
    safe: SafePrivate | None
    tree_scrub: Scrubber | None = None
    record_shifts: list[int] | None = None  # DICOMDIR: each record's dates move with its own patient


def _is_instance_uid(elem: DataElement) -> bool:
    if elem.VR != "UI" or elem.keyword in KEEP_UIDS or elem.value in (None, ""):
        return False
    values = [elem.value] if isinstance(elem.value, str) else list(elem.value)
    return any(not str(v).startswith(STANDARD_UID_ROOT) for v in values)


def _remap(value: str | bytes | Iterable[str], uids: UIDMap) -> str | list[str]:
    if isinstance(value, (str, bytes)):
        return uids(cast(str, value))  # typing only: UIDMap.__call__ applies str() itself
    return [uids(v) for v in value]


def _set_dummy(ds: Dataset, elem: DataElement, ctx: _Ctx) -> None:
    if elem.VR == "SQ" and int(elem.tag) in TREES and elem.value:  # keep the tree valid: see TREES
        for item in elem.value:
            _walk(item, ctx, top=False)
        ctx.rep.cleaned.add(_name(elem))
        return
    if elem.VR == "SQ":
        from pydicom.dataset import Dataset

        elem.value = [Dataset()]  # a non-empty sequence whose one item carries nothing
    elif elem.VR == "UI":
        elem.value = _remap(elem.value, ctx.uids) if elem.value else ctx.uids("dummy")
    else:
        vr = elem.VR.split(" or ")[0] if " or " in elem.VR else elem.VR
        value = _DUMMY.get(vr)
        if value is None:  # no dummy for this VR: removing keeps nothing of the value
            del ds[elem.tag]
            ctx.rep.removed.add(_name(elem))
            return
        elem.value = value
    ctx.rep.dummied.add(_name(elem))


def _clean(ds: Dataset, elem: DataElement, ctx: _Ctx, basic: str) -> None:
    """C: dates shifted (Modified Dates), free text scrubbed of the file's identifiers, sequences entered."""
    name = _name(elem)
    if elem.VR == "SQ":
        for item in elem.value:
            _walk(item, ctx, top=False)
        ctx.rep.cleaned.add(name)
    elif elem.VR in ("DA", "DT", "TM") and ctx.opts.retain_modified_dates:
        if elem.VR != "TM" and elem.value not in (None, ""):
            fn = shift_date if elem.VR == "DA" else shift_datetime
            vals = [elem.value] if isinstance(elem.value, str) else list(elem.value)
            new = [fn(str(v), ctx.shift) for v in vals]
            if any(v is None for v in new):  # a date we cannot parse cannot be shifted: a dummy instead
                _set_dummy(ds, elem, ctx)
                return
            elem.value = new[0] if len(new) == 1 else new
        ctx.rep.cleaned.add(name)
    elif elem.VR in TEXT_VRS and ctx.scrub is not None:
        if elem.value not in (None, ""):
            vals = [elem.value] if isinstance(elem.value, str) else list(elem.value)
            new = [ctx.scrub(str(v)) for v in vals]
            elem.value = new[0] if len(new) == 1 else new
        ctx.rep.cleaned.add(name)
    else:  # nothing we can clean safely (binary): the Basic Profile's own action
        _apply(ds, elem, ctx, basic if "/" not in basic else "X")


def _apply(ds: Dataset, elem: DataElement, ctx: _Ctx, action: str, basic: str = "X") -> None:
    name = _name(elem)
    if action == "X":
        del ds[elem.tag]
        ctx.rep.removed.add(name)
    elif action == "Z":
        elem.value = [] if elem.VR == "SQ" else (b"" if elem.VR in ("OB", "OW", "UN") else "")
        ctx.rep.emptied.add(name)
    elif action == "D":
        _set_dummy(ds, elem, ctx)
    elif action == "U":
        if elem.VR == "SQ":  # X/Z/U* resolved to U: keep the sequence, its items get the table (UIDs replaced)
            for item in elem.value:
                _walk(item, ctx, top=False)
            ctx.rep.uids_remapped.add(name)
        elif elem.value not in (None, ""):
            elem.value = _remap(elem.value, ctx.uids)
            ctx.rep.uids_remapped.add(name)
    elif action == "K":
        if elem.VR == "SQ":  # kept, but what its items hold still goes through the table
            for item in elem.value:
                _walk(item, ctx, top=False)
        ctx.rep.kept_by_option.add(name)
    elif action == "C":
        _clean(ds, elem, ctx, basic)


def _tag_name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


_NET_VRS = {"SQ", "PN", "UI", None}  # what the safety nets look at outside the table (None: VR not yet known)


def _walk(ds: Dataset, ctx: _Ctx, top: bool) -> None:
    # Elements are looked at raw (tag and VR) and decoded only when acted on: most of a header is left as read,
    # and pydicom writes raw elements back as they came.
    tab = table()
    private_keep = ctx.safe.keep_set(ds) if (ctx.safe is not None and ctx.opts.retain_safe_private) else set()
    for tag in list(ds.keys()):
        t = int(tag)
        group = t >> 16
        if group % 2 == 1:
            if t in private_keep:
                ctx.rep.private_kept += 1
                continue
            del ds[tag]
            ctx.rep.private_removed += 1
            continue
        if is_curve_group(group) or is_overlay_group(group):
            del ds[tag]
            ctx.rep.removed.add(_tag_name(t))
            continue
        vr = ds.get_item(tag).VR
        if vr == "UN" and decode_un(ds, tag) is None:  # undecodable: removed, never passed through
            del ds[tag]
            ctx.rep.removed.add(_tag_name(t))
            continue
        if t == 0x00041220 and top and ctx.record_shifts is not None:  # DirectoryRecordSequence
            base = ctx.shift
            for item, shift in zip(ds[tag].value, ctx.record_shifts):
                ctx.shift = shift
                _walk(item, ctx, top=False)
            ctx.shift = base
            continue
        if t in TREE_TEXT and ctx.tree_scrub is not None:
            elem = ds[tag]
            if elem.value not in (None, ""):
                elem.value = ctx.tree_scrub(str(elem.value))
                ctx.rep.cleaned.add(_name(elem))
            continue
        row = tab.rows.get(t)
        if row is None:  # not in the table: safety nets only
            if vr not in _NET_VRS and vr != "UN":
                continue
            elem = ds[tag]
            if elem.VR == "UN" and decode_un(ds, tag) is None:  # implicit VR, a tag no dictionary knows
                del ds[tag]
                ctx.rep.removed.add(_tag_name(t))
                continue
            elem = ds[tag]
            if elem.VR == "SQ":
                for item in elem.value:
                    _walk(item, ctx, top=False)
            elif elem.VR == "PN" and elem.value not in (None, ""):
                elem.value = ""
                ctx.rep.emptied.add(_name(elem))
            elif not ctx.opts.retain_uids and _is_instance_uid(elem):
                elem.value = _remap(elem.value, ctx.uids)
                ctx.rep.uids_remapped.add(_name(elem))
            continue
        type_ = tab.type_of(ctx.sop_class, t) if top else None
        _apply(ds, ds[tag], ctx, row.action(ctx.opts, type_), row.basic)


def _file_meta(ds: Dataset, ctx: _Ctx) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for elem in list(meta):
        if int(elem.tag) not in META_KEEP:
            del meta[elem.tag]
            ctx.rep.removed.add(_name(elem))
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if not ctx.opts.retain_uids:
            ctx.rep.uids_remapped.add("MediaStorageSOPInstanceUID")
    elif "MediaStorageSOPInstanceUID" in meta and not ctx.opts.retain_uids:
        meta.MediaStorageSOPInstanceUID = ctx.uids(meta.MediaStorageSOPInstanceUID)


def method_codes(opts: Options) -> list[tuple[str, str]]:
    """CID 7050 codes (scheme DCM) for the profile and each option used, in the standard's order."""
    return [BASIC_CODE] + [OPTION_CODES[name] for name in opts.selected()]


def deidentify_dataset(
    ds: Dataset,
    uids: UIDMap | None = None,
    options: Options | None = None,
    safe_private: SafePrivate | None = None,
    record_patients: list[str] | None = None,
) -> FileReport:
    """De-identify `ds` in place (file meta included) and return the report. Pixel data is kept as is.

    `record_patients` (a DICOMDIR): the original PatientID above each directory record, so that its dates are
    shifted like those of the instances it references (a DICOMDIR has no PatientID of its own)."""
    from pydicom.dataset import Dataset

    opts = options or Options()
    uids = uids if uids is not None else UIDMap()
    rep = FileReport()
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        rep.warnings.append("BurnedInAnnotation is YES: the pixels may show identifying text, which is not removed")
    elif burned != "NO":
        rep.warnings.append("BurnedInAnnotation is absent or unknown: check the pixels for identifying text")
    patient = str(ds.get("PatientID", "") or "")
    scrub = (
        Scrubber.from_dataset(ds)
        if (opts.clean_descriptors or opts.retain_device_identity or opts.retain_patient_characteristics)
        else None
    )
    ctx = _Ctx(
        uids, opts, rep, str(ds.get("SOPClassUID", "") or "") or None, uids.date_shift(patient), scrub, safe_private
    )
    if record_patients is not None:
        ctx.record_shifts = [uids.date_shift(p) for p in record_patients]
    if any(t in ds for t in TREES):  # built before the walk removes the names it must look for
        ctx.tree_scrub = scrub or Scrubber.from_dataset(ds)
    _walk(ds, ctx, top=True)
    _file_meta(ds, ctx)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    if opts.retain_modified_dates:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    elif opts.retain_full_dates:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"
    items = []
    for value, meaning in method_codes(opts):
        code = Dataset()
        code.CodeValue = value
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        items.append(code)
    ds.DeidentificationMethodCodeSequence = items
    return rep


def safe_header(ds: Dataset, keywords: list[str]) -> dict[str, str]:
    """Header values fit for logs, errors, records and exports: read from a de-identified copy of `ds`.

    The one way toolkit code may show a DICOM header value. Example: `safe_header(ds, ["Modality", "PatientID"])`
    gives {"Modality": "CT", "PatientID": ""}.
    """
    import copy

    from pydicom.dataset import Dataset

    clone = Dataset()  # a copy without the pixel data (never copied: it can be gigabytes)
    for elem in ds:
        if int(elem.tag) not in PIXEL_TAGS:
            clone.add(copy.deepcopy(elem))
    deidentify_dataset(clone, UIDMap())
    return {k: str(clone.get(k, "")) for k in keywords}
