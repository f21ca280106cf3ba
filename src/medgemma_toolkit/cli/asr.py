"""`transcribe`: MedASR speech-to-text over audio files (the `ask --audio` dictation path uses the same code)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from . import app
from .common import DeviceOpt, DownloadOpt, option_groups

if TYPE_CHECKING:
    from ..asr.audio import Audio
    from ..asr.transcribe import Transcriber, Transcript


@dataclasses.dataclass(frozen=True)
class AsrOptions:
    """How recordings are cut and batched (`ask --audio` uses the defaults: the model card's 20 s / 2 s)."""

    chunk_length: Annotated[
        float, typer.Option(help="Seconds per chunk of long recordings (the model card's: 20); 0 = no chunking")
    ] = 20.0
    stride_length: Annotated[
        float, typer.Option(help="Seconds of overlap on each side of a chunk, dropped after decoding (model card: 2)")
    ] = 2.0
    batch_size: Annotated[int, typer.Option(help="Chunks per forward pass")] = 1

    def check(self) -> None:
        """Refuse impossible settings before any audio is decoded or any model loads."""
        from ..asr.transcribe import check_chunking
        from ..errors import BadInput

        if self.batch_size < 1:
            raise BadInput("--batch-size must be at least 1")
        check_chunking(self.chunk_length, self.stride_length)

    def run(
        self, transcriber: Transcriber, audios: list[Audio], names: list[str], quiet: bool = False
    ) -> list[Transcript]:
        out = []
        with _progress(sum(a.seconds for a in audios), quiet) as advance:
            for audio, t in zip(
                audios,
                transcriber.transcribe_audio(
                    audios,
                    names,
                    batch_size=self.batch_size,
                    chunk_length_s=self.chunk_length,
                    stride_length_s=self.stride_length,
                ),
                strict=True,
            ):
                out.append(t)
                advance(audio.seconds)
        return out


ASR_DEFAULTS = AsrOptions()


def decode_all(sources: list[str]) -> list[Audio]:
    """Every recording decoded (and checked) before the speech model loads."""
    from ..asr.audio import load_audio

    return [load_audio(s) for s in sources]


@contextmanager
def _progress(total_seconds: float, quiet: bool) -> Iterator[Any]:
    """A rich progress bar over seconds of audio, on a terminal's stderr only."""
    if quiet or not sys.stderr.isatty():
        yield lambda _s: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("transcribing"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s of audio"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("asr", total=total_seconds)
        yield lambda s: bar.advance(task, s)


def transcribe_dictation(
    audio: str, request: str | None, model: str | None, device: str, allow_download: bool
) -> dict[str, Any]:
    """`ask --audio`: decode (before any model loads), transcribe with the default chunking, build the user text.

    Returns what `ask --json` shows under "dictation": the transcript, the prompt version and the text sent."""
    from ..asr.dictation import dictation_prompt
    from ..asr.transcribe import Transcriber

    audios = decode_all([audio])
    transcriber = Transcriber.load(model, device=device, allow_download=allow_download)
    (t,) = ASR_DEFAULTS.run(transcriber, audios, [audio], quiet=True)
    del transcriber  # free the recogniser before MedGemma loads
    prompt = dictation_prompt(t.text, request)
    return {
        "asr_model": model or "medasr",
        "transcript": t.text,
        "duration": round(t.seconds, 3),
        "prompt_version": prompt.version,
        "request": prompt.request,
        "prompt": prompt.text,
    }


@app.command()
@option_groups(ao=AsrOptions)
def transcribe(
    audio: Annotated[
        Optional[list[str]], typer.Argument(help="Audio files: WAV, FLAC, MP3 or OGG (any rate, any channels)")
    ] = None,
    ao: AsrOptions = ASR_DEFAULTS,
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="medasr (default), a registered name or a lasr_ctc checkpoint directory"),
    ] = None,
    allow_download: DownloadOpt = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Also write the result: .json (what --json prints) or .txt")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: each transcript with word timestamps and segments")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
    device: DeviceOpt = "auto",
    data: Annotated[
        Optional[Path],
        typer.Option(
            help="Score against references: a folder of recordings with <stem>.txt beside each, or a CSV/TSV/JSONL with audio,text; adds WER/CER with 95% intervals"
        ),
    ] = None,
) -> None:
    """Transcribe medical dictation with MedASR (16 kHz mono CTC; long recordings in overlapping chunks).

    Example: medgemma transcribe dictation.wav
    Example: medgemma transcribe -m medasr --json --out notes.json a.flac b.mp3
    Example: medgemma transcribe --data dictations/ --json
    """
    from ..asr.transcribe import Transcriber
    from ..errors import BadInput

    ao.check()
    if out is not None and out.suffix.lower() not in (".json", ".txt"):
        raise BadInput(f"--out {out.name}: write .json or .txt")
    pairs = None
    if data is not None:
        from ..asr.score import read_pairs

        if audio:
            raise BadInput("give audio files or --data, not both")
        pairs = read_pairs(data)
        audio = [str(p.audio) for p in pairs]
    if not audio:
        raise BadInput("give at least one audio file (or --data)")
    audios = decode_all(audio)
    transcriber = Transcriber.load(model, device=device, allow_download=allow_download)
    results = ao.run(transcriber, audios, list(audio), quiet=quiet or as_json)
    doc: dict[str, Any] = {
        "model": transcriber.name,
        "chunk_length_s": ao.chunk_length,
        "stride_length_s": ao.stride_length,
        "decoding": "greedy CTC",
        "transcripts": [t.to_dict() for t in results],
    }
    if pairs is not None:
        from ..asr.score import error_rates

        doc["score"] = error_rates([p.reference for p in pairs], [t.text for t in results])
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".json":
            out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
        else:
            out.write_text("".join(t.text + "\n" for t in results))
    if as_json:
        print(json.dumps(doc, ensure_ascii=False))
        return
    for t in results:
        print(f"{t.source}: {t.text}" if len(results) > 1 else t.text)
    if "score" in doc:
        sc = doc["score"]
        print(
            f"WER {sc['wer']:.3f} (95% CI {_ci(sc['wer_ci95'])}), CER {sc['cer']:.3f} (95% CI {_ci(sc['cer_ci95'])}) "
            f"over {sc['recordings']} recordings, {sc['reference_words']} reference words"
        )


