"""`medgemma asr-finetune`: CTC fine-tuning of MedASR (any `lasr_ctc` checkpoint) on recordings + transcripts.

The whole model is trained with the CTC loss `LasrForCTC` computes from `labels` (the tokenizer's ids of each
reference, padding set to -100), through transformers' `Trainer`, in the same crash-safe run folder as
`finetune` and `rl` (`train/run.py`: provenance, complete-or-absent checkpoints, loss log and curve, `--resume`).
The final model (with its processor) is written to `model/`, loadable by `medgemma transcribe --model RUN/model`.

Data: what `medgemma transcribe --data` reads (a folder of `x.wav` + `x.txt`, or a CSV/TSV/JSONL of audio,text);
each recording is decoded to 16 kHz mono like `transcribe`'s input. The step defaults (AdamW, lr 1e-4, linear
decay after 10% warm-up, batch 8) are ours: Google's fine-tuning notebook (google-health/medasr,
notebooks/fine_tune_with_hugging_face.ipynb) could not be read in full here, so its recipe is not claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..asr.audio import SAMPLE_RATE, load_audio
from ..asr.score import read_pairs
from ..asr.transcribe import check_asr_checkpoint
from ..errors import BadInput
from ..models.resolve import resolve_model
from . import checkpoints as ck
from .logs import CURVE_NAME, LOG_NAME, make_callbacks, plot_curve, read_log
from .provenance import write_provenance
from .run import atomic_trainer, open_run_dir, recorded_settings, train


@dataclass
class AsrFinetuneSettings:
    model: str
    data: str
    out: str
    max_steps: int = 200
    learning_rate: float = 1e-4
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    save_steps: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    quiet: bool = False


def _collator(processor: Any) -> Any:
    """Log-mel features padded with their attention mask; labels padded with -100 (ignored by the CTC loss)."""

    def collate(batch: list[tuple[Any, str]]) -> dict[str, Any]:
        feats = processor.feature_extractor(
            [a for a, _ in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True
        )
        tok = processor.tokenizer([t for _, t in batch], padding=True, return_tensors="pt")
        labels = tok["input_ids"].masked_fill(tok["attention_mask"] == 0, -100)
        return {**feats, "labels": labels}

    return collate


def run_asr_finetune(settings: AsrFinetuneSettings) -> Path:
    """Train, resumably, and return the run folder (`model/` inside holds the fine-tuned checkpoint)."""
    if settings.max_steps < 1 or settings.batch_size < 1 or settings.grad_accum < 1 or settings.save_steps < 1:
        raise BadInput("--max-steps, --batch-size, --grad-accum and --save-steps must be at least 1")
    run, s = open_run_dir(settings)
    pairs = read_pairs(s.data)
    audios = [load_audio(p.audio, name=p.audio.name).samples for p in pairs]  # all checked before the model loads
    resolved = resolve_model(s.model)
    check_asr_checkpoint(resolved.path, resolved.name)

    import torch
    from transformers import AutoModelForCTC, AutoProcessor, Trainer, TrainingArguments

    device = s.device if s.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(str(resolved.path))
    model = AutoModelForCTC.from_pretrained(str(resolved.path), dtype=torch.float32)
    run.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(run / "checkpoints"),
        max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.learning_rate,
        warmup_steps=s.warmup_ratio,  # a float below 1 is a ratio of the total steps (transformers 5)
        lr_scheduler_type="linear",
        logging_steps=1,
        save_steps=s.save_steps,
        save_strategy="steps",
        report_to=[],
        seed=s.seed,
        use_cpu=device == "cpu",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = atomic_trainer(Trainer)(
        model=model,
        args=args,
        train_dataset=list(zip(audios, [p.reference for p in pairs], strict=True)),
        data_collator=_collator(processor),
        callbacks=make_callbacks(run, s.quiet, desc="asr-finetune"),
    )
    trainer.keep_checkpoints = s.keep_checkpoints
    resume_from, step0 = ck.resume_point(run / "checkpoints", s.resume)
    if resume_from is not None and step0 >= s.max_steps:
        trainer.model = AutoModelForCTC.from_pretrained(str(resume_from), dtype=torch.float32)
    else:
        train(
            trainer,
            model,
            run,
            s.resume,
            s.max_steps,
            "out of memory: lower --batch-size",
            settings=recorded_settings(s),
            model_path=str(resolved.path),
            recordings=len(pairs),
            task="asr-ctc",
        )
    dest = run / "model"
    tmp = dest.with_name(".model.tmp")
    trainer.model.save_pretrained(str(tmp))
    processor.save_pretrained(str(tmp))
    ck.fsync_tree(tmp)
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    tmp.replace(dest)
    rows = read_log(run / LOG_NAME)
    plot_curve(rows, run / CURVE_NAME, title="MedASR CTC loss")
    losses = [r["loss"] for r in rows if "loss" in r]
    write_provenance(run, first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None)
    return run
