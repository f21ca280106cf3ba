"""`Transcriber`: MedASR (any `lasr_ctc` checkpoint) over audio files, chunked, batched, with word timestamps.

>>> from medgemma_toolkit.asr.transcribe import Transcriber
>>> t = Transcriber.load("medasr")                       # or any lasr_ctc checkpoint directory
>>> t.transcribe(["dictation.wav"])[0].text

Decoding follows Google's MedASR usage: transformers' `automatic-speech-recognition` pipeline, greedy CTC (argmax
per frame), `pipe(audio, chunk_length_s=20, stride_length_s=2)`. That call is the google/medasr model card's
snippet as many projects quote it; the quick-start notebook (Google-Health/medasr@f19ff2c,
notebooks/quick_start_with_hugging_face.ipynb) is stored here mostly as embedded outputs and its code cells could
not be read in full. Projects that follow it also show an optional 6-gram KenLM beam search (pyctcdecode, beam 8,
`lm_6.kenlm` from the model repository); that is not done here. Chunking, batching and the model call are the
pipeline's own; only its post-processing is extended, to keep the per-frame ids for word timestamps (`ctc.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput, CapabilityError
from ..models.resolve import resolve_model
from .audio import MIN_SECONDS, SAMPLE_RATE, Audio, load_audio
from .ctc import Word, segments_from_words, words_from_frames

DEFAULT_MODEL = "medasr"
CHUNK_S = 20.0  # the model card's snippet: pipe(audio, chunk_length_s=20, stride_length_s=2)
STRIDE_S = 2.0
MODEL_TYPE = "lasr_ctc"


@dataclass
class Transcript:
    """One recording's transcript. `raw_text` is exactly what the transformers pipeline returns; `text` drops the
    tokenizer's special tokens (`</s>`, `<unk>`, ...) and extra spaces."""

    source: str
    text: str
    raw_text: str
    seconds: float
    words: list[Word] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "text": self.text,
            "raw_text": self.raw_text,
            "duration": round(self.seconds, 3),
            "words": [w.to_dict() for w in self.words],
            "segments": segments_from_words(self.words),
        }