def _ci(ci: list[float | None]) -> str:
    return "n/a" if ci[0] is None or ci[1] is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


@app.command("asr-finetune")
def asr_finetune(
    data: Annotated[
        Path, typer.Option(help="A folder of recordings with <stem>.txt transcripts, or a CSV/TSV/JSONL of audio,text")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (new, or --resume an interrupted one)")],
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="medasr (default), a registered name or a lasr_ctc checkpoint directory"),
    ] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the data (Google's notebook: 5, then up to 35)")] = 5.0,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (overrides --epochs)")] = None,
    learning_rate: Annotated[float, typer.Option(help="AdamW peak learning rate (notebook: 3e-5)")] = 3e-5,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps, then linear decay (notebook: 300)")] = 300,
    batch_size: Annotated[int, typer.Option(help="Recordings per device per step (notebook: 8)")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps (notebook: 4)")] = 4,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every N steps")] = 50,
    seed: Annotated[int, typer.Option()] = 0,
    device: DeviceOpt = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's provenance as one JSON object")] = False,
) -> None:
    """Fine-tune MedASR with the CTC loss on your recordings and transcripts, in a crash-safe run folder.

    Example: medgemma asr-finetune --data dictations/ -o runs/asr1 --max-steps 500
    Example: medgemma asr-finetune --data dictations/ -o runs/asr1 --resume
    """
    from ..train.asr import AsrFinetuneSettings, run_asr_finetune
    from ..train.provenance import read_provenance

    run = run_asr_finetune(
        AsrFinetuneSettings(
            model=model or "medasr",
            data=str(data),
            out=str(out),
            epochs=epochs,
            max_steps=max_steps,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            save_steps=save_steps,
            seed=seed,
            device=device,
            resume=resume,
            quiet=quiet or as_json,
        )
    )
    prov = read_provenance(run) or {}
    if as_json:
        print(json.dumps(prov, ensure_ascii=False))
        return
    print(f"model: {run / 'model'} (loss {prov.get('first_loss')} -> {prov.get('last_loss')})")
