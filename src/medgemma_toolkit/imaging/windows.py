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
    version: int = 1

    @property
    def channels(self) -> tuple[tuple[float, float], ...]:
        return (self.red, self.green, self.blue)


CT_WINDOW_PRESETS: dict[str, CTWindows] = {
    "notebook": CTWindows("notebook", (-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0)),
    "server": CTWindows("server", (-1024.0, 1024.0), (135.0, 215.0), (0.0, 80.0)),
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
    """HU array of any shape -> the same shape plus a last axis of 3 uint8 channels.

    Each channel is round-half-up of (HU - low) * 255 / (high - low), clipped to 0..255. Multiplying before
    dividing keeps integer HU exact in float64, so the result equals the exact rational rounding.
    """
    values = np.asarray(hu, dtype=np.float64)
    out = np.empty(values.shape + (3,), dtype=np.uint8)
    for c, (lo, hi) in enumerate(windows.channels):
        scaled = np.floor((values - lo) * 255.0 / (hi - lo) + 0.5)
        out[..., c] = np.clip(scaled, 0.0, 255.0).astype(np.uint8)
    return out
