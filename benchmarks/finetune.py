"""Step time and peak memory of `medgemma finetune` against a plain TRL SFTTrainer script written the way Google's
MedGemma fine-tuning notebook is (datasets `imagefolder`, a `collate_fn` that applies the chat template and masks
padding/image tokens, `LoraConfig(target_modules="all-linear", modules_to_save=["lm_head", "embed_tokens"])`,
`SFTConfig` with the notebook's hyper-parameters).

Same tiny random MedGemma-architecture checkpoint, same 16 images, same batch size, accumulation, steps, checkpoint
interval and gradient checkpointing; each side runs in its own process, one after the other, in this one run. Step
time is the mean time between consecutive per-step logs (first step excluded: warm-up), median over rounds; peak RSS is the child's
`ru_maxrss`. A third process runs the notebook script with LoRA restricted to the language model like ours, to
separate the effect of the adapter's scope from the rest of the pipeline. Ours trains with the `medgemma-1.5` preset
(image before question, no system prompt), which renders exactly the notebook's user turn, so both sides see the
same token streams. Wall time on a shared machine is noisy; CPU seconds per step are reported beside it.

    .venv/bin/python benchmarks/finetune.py [--steps 12] [--batch-size 4] [--grad-accum 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PROMPT = "What does this image show? Answer with exactly one of: edema, normal."

NOTEBOOK_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model_id, data_dir, out_dir, steps, bs, accum, save_steps, scope, times_path = sys.argv[1:10]
    PROMPT = "What does this image show? Answer with exactly one of: {options}."

    data = load_dataset("imagefolder", data_dir=data_dir, split="train")
    names = data.features["label"].names

    def format_data(example):
        example["messages"] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT.format(options=", ".join(names))}]},
            {"role": "assistant", "content": [{"type": "text", "text": names[example["label"]]}]},
        ]
        return example

    data = data.map(format_data)
    model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=torch.float32, attn_implementation="eager")
    processor = AutoProcessor.from_pretrained(model_id)
    processor.tokenizer.padding_side = "right"

    def collate_fn(examples):
        texts, images = [], []
        for example in examples:
            images.append([example["image"].convert("RGB")])
            texts.append(processor.apply_chat_template(example["messages"], add_generation_prompt=False, tokenize=False).strip())
        batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
        labels = batch["input_ids"].clone()
        tok = processor.tokenizer
        labels[labels == tok.pad_token_id] = -100
        for t in ("<start_of_image>", "<end_of_image>", "<image_soft_token>"):
            labels[labels == tok.convert_tokens_to_ids(t)] = -100
        batch["labels"] = labels
        return batch

    if scope == "notebook":
        peft_config = LoraConfig(lora_alpha=16, lora_dropout=0.05, r=16, bias="none", target_modules="all-linear",
                                 task_type="CAUSAL_LM", modules_to_save=["lm_head", "embed_tokens"])
    else:
        from medgemma_toolkit.train.recipe import LANGUAGE_LINEAR_REGEX
        peft_config = LoraConfig(lora_alpha=16, lora_dropout=0.05, r=16, bias="none",
                                 target_modules=LANGUAGE_LINEAR_REGEX, task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=out_dir, max_steps=int(steps), per_device_train_batch_size=int(bs),
        gradient_accumulation_steps=int(accum), gradient_checkpointing=True, optim="adamw_torch", logging_steps=1,
        save_strategy="steps", save_steps=int(save_steps), learning_rate=2e-4, max_grad_norm=0.3, warmup_steps=0.03,
        lr_scheduler_type="linear", report_to="none", gradient_checkpointing_kwargs={"use_reentrant": False},
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, label_names=["labels"],
        use_cpu=True, disable_tqdm=True, max_length=None,
    )

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.t, self.rows = None, []
        def on_train_begin(self, a, s, c, **k):
            self.t, self.cpu = time.perf_counter(), time.process_time()
        def on_log(self, a, s, c, logs=None, **k):
            if logs and "loss" in logs:
                now, cpu = time.perf_counter(), time.process_time()
                self.rows.append([now - self.t, cpu - self.cpu]); self.t, self.cpu = now, cpu

    timer = StepTimes()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, peft_config=peft_config,
                         processing_class=processor, data_collator=collate_fn, callbacks=[timer])
    trainer.train()
    json.dump(timer.rows, open(times_path, "w"))
""")


