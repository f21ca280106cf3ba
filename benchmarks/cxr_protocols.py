"""How far apart the CXR grey-level protocols are on the synthetic radiographs of the reference vectors.

`container` (the default: Google's serving container since 71a1135, no window) against `full` (our min-max
rescale) and `container-windowed` (the container before 71a1135: the file's VOI window). Runs in a second:

    PYTHONPATH=src python benchmarks/cxr_protocols.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medgemma_toolkit.imaging import ImageOptions
from medgemma_toolkit.imaging.dicom import dicom_to_rgb
from medgemma_toolkit.testing.synthetic_cxr import make_cxr

REF = Path(__file__).parent.parent / "tests" / "data" / "google_reference" / "server_a60a660.json"


def main() -> None:
    for name, e in json.loads(REF.read_text())["cxr"].items():
        ds = make_cxr(**e["kwargs"])
        grey = {
            w: np.asarray(dicom_to_rgb(ds, name, ImageOptions(window=w)))[..., 0].astype(int)
            for w in ("container", "full", "container-windowed")
        }
        base, n = grey["container"], grey["container"].size
        cells = [
            f"{w}: {int((grey[w] != base).sum())}/{n} pixels differ (max {int(np.abs(grey[w] - base).max())})"
            for w in ("full", "container-windowed")
        ]
        print(f"{name:17s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
