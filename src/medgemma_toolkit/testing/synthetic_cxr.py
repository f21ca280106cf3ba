"""A synthetic chest radiograph as DICOM (CR, 12-bit, with a VOI window), for windowing tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def make_cxr(
    rows: int = 48,
    cols: int = 40,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    centers: list[float] | None = None,
    widths: list[float] | None = None,
) -> Dataset:
    """A pydicom Dataset whose stored values span 0..4095 (a bright mediastinum, darker lungs, noise)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # type: ignore[assignment]  # CR Image Storage; str ok
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.77.1"  # type: ignore[assignment]  # pydicom types it UID; the setter takes str
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:rows, 0:cols]
    lungs = (np.abs(xx - cols / 2) > cols * 0.1) & (np.abs(xx - cols / 2) < cols * 0.4) & (yy > rows * 0.15)
    img = np.where(lungs, 900, 2600) + rng.integers(-300, 301, size=(rows, cols)) + (yy * 1200 // rows)
    ds.PixelData = np.clip(img, 0, 4095).astype(np.uint16).tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept or 0.0, "US"
    ds.WindowCenter = centers if centers else 1800.0
    ds.WindowWidth = widths if widths else 2001.0
    return ds
