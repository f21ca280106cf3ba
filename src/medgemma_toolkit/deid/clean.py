"""The profile's "C" (clean) action: shifted dates, and free text with the file's own identifiers taken out.

Cleaning free text perfectly needs a reader; this removes what can be known to identify: every word of the
file's person names, IDs, addresses and institution and station names (wherever they occur in the file), every
run of four or more digits and every date-like group (dates, numbers, phone numbers), and anything shaped like an e-mail address. What is
left is the descriptor's own vocabulary ("CT CHEST W CONTRAST").
"""

from __future__ import annotations

import datetime as dt
import re

# Attributes whose words identify a patient, a person or a place wherever else in the file they appear.
_IDENTIFYING = {
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "PatientMotherBirthName",
    "RegionOfResidence",
    "CountryOfResidence",
    "MilitaryRank",
    "BranchOfService",
    "AdmissionID",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSponsorName",
    "ClinicalTrialSiteName",
    "PatientBirthDate",
    "PatientBirthName",
    "OtherPatientNames",
    "ResponsibleOrganization",
    "PerformedLocation",
    "ScheduledStudyLocation",
}
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_DIGITS = re.compile(r"\+?\d[\d ().\-/]{4,}\d|\d{4,}")  # dates, phone numbers, IDs
_EMAIL = re.compile(r"\S+@\S+")


def _values(value) -> list:
    from pydicom.multival import MultiValue

    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


class Scrubber:
    """Takes the file's identifying words out of a free-text value."""

    def __init__(self, words: set[str]) -> None:
        self.words = {w.casefold() for w in words if len(w) >= 2}

    @classmethod
    def from_dataset(cls, ds) -> Scrubber:
        words: set[str] = set()

        def collect(d) -> None:
            for elem in d:
                if elem.VR == "SQ":
                    for item in elem.value or []:
                        collect(item)
                elif elem.VR == "PN" or elem.keyword in _IDENTIFYING:
                    for v in _values(elem.value):
                        words.update(_WORD.findall(str(v)))

        collect(ds)
        return cls(words)

    def __call__(self, text: str) -> str:
        text = _EMAIL.sub("*", text)
        text = _DIGITS.sub("*", text)
        out = _WORD.sub(lambda m: "*" if m.group(0).casefold() in self.words else m.group(0), text)
        return re.sub(r"\*+(\W*\*+)*", "*", out)


def shift_date(value: str, days: int) -> str | None:
    """'YYYYMMDD' moved by `days`; None when it is not a full date (it cannot be shifted)."""
    v = value.strip()
    try:
        return (dt.datetime.strptime(v, "%Y%m%d").date() + dt.timedelta(days=days)).strftime("%Y%m%d")
    except ValueError:
        return None


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value's date part moved by `days`; time, fraction and offset kept (a whole-day shift)."""
    v = value.strip()
    if len(v) < 8:
        return None
    head = shift_date(v[:8], days)
    return None if head is None else head + v[8:]