def check_asr_checkpoint(path: Path, name: str) -> None:
    """Refuse, in one line, a checkpoint that is not a MedASR-architecture CTC model (before any weights load)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise BadInput(f"{name}: config.json is missing or not JSON") from None
    if cfg.get("model_type") != MODEL_TYPE:
        raise CapabilityError(
            f"{name}: not a MedASR checkpoint (model_type {str(cfg.get('model_type'))[:40]!r}, expected "
            f"{MODEL_TYPE!r}); transcribe needs a speech model such as medasr"
        )


def check_chunking(chunk_length_s: float, stride_length_s: float) -> None:
    """Chunk settings the pipeline can run: chunks longer than both overlaps, overlaps long enough that the last
    (shortest) chunk still fits the model."""
    if chunk_length_s < 0 or stride_length_s < 0:
        raise BadInput("--chunk-length and --stride-length must not be negative")
    if chunk_length_s and chunk_length_s <= 2 * stride_length_s:
        raise BadInput("--chunk-length must be more than twice --stride-length")
    if chunk_length_s and stride_length_s < MIN_SECONDS:
        raise BadInput(f"--stride-length must be at least {MIN_SECONDS} s when chunking")


def _pipeline_class() -> type:
    from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

    class FramesPipeline(AutomaticSpeechRecognitionPipeline):
        """The stock pipeline, whose result also carries the per-frame ids (`frames`) it decoded.

        One fix: in a padded batch the stock post-processing keeps frames computed from padding when a chunk's
        rounded length exceeds its real output length (a batch then differs from one by one). Each item's real
        output length is taken from its attention mask (the model's own subsampling arithmetic) and the frames are
        cut to it before the stride trimming; the text is decoded from those frames exactly as the stock
        post-processing decodes its own (identical whenever nothing was padded)."""

        def _forward(self, model_inputs, **kwargs):  # type: ignore[no-untyped-def]
            mask = model_inputs.get("attention_mask")
            valid = None if mask is None else self.model._get_subsampling_output_length(mask.sum(-1))
            out = super()._forward(model_inputs, **kwargs)
            if valid is not None:
                out["valid_frames"] = valid
            return out

        def postprocess(self, model_outputs, **kwargs):  # type: ignore[no-untyped-def]
            frames: list[int] = []
            for out in model_outputs:
                ids = out["tokens"].numpy().reshape(-1)
                valid = out.pop("valid_frames", None)
                if valid is not None:
                    ids = ids[: int(valid.reshape(-1)[0])]
                if out.get("stride") is not None:  # the same trimming as the stock postprocess
                    total_n, left, right = out["stride"]
                    ids = ids[left : total_n - right]
                frames.extend(int(i) for i in ids)
            result = super().postprocess(model_outputs, **kwargs)
            result["text"] = self.tokenizer.decode(frames, skip_special_tokens=False)
            result["frames"] = frames
            return result

    return FramesPipeline


class Transcriber:
    """A loaded MedASR pipeline; `transcribe` takes paths or bytes, several at once."""

    def __init__(self, pipe: Any, name: str) -> None:
        self.pipe = pipe
        self.name = name
        tok = pipe.tokenizer
        self._specials = [t for t in tok.all_special_tokens if t != tok.pad_token] + ["<epsilon>"]
        vocab = tok.get_vocab()
        self._special_ids = {vocab[t] for t in self._specials if t in vocab}
        self.seconds_per_frame = pipe._align_to / SAMPLE_RATE

    @classmethod
    def load(cls, model: str | None = None, *, device: str = "auto", allow_download: bool = False) -> Transcriber:
        """Resolve `model` (default `medasr`) offline like any variant and build the pipeline on `device`."""
        resolved = resolve_model(model or DEFAULT_MODEL, allow_download=allow_download)
        if resolved.format != "hf":
            raise CapabilityError(f"{resolved.name}: transcribe needs a Hugging Face checkpoint folder, not a GGUF")
        check_asr_checkpoint(resolved.path, resolved.name)
        import torch
        from transformers import pipeline

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = pipeline(
            "automatic-speech-recognition",
            model=str(resolved.path),
            device=device,
            dtype=torch.float32,
            pipeline_class=_pipeline_class(),
        )
        return cls(pipe, resolved.name)

    def clean(self, raw: str) -> str:
        """The pipeline's text without special tokens, spaces normalised."""
        for s in self._specials:
            raw = raw.replace(s, " ")
        return re.sub(r"\s+", " ", raw).strip()

    def transcribe_audio(
        self,
        audios: Sequence[Audio],
        names: Sequence[str] | None = None,
        *,
        batch_size: int = 1,
        chunk_length_s: float = CHUNK_S,
        stride_length_s: float = STRIDE_S,
    ) -> Iterator[Transcript]:
        """Transcribe decoded recordings in order, `batch_size` chunks per forward pass."""
        if batch_size < 1:
            raise BadInput("--batch-size must be at least 1")
        check_chunking(chunk_length_s, stride_length_s)
        for a, n in zip(audios, names or [], strict=False):
            if a.seconds < MIN_SECONDS:
                raise BadInput(f"{n}: {a.seconds:.2f} s of audio; at least {MIN_SECONDS} s is needed")
        names = list(names or [f"audio {i + 1}" for i in range(len(audios))])
        kwargs: dict[str, Any] = {"batch_size": batch_size}
        if chunk_length_s:
            kwargs |= {"chunk_length_s": chunk_length_s, "stride_length_s": stride_length_s}
        inputs = ({"raw": a.samples, "sampling_rate": SAMPLE_RATE} for a in audios)
        for audio, name, out in zip(audios, names, self.pipe(inputs, **kwargs), strict=True):
            yield self._result(name, audio, out)

    def transcribe(self, sources: Sequence[str | Path], **kwargs: Any) -> list[Transcript]:
        """Decode each file (`BadInput` on the first unreadable one, before any model work) and transcribe."""
        audios = [load_audio(s) for s in sources]
        return list(self.transcribe_audio(audios, [str(s) for s in sources], **kwargs))

    def _result(self, name: str, audio: Audio, out: dict[str, Any]) -> Transcript:
        tok = self.pipe.tokenizer
        words = words_from_frames(
            out["frames"],
            blank=tok.pad_token_id,
            piece=tok.convert_ids_to_tokens,
            decode=lambda ids: self.clean(tok.decode(ids, group_tokens=False)),
            seconds_per_frame=self.seconds_per_frame,
            separators=self._special_ids,
        )
        raw = out["text"]
        return Transcript(name, self.clean(raw), raw, audio.seconds, words)
