"""A Secondary Capture of the image with the boxes burnt in, for viewers that do not render SR regions.

The pixels are the image as `localize` rendered it (windowed, 8-bit RGB) with the overlay drawn on; the header
takes Patient/Study from the source (as the SRs do), new Series/SOP UIDs, BurnedInAnnotation YES (the labels are
text in the pixels), the "AI generated, not reviewed" marking in SeriesDescription and ImageComments, and a
reference to the source instance it was derived from.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from .algorithm import MANUFACTURER, AlgorithmInfo
from .document import SERIES_NUMBER, marker_text, quiet_highdicom, series_description


def overlay_capture(source: Any, drawn: Image.Image, algo: AlgorithmInfo) -> Any:
    """A Secondary Capture Image of `drawn` (RGB), derived from `source` (a DICOM header)."""
    import highdicom as hd

    from .evidence import for_sr

    orientation = source.get("PatientOrientation")
    known = orientation is not None and len(orientation) == 2
    with quiet_highdicom():
        # highdicom asks for an orientation in the patient frame; a placeholder when the source has none...
        sc = _capture(hd, for_sr(source), drawn, tuple(orientation) if known else ("L", "F"))
    # ...replaced by the source's own or left empty (type 2: unknown), never invented.
    sc.PatientOrientation = list(orientation) if known else None
    return _describe(sc, source, algo)


def _capture(hd: Any, ref: Any, drawn: Image.Image, orientation: Any) -> Any:
    import numpy as np

    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=np.asarray(drawn.convert("RGB"), dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER + 1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )


def _describe(sc: Any, source: Any, algo: AlgorithmInfo) -> Any:
    from pydicom.dataset import Dataset

    sc.SeriesDescription = series_description(algo, "Anatomy boxes, burnt in")
    sc.ImageComments = marker_text(algo)[:10240]
    sc.BurnedInAnnotation = "YES"
    # Type 2C, needed for paired body parts (a chest is not one, but validators cannot know): the source's, or empty
    sc.Laterality = source.get("Laterality", "")
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = f"Boxes from {algo.model} drawn on the rendered source image"[:1024]
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [item]
    return sc
