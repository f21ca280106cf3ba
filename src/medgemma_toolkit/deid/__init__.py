"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

`basic_profile.csv` is the table (data), `engine.py` applies it to a dataset, `files.py` to files and directories
with a JSON report that names attributes, never their values. Any DICOM header value that toolkit code shows in a
log, error, record or export goes through `safe_header` first.
"""

from __future__ import annotations

from .engine import FileReport, UIDMap, deidentify_dataset, safe_header
from .files import deidentify_path
from .profile import basic_profile

__all__ = ["FileReport", "UIDMap", "basic_profile", "deidentify_dataset", "deidentify_path", "safe_header"]
