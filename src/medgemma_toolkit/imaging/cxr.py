"""CXR grey levels as Google's serving container computes them, as named, dated protocols.

Two generations of the container's CXR (CR/DX) path are in circulation; the commit is the protocol's name:

==================  =========================================================================================
``container``       the default. google-health/medgemma 71a1135 (2026-02-24, "Remove Windowing for CXR
                    imaging"), unchanged through a60a660 (2026-04-07, the newest we can reach): no VOI window;
                    modality LUT, then the whole dynamic range stretched to 16 bits, then to 8 bits.
``container-windowed``  the container before 71a1135 (google-health/medgemma 04b60aca): the file's first
                    WindowCenter/WindowWidth when it has one (`dicom.file_window`), else the full range.
==================  =========================================================================================

Google removed the window because files whose embedded window does not fit their pixels came out wrong and did
not match what a DICOM store renders. The arithmetic below reproduces the container's, so grey levels match bit
for bit (tests compare against vectors computed by running Google's functions): modality-LUT output that is
already unsigned 8-bit is kept as is; other integers are shifted to start at 0, floats (a rescale slope or
intercept makes them float) are shifted, squeezed into 16 bits only when wider, and rounded; the result is
stretched over the full unsigned range with truncation (`np.interp` then `astype`), MONOCHROME1 inverted, and
16-bit values brought to 8 bits by dividing by 257 and rounding half to even.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInput

CONTAINER_COMMIT = "71a11352abe7ab619402af84d8ea015dea3f44a3"  # removed CXR windowing; same code at a60a660
CONTAINER_WINDOWED_COMMIT = "04b60aca45ff09fd26e74f208b3002012e87b444"  # the file's window, before 71a1135


def _to_unsigned(values: np.ndarray, name: str) -> np.ndarray:
    """Integers shifted to start at 0 in the unsigned type of their width; floats to uint16."""
    if values.dtype.kind == "u":
        return values
    if values.dtype.kind == "i" and values.dtype.itemsize <= 2:
        wide = values.astype(np.int32)
        return (wide - wide.min()).astype(np.uint16 if values.dtype.itemsize == 2 else np.uint8)
    if values.dtype.kind == "f":
        top = float(np.iinfo(np.uint16).max)
        shifted = values.astype(np.float64) - values.min()
        peak = float(shifted.max())
        if peak > top:
            shifted *= top / peak
            np.clip(shifted, None, top, out=shifted)
        return np.round(shifted).astype(np.uint16)
    raise BadInput(f"{name}: DICOM pixel values of type {values.dtype.name} are not supported for CXR")


def container_grey(lut_values: np.ndarray, monochrome1: bool, name: str) -> np.ndarray:
    """8-bit grey levels from modality-LUT output (its own dtype: the stored integers, or float64 after a
    rescale), as the container's CXR path at 71a1135..a60a660 computes them."""
    values = lut_values
    if values.dtype != np.uint8:
        values = _to_unsigned(values, name)
        info = np.iinfo(values.dtype)
        values = np.interp(values, (values.min(), values.max()), (info.min, info.max)).astype(values.dtype)
    info = np.iinfo(values.dtype)
    if monochrome1:
        values = info.max - values
    if values.dtype == np.uint8:
        return values
    return np.round(values.astype(np.float64) / (info.max / 255.0)).astype(np.uint8)
