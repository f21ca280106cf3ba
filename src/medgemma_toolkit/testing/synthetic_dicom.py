"""Synthetic DICOM for tests and benchmarks: CT/MR series with PHI-laden headers, written with pydicom.

Pixel values are a deterministic function of the slice index, so tests can recompute every window exactly.
The PHI values are fake but look real, so de-identification tests can search the output bytes for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

FAKE_PHI = {
    "PatientName": "Doe^Janet^Q",
    "PatientID": "MRN-8675309",
    "PatientBirthDate": "19610214",
    "PatientAddress": "12 Elm Street, Springfield",
    "AccessionNumber": "ACC-5551234",
    "InstitutionName": "Springfield General Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "OperatorsName": "Tech^Tina",
    "StudyID": "STUDY-42-XYZ",
    "OtherPatientIDs": "ALT-99887766",
    "StationName": "CTSCANNER-ROOM-7",
    "DeviceSerialNumber": "SN-00991122",
}


def slice_pixels(index: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Stored int16 values spanning air to bone (HU -1024..~2000 with intercept -1024), varying by slice."""
    rng = np.random.default_rng(seed * 100_003 + index)
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = ((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) < (min(rows, cols) * 0.42) ** 2
    base = np.where(body, 1024 + 40 + (index * 7) % 60, 0).astype(np.int32)
    noise = rng.integers(-30, 31, size=(rows, cols))
    bone = ((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) < (min(rows, cols) * 0.08) ** 2
    return np.clip(base + noise + bone * 1200, 0, 4095).astype(np.int16)


@dataclass
class SeriesSpec:
    """What to write; defaults give a plain axial CT series."""

    slices: int = 12
    rows: int = 32
    cols: int = 32
    modality: str = "CT"
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    spacing: float = 2.5
    origin: tuple[float, float, float] = (-100.0, -100.0, -50.0)
    slope: float = 1.0
    intercept: float = -1024.0
    acquisition: int = 1
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    series_uid: str = "1.2.826.0.1.3680043.8.498.1"
    study_uid: str = "1.2.826.0.1.3680043.8.498.2"
    phi: dict[str, str] = field(default_factory=lambda: dict(FAKE_PHI))
    seed: int = 0
    first_instance: int = 1
    inplane_jitter: float = 0.0  # mm of pseudo-random shift along the column direction (breaks z-only ordering)
    reverse_instances: bool = False  # InstanceNumber runs opposite to position (common: numbered head to feet)


def make_slice(spec: SeriesSpec, index: int, uid_suffix: str = "") -> Dataset:
    """One slice as a pydicom Dataset (Explicit VR Little Endian, uncompressed)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop_class = CT_IMAGE_STORAGE if spec.modality == "CT" else MR_IMAGE_STORAGE
    sop_uid = f"{spec.series_uid}.{spec.acquisition}.{index + 1}{uid_suffix}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class  # type: ignore[assignment]  # pydicom types it UID; the setter takes str
    meta.MediaStorageSOPInstanceUID = sop_uid  # type: ignore[assignment]  # pydicom types it UID; the setter takes str
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = spec.series_uid + ".9"
    ds.Modality = spec.modality
    ds.ImageType = list(spec.image_type)
    ds.StudyDate = "20240102"
    ds.SeriesDate = "20240102"
    ds.ContentDate = "20240102"
    ds.StudyTime = "101530"
    ds.SeriesDescription = "CHEST W CONTRAST"
    ds.StudyDescription = "CT CHEST"
    ds.BurnedInAnnotation = "NO"
    for k, v in spec.phi.items():
        setattr(ds, k, v)
    ds.InstanceNumber = spec.first_instance + (spec.slices - 1 - index if spec.reverse_instances else index)
    ds.AcquisitionNumber = spec.acquisition
    row, col = np.array(spec.orientation[:3]), np.array(spec.orientation[3:])
    normal = np.cross(row, col)
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in spec.orientation]
    shift = spec.inplane_jitter * ((index * 7919) % 13 - 6) / 6.0
    position = np.array(spec.origin) + normal * spec.spacing * index + col * shift
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.SliceThickness = str(spec.spacing)
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = str(spec.slope)
    ds.RescaleIntercept = str(spec.intercept)
    ds.RescaleType = "HU" if spec.modality == "CT" else "US"
    ds.PixelData = slice_pixels(index, spec.rows, spec.cols, spec.seed).tobytes()
    # A private block, as vendors write them, for de-identification tests.
    block = ds.private_block(0x0009, "ACME Scanner", create=True)
    block.add_new(0x01, "LO", spec.phi.get("PatientName", "private"))
    return ds


def write_series(directory: str | Path, spec: SeriesSpec = SeriesSpec(), names: list[str] | None = None) -> list[Path]:
    """Write `spec.slices` files into `directory` (names default to slice_000.dcm ...); return their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(spec.slices):
        p = out / (names[i] if names else f"s{spec.series_uid.replace('.', '_')}_a{spec.acquisition}_{i:03d}.dcm")
        make_slice(spec, i).save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths
