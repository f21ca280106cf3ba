"""Property-based fuzzing of the DICOM input path: whatever the bytes or header values, only the toolkit's own
documented errors (MedGemmaError subclasses) may escape `load_parts` and `decode_image_bytes`."""

from __future__ import annotations

import shutil
import tempfile
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medgemma_toolkit.errors import MedGemmaError
from medgemma_toolkit.imaging import ImageOptions, decode_image_bytes, load_parts
from medgemma_toolkit.testing.synthetic_dicom import SeriesSpec, make_slice

SPEC = SeriesSpec(slices=3, rows=8, cols=8)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _bytes(ds) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


VALID = [_bytes(make_slice(SPEC, i)) for i in range(SPEC.slices)]


def _load_dir(files: list[bytes]):
    d = Path(tempfile.mkdtemp(prefix="fuzz"))
    try:
        for k, data in enumerate(files):
            (d / f"{k:02d}.dcm").write_bytes(data)
        try:
            load_parts(str(d), ImageOptions(), 16)
        except MedGemmaError as e:
            assert "\n" not in str(e)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _decode_one(data: bytes):
    try:
        decode_image_bytes(data, "fuzz.dcm", ImageOptions())
    except MedGemmaError as e:
        assert "\n" not in str(e)


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, len(VALID[0])), st.binary(max_size=0)),
    st.tuples(st.just("overwrite"), st.integers(0, len(VALID[0]) - 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID[0])), st.binary(min_size=1, max_size=16)),
)


def _mutate(data: bytes, m) -> bytes:
    kind, pos, payload = m
    if kind == "truncate":
        return data[:pos]
    if kind == "overwrite":
        return data[:pos] + payload + data[pos + len(payload) :]
    return data[:pos] + payload + data[pos:]


@FUZZ
@given(which=st.integers(0, SPEC.slices - 1), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_bytes_in_a_series(which, mutations):
    files = list(VALID)
    for m in mutations:
        files[which] = _mutate(files[which], m)
    _load_dir(files)
    _decode_one(files[which])


# Header values: the attributes the series path reads, set to anything of roughly the right shape.
numbers = st.one_of(st.integers(-(2**31), 2**31), st.floats(allow_nan=True, allow_infinity=True), st.just(""))
text = st.text(alphabet=st.characters(codec="ascii"), max_size=12)
header = st.fixed_dictionaries(
    {},
    optional={
        "Rows": st.integers(0, 70000),
        "Columns": st.integers(0, 70000),
        "BitsAllocated": st.sampled_from([1, 8, 12, 16, 32, 64]),
        "BitsStored": st.integers(0, 40),
        "PixelRepresentation": st.integers(0, 2),
        "SamplesPerPixel": st.integers(0, 4),
        "NumberOfFrames": st.integers(0, 5),
        "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "RGB", "PALETTE COLOR", "??"]),
        "ImagePositionPatient": st.lists(numbers, max_size=4),
        "ImageOrientationPatient": st.lists(numbers, max_size=7),
        "RescaleSlope": numbers,
        "RescaleIntercept": numbers,
        "InstanceNumber": numbers,
        "AcquisitionNumber": numbers,
        "Modality": text,
        "ImageType": st.lists(text, max_size=3),
        "SeriesInstanceUID": text,
        "PixelData": st.binary(max_size=300),
        "_delete": st.sampled_from(["PixelData", "Rows", "ImageOrientationPatient", "SOPClassUID"]),
    },
)


def _apply(ds, values: dict) -> None:
    with pydicom.config.disable_value_validation():
        for k, v in values.items():
            if k == "_delete":
                if v in ds:
                    delattr(ds, v)
                continue
            if isinstance(v, list):
                v = [str(x) for x in v]
            elif isinstance(v, float):
                v = str(v)
            try:
                setattr(ds, k, v)
            except (ValueError, TypeError, OverflowError):
                pass  # pydicom refuses to even hold it: not a file anyone can send us


@FUZZ
@given(which=st.integers(0, SPEC.slices - 1), values=header)
def test_arbitrary_header_values(which, values):
    datasets = [make_slice(SPEC, i) for i in range(SPEC.slices)]
    _apply(datasets[which], values)
    try:
        files = [_bytes(ds) for ds in datasets]
    except Exception:
        return  # pydicom cannot write it: not an input that can exist on disk
    _load_dir(files)
    _decode_one(files[which])


@pytest.mark.parametrize("n", [0, 1, 131, 132, 200])
def test_short_prefixes(n):
    _load_dir([VALID[0][:n], VALID[1]])
    _decode_one(VALID[0][:n])


@FUZZ
@given(source=st.one_of(st.text(min_size=1, max_size=5000), st.text(alphabet="/.*?[]\x00a", max_size=300)))
def test_any_source_string(source):
    """Whatever string arrives as an image source (CLI flag, eval row, API call), only documented errors."""
    if source.lower().startswith(("http", "dicomweb")):
        source = "x" + source  # URLs would try the network
    try:
        load_parts(source, ImageOptions(), 16)
    except MedGemmaError as e:
        assert "\n" not in str(e)


# Compressed and deflated files from pydicom's test data (written by other toolkits: dcmtk, gdcm, ...): the
# codestream size checks and the bounded inflation must pass every honest one and survive any mutation of them.
COMPRESSED = [
    "SC_rgb_jpeg_gdcm.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle_2frame.dcm",
    "image_dfl.dcm",
]


@pytest.mark.parametrize("name", COMPRESSED)
def test_honest_compressed_and_deflated_files_decode_like_pydicom(name):
    import numpy as np

    from medgemma_toolkit.imaging.dicom import dicom_frame, read_dataset

    data = Path(pydicom.data.get_testdata_file(name)).read_bytes()
    ours = dicom_frame(read_dataset(data, name), name, ImageOptions())
    ref = pydicom.dcmread(BytesIO(data))
    frames = int(getattr(ref, "NumberOfFrames", 1) or 1)
    expected = ref.pixel_array[frames // 2] if frames > 1 else ref.pixel_array
    assert np.array_equal(ours, expected)


@FUZZ
@given(st.sampled_from(COMPRESSED), st.integers(0, 2**31), st.binary(min_size=1, max_size=8))
def test_mutated_codestreams_raise_only_documented_errors(name, at, patch):
    data = Path(pydicom.data.get_testdata_file(name)).read_bytes()
    pos = len(data) // 2 + at % (len(data) // 2)  # somewhere in the pixel data (or the deflated stream)
    _decode_one(data[:pos] + patch + data[pos + len(patch) :])
