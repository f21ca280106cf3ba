"""DICOM results for the hospital's systems: Structured Reports (highdicom) and STOW-RS to a PACS.

`answer_report` / `sr_from_answer` (an answer as a Comprehensive SR), `measurement_report` (localize's boxes as a
TID 1500 Measurement Report), `evidence_for` (the headers of the instances a prompt held), `stow` (STOW-RS with
the same origin, credential and redirect rules as reading over DICOMweb).
"""

from __future__ import annotations

from .algorithm import AlgorithmInfo, algorithm_of
from .answer import answer_report, sr_from_answer, study_report
from .document import AI_MARKER, write_sr
from .evidence import check_dicom_sources, evidence_for, read_header
from .regions import Region, measurement_report

__all__ = [
    "AI_MARKER",
    "AlgorithmInfo",
    "Region",
    "algorithm_of",
    "answer_report",
    "check_dicom_sources",
    "evidence_for",
    "measurement_report",
    "read_header",
    "sr_from_answer",
    "study_report",
    "write_sr",
]