def make_data(root: Path, per_class: int = 8) -> Path:
    from PIL import Image

    rng = random.Random(0)
    for name, color in (("edema", (40, 40, 210)), ("normal", (210, 40, 40))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = Image.new("RGB", (40 + rng.randrange(24), 32 + rng.randrange(24)), color)
            for _ in range(40):
                im.putpixel((rng.randrange(im.width), rng.randrange(im.height)), (255, 255, 255))
            im.save(root / name / f"{i}.png")
    return root


def run_child(cmd: list[str], threads: int) -> tuple[int, float]:
    """Run `cmd`; return (exit code, peak RSS in MiB) of that process alone."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    if threads > 0:  # same torch thread count on both sides (1 keeps spin-waiting threads out of CPU time)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(err[-3000:], file=sys.stderr)
    return code, usage.ru_maxrss / 1024.0


def mean_after_first(values: list[float]) -> float:
    """Mean seconds per step without the first (warm-up). A mean, not a median: with 16 examples and accumulation,
    epoch boundaries make every other step short, and a median would pick one kind."""
    rest = values[1:] if len(values) > 1 else values
    return sum(rest) / len(rest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--save-steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved repetitions of the three runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (0: library default)")
    a = ap.parse_args()

    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma
    from medgemma_toolkit.testing.trainable import make_trainable
    from medgemma_toolkit.train.logs import read_log

    runs: dict[str, list[tuple[float, float, float]]] = {"ours": [], "notebook": [], "matched": []}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model = make_trainable(build_tiny_medgemma(t / "tiny-medgemma"))
        data = make_data(t / "data")
        script = t / "notebook_sft.py"
        script.write_text(NOTEBOOK_SCRIPT)
        for rnd in range(a.rounds):
            names = list(runs)
            for name in names[rnd % 3 :] + names[: rnd % 3]:  # rotate the order: no side always runs first
                out = t / f"{name}-{rnd}"
                if name == "ours":
                    code, rss = run_child(
                        [
                            sys.executable,
                            "-m",
                            "medgemma_toolkit",
                            "finetune",
                            "--model",
                            str(model),
                            "--data",
                            str(data),
                            "--out",
                            str(out),
                            "--recipe",
                            "notebook",
                            "--max-steps",
                            str(a.steps),
                            "--batch-size",
                            str(a.batch_size),
                            "--grad-accum",
                            str(a.grad_accum),
                            "--save-steps",
                            str(a.save_steps),
                            "--val-fraction",
                            "0",
                            "--device",
                            "cpu",
                            "--quiet",
                            "--preset",
                            "medgemma-1.5",
                        ],
                        a.threads,
                    )  # image then question, no system prompt: the notebook's turn
                    rows = read_log(out / "loss_log.jsonl")
                    wall, cpu = [r["step_time_s"] for r in rows], [r["step_cpu_s"] for r in rows]
                else:
                    times = t / f"times-{name}-{rnd}.json"
                    code, rss = run_child(
                        [
                            sys.executable,
                            str(script),
                            str(model),
                            str(data),
                            str(out),
                            str(a.steps),
                            str(a.batch_size),
                            str(a.grad_accum),
                            str(a.save_steps),
                            name,
                            str(times),
                        ],
                        a.threads,
                    )
                    rows = json.loads(times.read_text()) if code == 0 else []
                    wall, cpu = [r[0] for r in rows], [r[1] for r in rows]
                if code != 0:
                    sys.exit(f"{name} run failed")
                runs[name].append((mean_after_first(wall), mean_after_first(cpu), rss))

    def summary(name: str) -> tuple[float, float, float]:
        rs = runs[name]
        return (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), max(r[2] for r in rs))

    print(
        f"tiny MedGemma, 16 images, {a.steps} steps x batch {a.batch_size} x accumulation {a.grad_accum}, "
        f"checkpoint every {a.save_steps}, gradient checkpointing, CPU ({a.threads or 'default'} thread(s)), "
        f"{a.rounds} interleaved rounds; per-step means without the first step, median over rounds"
    )
    print(f"{'run':<38} {'step wall (s)':>13} {'step CPU (s)':>13} {'peak RSS (MiB)':>15}")
    labels = {
        "ours": "medgemma finetune",
        "notebook": "notebook TRL script (as written)",
        "matched": "notebook TRL script (our LoRA scope)",
    }
    ours = summary("ours")
    for name in runs:
        w, c, m = summary(name)
        print(f"{labels[name]:<38} {w:>13.3f} {c:>13.3f} {m:>15.0f}")
    for name in ("notebook", "matched"):
        w, c, m = summary(name)
        print(f"ratio ours / {name:<9} wall {ours[0] / w:.2f}x   CPU {ours[1] / c:.2f}x   memory {ours[2] / m:.2f}x")


if __name__ == "__main__":
    main()
