"""`medgemma asr-finetune`: CTC fine-tuning of MedASR (any `lasr_ctc` checkpoint) on recordings + transcripts.

The whole model is trained with the CTC loss `LasrForCTC` computes from `labels` (the tokenizer's ids of each
reference, padding set to -100), through transformers' `Trainer`, in the same crash-safe run folder as
`finetune` and `rl` (`train/run.py`: provenance, complete-or-absent checkpoints, loss log and curve, `--resume`).
The final model (with its processor) is written to `model/`, loadable by `medgemma transcribe --model RUN/model`.

Data: what `medgemma transcribe --data` reads (a folder of `x.wav` + `x.txt`, or a CSV/TSV/JSONL of audio,text);
each recording is decoded to 16 kHz mono like `transcribe`'s input.

Recipe: Google's fine-tuning notebook (Google-Health/medasr@f19ff2c600bcb56fecdc75922063116e24a3c855,
notebooks/fine_tune_with_hugging_face.ipynb): the whole model, AdamW (`adamw_torch`), learning rate 3e-5 with 300
warm-up steps then linear decay, 8 recordings per device x 4 accumulation steps, bf16 where the GPU supports it,
5 epochs for its first run; labels are the tokenizer's ids of each transcript as it encodes them (with `</s>`),
and recordings shorter than 0.6 s are dropped. Not taken: its per-epoch evaluation and best-by-WER checkpoint
(there is no validation split here; score with `transcribe --data`), `group_by_length`, and its 35-epoch
continuation (pass `--epochs`).
"""

from __future__ import annotations

import math
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

MIN_TRAIN_SECONDS = 0.6  # the notebook's min_audio_length_sec


@dataclass
class AsrFinetuneSettings:
    model: str
    data: str
    out: str
    epochs: float = 5.0
    max_steps: int | None = None  # overrides epochs
    learning_rate: float = 3e-5
    batch_size: int = 8
    grad_accum: int = 4
    warmup_steps: int = 300
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
    if min(settings.batch_size, settings.grad_accum, settings.save_steps, settings.max_steps or 1) < 1:
        raise BadInput("--max-steps, --batch-size, --grad-accum and --save-steps must be at least 1")
    if settings.epochs <= 0 or settings.learning_rate <= 0 or settings.warmup_steps < 0:
        raise BadInput("--epochs and --learning-rate must be positive, --warmup-steps not negative")
    run, s = open_run_dir(settings)
    pairs = read_pairs(s.data)
    decoded = [load_audio(p.audio, name=p.audio.name).samples for p in pairs]  # all checked before the model loads
    kept = [(a, p.reference) for a, p in zip(decoded, pairs, strict=True) if len(a) > MIN_TRAIN_SECONDS * SAMPLE_RATE]
    if not kept:
        raise BadInput(f"no recording is longer than {MIN_TRAIN_SECONDS} s")
    per_step = s.batch_size * s.grad_accum
    max_steps = s.max_steps or max(1, math.ceil(math.ceil(len(kept) / s.batch_size) / s.grad_accum * s.epochs))
    resolved = resolve_model(s.model)
    check_asr_checkpoint(resolved.path, resolved.name)

    import torch
    from transformers import AutoModelForCTC, AutoProcessor, Trainer, TrainingArguments

    device = s.device if s.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    processor = AutoProcessor.from_pretrained(str(resolved.path))
    model = AutoModelForCTC.from_pretrained(str(resolved.path), dtype=torch.float32)
    run.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(run / "checkpoints"),
        max_steps=max_steps,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.learning_rate,
        warmup_steps=s.warmup_steps,
        optim="adamw_torch",
        bf16=bf16,
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
        train_dataset=kept,
        data_collator=_collator(processor),
        callbacks=make_callbacks(run, s.quiet, desc="asr-finetune"),
    )
    trainer.keep_checkpoints = s.keep_checkpoints
    resume_from, step0 = ck.resume_point(run / "checkpoints", s.resume)
    if resume_from is not None and step0 >= max_steps:
        trainer.model = AutoModelForCTC.from_pretrained(str(resume_from), dtype=torch.float32)
    else:
        train(
            trainer,
            model,
            run,
            s.resume,
            max_steps,
            "out of memory: lower --batch-size",
            settings=recorded_settings(s),
            model_path=str(resolved.path),
            recordings=len(kept),
            dropped_short=len(pairs) - len(kept),
            examples_per_step=per_step,
            total_steps=max_steps,
            recipe_source="Google-Health/medasr@f19ff2c notebooks/fine_tune_with_hugging_face.ipynb",
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
