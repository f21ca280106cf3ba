"""Dictation to report: how a MedASR transcript enters MedGemma's prompt (named, versioned data).

The MedASR release pairs the recogniser with MedGemma for downstream text (its card suggests giving MedGemma the
transcript); neither the card nor Google's MedASR notebooks give a prompt wording, so this one is ours, kept as data
with a version so that results name it. The transcript goes into the user turn's text, after the user's request,
fenced and labelled as machine transcription (it may contain recognition errors); images, when given, go where the
model's own preset puts them (MedGemma 1.5: before the text), so the dictation sits with the question.
"""

from __future__ import annotations

from dataclasses import dataclass

DICTATION_VERSION = "dictation-v1"
DEFAULT_REQUEST = (
    "Turn this dictation into a structured radiology report with the sections Findings and Impression. "
    "Keep every finding the speaker states; do not add findings."
)
TEMPLATE = (
    '{request}\n\nDictation (automatic speech recognition, may contain recognition errors):\n"""\n{transcript}\n"""'
)


@dataclass(frozen=True)
class DictationPrompt:
    text: str  # the user text MedGemma gets
    request: str
    version: str = DICTATION_VERSION


def dictation_prompt(transcript: str, request: str | None = None) -> DictationPrompt:
    """The user text for `ask --audio`: the request (default: a structured report) and the fenced transcript.

    >>> dictation_prompt("no pleural effusion", "summarise").text.splitlines()[0]
    'summarise'
    """
    req = (request or "").strip() or DEFAULT_REQUEST
    return DictationPrompt(TEMPLATE.format(request=req, transcript=transcript.strip()), req)
