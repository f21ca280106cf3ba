"""Error types the toolkit raises on purpose.

The CLI turns every `MedGemmaError` into one line on stderr and its `exit_code`; the server turns it into an
OpenAI-format error with `http_status`. Messages must never carry DICOM header values (PHI): name the problem and
the user's own path or option, nothing read from inside a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class MedGemmaError(Exception):
    """Base of every error meant for a user. One line, no PHI."""

    exit_code: int = 2
    http_status: int = 400
    code: str = "invalid_request_error"

    def __str__(self) -> str:  # keep it to one line whatever the caller passed
        return " ".join(super().__str__().split())


class BadInput(MedGemmaError):
    """The user's input (file, image, option, request) cannot be used as given."""


class UnsupportedFormat(BadInput):
    """A file that is not one of the formats we read."""


class ImageTooLarge(BadInput):
    """An image over the pixel limit (decompression-bomb guard)."""

    http_status = 413


class ModelNotFound(MedGemmaError):
    """The model named by `--model` is not on this machine (and downloading was not allowed)."""

    http_status = 404
    code = "model_not_found"


class BackendUnavailable(MedGemmaError):
    """The chosen backend or feature needs something this machine lacks (a package, CUDA, ...)."""

    http_status = 503
    code = "backend_unavailable"


class CapabilityError(BadInput):
    """The model cannot do what was asked (e.g. an image sent to a text-only model)."""


class DeviceOutOfMemory(BackendUnavailable):
    """The accelerator ran out of memory for this work; smaller batches (or a later retry) may fit."""

    code = "out_of_memory"


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """`table[name]` from one of the named tables (presets, recipes, protocols), or a one-line `BadInput` naming
    the choices."""
    try:
        return table[name]
    except KeyError:
        raise BadInput(f"unknown {what} {name!r}; choose one of: {', '.join(table)}") from None
