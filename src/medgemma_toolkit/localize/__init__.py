"""Anatomy localisation: boxes from MedGemma's answers, mapped back to the original image's pixels.

Google's CXR localisation notebook pads the image to a square, asks with its instruction block (preset
`cxr-localize`) and reads `[y0, x0, y1, x1]` boxes in a 0-1000 frame over the padded square from the answer's JSON.
"""

from __future__ import annotations

from .geometry import to_pixels
from .parse import Box, Parsed, parse_boxes
from .run import LocalizeResult, localize

__all__ = ["Box", "LocalizeResult", "Parsed", "localize", "parse_boxes", "to_pixels"]
