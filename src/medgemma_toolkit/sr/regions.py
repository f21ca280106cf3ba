"""`localize` boxes as a TID 1500 Measurement Report: one planar region (SCOORD POLYLINE) per box.

Each region is a closed rectangle in the source image's pixel space (column, row; 0,0 the top-left corner of the
top-left pixel, as PS3.3 C.18.6.1.1 defines it, which is how `localize` reports `xyxy`) and references the exact
instance (and frame) the model saw. The box's label is the region's tracking identifier (text); where the label
names a structure SNOMED CT has a code for in DICOM's code dictionary, the finding site carries that code and
its laterality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .algorithm import AlgorithmInfo
from .document import quiet_highdicom, sop_arguments


@dataclass(frozen=True)
class Region:
    """One box: its label and (x0, y0, x1, y1) in the source image's pixels."""

    label: str
    xyxy: tuple[float, float, float, float]


def finding_site(label: str) -> Any | None:
    """A SNOMED CT finding site for `label` ("right lung" -> Lung, laterality Right), or None when DICOM's code
    dictionary (pydicom's, generated from PS3.16) has no code for the structure."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    words = label.lower().replace("-", " ").split()
    side = None
    if words and words[0] in ("right", "left", "bilateral"):
        side = getattr(codes.SCT, words[0].capitalize())
        words = words[1:]
    if not words:
        return None
    name = "".join(w.capitalize() for w in words)
    code = getattr(codes.SCT, name, None)
    if code is None and name.endswith("s"):  # "lungs" -> Lung, bilateral
        code = getattr(codes.SCT, name[:-1], None)
        side = side or (codes.SCT.Bilateral if code is not None else None)
    if code is None:
        return None
    return hd.sr.FindingSite(anatomic_location=code, laterality=side)


def _rectangle(xyxy: tuple[float, float, float, float]) -> Any:
    import numpy as np

    x0, y0, x1, y1 = xyxy
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def measurement_report(
    source: Any,
    regions: Sequence[Region],
    algo: AlgorithmInfo,
    frame: int | None = None,
) -> Any:
    """A Comprehensive SR (TID 1500) over `source` (its DICOM header) with one planar ROI per region.

    `frame` is the 1-based frame the boxes lie on, for a multi-frame source (None for single-frame images)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    groups = []
    for k, r in enumerate(regions):
        src = hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=[frame] if frame else None,
        )
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_rectangle(r.xyxy), source_image=src
        )
        site = finding_site(r.label)
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{k + 1}: {r.label}"[:64]),
                referenced_region=region,
                finding_type=codes.SCT.AnatomicalStructure,
                algorithm_id=algo.template(),
                finding_sites=[site] if site is not None else None,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=algo.observer(),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    # The "AI generated, not reviewed" marking: the document's flags and its SeriesDescription (TID 1500's root
    # has no free-text slot).
    with quiet_highdicom():
        return hd.sr.Comprehensive3DSR(content=report[0], **sop_arguments(algo, [source], "Anatomy boxes"))
