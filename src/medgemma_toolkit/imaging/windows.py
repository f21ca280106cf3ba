"""CT window presets as data: three Hounsfield-unit windows packed into the R, G and B channels.

MedGemma 1.5 was trained on CT slices where each colour channel is one window. Two sets are in circulation:

=============  ================  ====================  ================
preset         R (wide)          G (soft tissue)       B (brain)
=============  ================  ====================  ================
``notebook``   -1024 .. 1024     -135 .. 215           0 .. 80
``server``     -1024 .. 1024     +135 .. 215           0 .. 80
=============  ================  ====================  ================

``notebook`` (the default) is what Google's CT notebooks use; ``server`` reproduces the constant in the reference
serving container, whose G window starts at +135 (a known discrepancy upstream). Both are exposed so results can be
matched to either; the versions let recorded runs say which table produced them.

Each preset also reproduces its source's arithmetic, so pixels match bit for bit (tests compare against vectors
computed with Google's own functions): the notebook clips HU, converts to float32, subtracts the low end, divides
by the width, multiplies by 255 and rounds half to even; the serving container rounds HU to integers first, then
interpolates in float64 and rounds half to even.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInput


@dataclass(frozen=True)
class CTWindows:
    """Three (low, high) HU ranges for R, G, B; values map linearly to 0..255 and are clipped outside."""

    name: str
    red: tuple[float, float]
    green: tuple[float, float]
    blue: tuple[float, float]
    arithmetic: str = "notebook"  # "notebook" (float32 steps) or "server" (integer HU, float64 interpolation)
    version: int = 2

    @property
    def channels(self) -> tuple[tuple[float, float], ...]:
        return (self.red, self.green, self.blue)


CT_WINDOW_PRESETS: dict[str, CTWindows] = {
    "notebook": CTWindows("notebook", (-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0)),
    "server": CTWindows("server", (-1024.0, 1024.0), (135.0, 215.0), (0.0, 80.0), arithmetic="server"),
}
DEFAULT_CT_WINDOWS = "notebook"


def get_ct_windows(name: str) -> CTWindows:
    try:
        return CT_WINDOW_PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(CT_WINDOW_PRESETS))
        raise BadInput(f"unknown CT window preset {name!r} (known: {known})") from None


def window_lut(windows: CTWindows, slope: float, intercept: float, lo: int, hi: int) -> np.ndarray:
    """A (hi - lo + 1, 3) uint8 table from stored value to RGB, so a whole volume is windowed by one lookup.

    Stored integers are few (at most 65,536), so computing HU and the three windows once per stored value and
    indexing is exact and several times faster than float arithmetic over every voxel.
    """
    stored = np.arange(lo, hi + 1, dtype=np.float64)
    return windows_to_rgb(stored * slope + intercept, windows)


def windows_to_rgb(hu: np.ndarray, windows: CTWindows) -> np.ndarray:
    """HU array of any shape -> the same shape plus a last axis of 3 uint8 channels, in the preset's arithmetic."""
    values = np.asarray(hu, dtype=np.float64)
    if windows.arithmetic == "server":
        values = np.round(values)
    out = np.empty(values.shape + (3,), dtype=np.uint8)
    for c, (lo, hi) in enumerate(windows.channels):
        if windows.arithmetic == "server":
            scaled = np.interp(np.clip(values, lo, hi), (lo, hi), (0.0, 255.0))
        else:
            scaled = np.clip(values, lo, hi).astype(np.float32)
            scaled -= np.float32(lo)
            scaled /= np.float32(hi - lo)
            scaled *= np.float32(255.0)
        out[..., c] = np.round(scaled).astype(np.uint8)
    return out
