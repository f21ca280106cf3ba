"""A de-identification input tree for the scale-out tests and benchmarks: synthetic CT series under folders named
like patients, pydicom's DICOMDIR media (2 patients, 31 instances, one truncated so one file fails) and a file
that is not DICOM (skipped)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .synthetic_dicom import SeriesSpec, write_series


def build_deid_tree(root: Path, files: int = 200, slices: int = 10, rows: int = 32, media: bool = True) -> Path:
    """About `files` files under `root` (created): DICOMDIR media first when `media`, then series of `slices`
    slices, then `notes.txt`. Returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    count = 0
    if media:
        from pydicom.data import get_testdata_file

        src = Path(get_testdata_file("DICOMDIR")).parent  # type: ignore[arg-type]
        dest = root / "media"
        dest.mkdir()
        shutil.copy(src / "DICOMDIR", dest / "DICOMDIR")
        for d in ("77654033", "98892001", "98892003"):
            shutil.copytree(src / d, dest / d)
        cut = dest / "77654033" / "CR1" / "6154"
        cut.write_bytes(cut.read_bytes()[:1000])
        count = sum(1 for p in dest.rglob("*") if p.is_file())
    s = 0
    while count < files - 1:
        n = min(slices, files - 1 - count)
        spec = SeriesSpec(slices=n, rows=rows, cols=rows)
        write_series(root / f"Doe^Janet^{s:04d}" / f"series{s}", spec)
        count += n
        s += 1
    (root / "notes.txt").write_text("not DICOM\n")
    return root
