"""dciodvfy (Debian dicom3tools) as an oracle: the IOD errors a file gains from a transformation.

dciodvfy checks a file against its IOD (types, conditions, SR templates). Errors already in the input are the
input's; what matters after de-identification is what is new. Lines are compared with UIDs, numbers and quoted
values blanked, since those change legitimately (new UIDs, dummies).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

_VOLATILE = re.compile(r'"[^"]*"|<[0-9.]+>|\b\d+(\.\d+)+\b|\b\d+\b')


def available() -> bool:
    return shutil.which("dciodvfy") is not None


def errors(path: Path) -> set[str]:
    """dciodvfy's Error lines for `path`, normalised."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {_VOLATILE.sub("#", line.strip()) for line in lines if line.startswith("Error")}


def new_errors(before: Path, after: Path) -> list[str]:
    """Errors `after` has that `before` did not."""
    return sorted(errors(after) - errors(before))
