"""Audio in: any WAV/FLAC/MP3/OGG file or bytes -> 16 kHz mono float32, what MedASR's feature extractor expects.

Decoding is libsndfile's (through `soundfile`: WAV, FLAC, OGG/Vorbis/Opus and MP3 since libsndfile 1.1), with no
ffmpeg needed. Channels are averaged (the transformers pipeline's own downmix), then the signal is resampled with
libsoxr (`soxr`, "HQ"), a band-limited resampler; the transformers pipeline would use torchaudio here, which is
not installed beside our CPU torch. Recordings longer than `max_seconds` are refused before they are decoded, so a
hostile header cannot make us allocate hours of samples.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput

SAMPLE_RATE = 16_000  # MedASR's feature extractor (LasrFeatureExtractor.sampling_rate)
MAX_SECONDS = 2 * 3600.0  # 2 h of 16 kHz float32 is 460 MB: refuse longer recordings
# MedASR's subsampler (two convolutions, kernel 5, stride 2, over 10 ms mel frames) needs ~0.15 s; a shorter input
# makes torch raise. Recordings (and, when chunking, the overlap that bounds the last chunk) must be this long.
MIN_SECONDS = 0.25


@dataclass(frozen=True)
class Audio:
    """Samples at `SAMPLE_RATE`, mono, float32 in [-1, 1], with what they came from."""

    samples: np.ndarray
    source_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array; a 1-D array is already mono."""
    if data.ndim == 1:
        return data
    return data.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with libsoxr (HQ); identity when the rates agree."""
    if rate == target:
        return np.ascontiguousarray(samples, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(samples, dtype=np.float32), rate, target, quality="HQ").astype(np.float32)


def load_audio(source: str | Path | bytes, *, name: str | None = None, max_seconds: float = MAX_SECONDS) -> Audio:
    """Decode `source` (a path or the file's bytes) to 16 kHz mono float32; `BadInput` in one line otherwise.

    >>> load_audio("dictation.flac").seconds
    """
    import soundfile as sf

    label = name or (source if isinstance(source, str | Path) else "audio")
    if isinstance(source, str | Path):
        p = Path(source)
        if not p.is_file():
            raise BadInput(f"{label}: no such audio file")
        handle: str | io.BytesIO = str(p)
    else:
        if not source:
            raise BadInput(f"{label}: empty audio")
        handle = io.BytesIO(source)
    try:
        with sf.SoundFile(handle) as f:
            rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            if rate <= 0 or channels <= 0:
                raise BadInput(f"{label}: invalid audio header")
            if frames > max_seconds * rate:
                raise BadInput(f"{label}: {frames / rate:.0f} s of audio; the limit is {max_seconds:.0f} s")
            data = f.read(dtype="float32", always_2d=True)
    except BadInput:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as e:
        raise BadInput(f"{label}: not a readable WAV/FLAC/MP3/OGG file ({_reason(e)})") from None
    if data.shape[0] < MIN_SECONDS * rate:
        raise BadInput(f"{label}: {data.shape[0] / rate:.2f} s of audio; at least {MIN_SECONDS} s is needed")
    if not np.isfinite(data).all():
        raise BadInput(f"{label}: the recording has non-finite samples")
    return Audio(resample(to_mono(data), rate), rate, channels)


def _reason(e: Exception) -> str:
    """libsndfile's short message, without the file name it may repeat."""
    msg = str(getattr(e, "error_string", "") or type(e).__name__)
    return msg.splitlines()[0][:80]
