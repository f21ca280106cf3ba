"""What every SR we write shares: new Series/SOP UIDs, the "AI generated, not reviewed" marking, writing.

The standard's own way to say a report is machine-made and unchecked is the document's flags: PreliminaryFlag
PRELIMINARY, VerificationFlag UNVERIFIED, CompletionFlag PARTIAL (PS3.3 C.17.2). We set all three and repeat it
in words where a viewer shows them first: the SeriesDescription and a Comment in the content tree.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .algorithm import MANUFACTURER, AlgorithmInfo

AI_MARKER = "AI generated, not reviewed"
SERIES_NUMBER = 9901  # high, so the result sorts after the acquired series in a viewer
MAX_TEXT = 60_000  # UT holds 2^32-2 bytes; a TEXT item in practice is shown whole, so keep it readable


@contextlib.contextmanager
def quiet_highdicom() -> Iterator[None]:
    """Silence highdicom while it copies the source's header: its advice quotes values (a single-component
    PatientName is repeated in a UserWarning), which must not reach a log or a terminal."""
    log = logging.getLogger("highdicom")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def series_description(algo: AlgorithmInfo, what: str) -> str:
    return f"{what} ({AI_MARKER}) {algo.model}"[:64]


def marker_text(algo: AlgorithmInfo) -> str:
    return f"{AI_MARKER}: produced by {algo.model} through {MANUFACTURER}; not reviewed by a clinician."


def sop_arguments(algo: AlgorithmInfo, evidence: Sequence[Any], what: str) -> dict[str, Any]:
    """The keyword arguments every highdicom SR constructor takes here (new UIDs each call). The character set is
    UTF-8 (ISO_IR 192) whatever the source's: the answer is free model text in any script, and highdicom would
    otherwise take the first source's set (often none, i.e. ASCII/Latin-1), which cannot encode it."""
    import highdicom as hd

    from .evidence import for_sr, home_first

    return dict(
        evidence=[for_sr(ds) for ds in home_first(evidence)],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=series_description(algo, what),
        specific_character_set="ISO_IR 192",
    )


# Control characters the text VRs (UT, LT, ST) do not allow: all of C0 but TAB, LF, FF, CR and ESC, and DEL.
# A model can emit them (a random checkpoint does); dciodvfy rejects an SR that holds one.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


def clip_text(text: str, empty: str = "(empty)") -> str:
    """`text` as a TEXT content item can hold it: disallowed control characters dropped, at most MAX_TEXT, and
    `empty` in place of nothing (TextValue is type 1)."""
    text = _NOT_TEXT.sub("", text or "")
    if not text.strip():
        return empty
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def write_sr(sr: Any, path: str | Path) -> Path:
    """Write `sr` as a DICOM Part 10 file (atomically: a reader never sees half a file)."""
    import os
    import tempfile

    from ..errors import BadInput

    out = Path(path)
    if out.is_dir():
        raise BadInput(f"--sr {out}: is a directory; give a file name such as result.dcm")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sr-", suffix=".dcm", dir=out.parent)
    os.close(fd)
    try:
        sr.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
