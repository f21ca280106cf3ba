"""The sample that ships with `medgemma extract`: a synthetic two-page lab report and its schema.

Every value on the report is invented (`scripts/make_sample_lab_report.py` writes it); it lets the guide's first
example run with no files of one's own: `medgemma extract --sample`.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

SAMPLE_PDF = "lab_report.pdf"
SAMPLE_SCHEMA = "lab_report.schema.json"


def sample_paths() -> tuple[Path, Path]:
    """(schema, report) as files on disk. The package is installed as plain files (setuptools, not a zip), so
    `as_file` hands back the installed paths themselves and nothing needs cleaning up."""
    root = files(__package__)
    with as_file(root / SAMPLE_SCHEMA) as schema, as_file(root / SAMPLE_PDF) as pdf:
        return Path(schema), Path(pdf)
