"""`finetune` and `rl`: train LoRA adapters on the user's own data (see `medgemma_toolkit.train`)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from ..errors import BadInput
from . import app
from . import export as _export  # noqa: F401  (registers `export`, whose --merge path lives in train/)

DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (CPU works for small models, slowly)")]
# Options `finetune` and `rl` share, declared once.
BaseModelOpt = Annotated[
    Optional[str], typer.Option("--model", "-m", help="Base checkpoint: variant name, hub id or directory")
]
RunDirOpt = Annotated[str, typer.Option("--out", "-o", help="Run folder: checkpoints, adapter, logs, provenance")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --out from its last complete checkpoint")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")]
ReportToOpt = Annotated[
    str,
    typer.Option(
        "--report-to",
        help="Also log to: none, auto (every installed one), tensorboard, wandb (offline unless WANDB_MODE is set); comma-separated",
    ),
]


def _recipe_overrides(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@app.command()
def finetune(
    model: BaseModelOpt = None,
    data: Annotated[
        Optional[str], typer.Option(help="Class folder, .csv/.jsonl rows, chat .jsonl, or a saved HF dataset")
    ] = None,
    out: RunDirOpt = "finetune-run",
    task: Annotated[str, typer.Option(help="classification, vqa, report or chat")] = "classification",
    method: Annotated[str, typer.Option(help="lora, or qlora (4-bit NF4, CUDA only)")] = "lora",
    recipe: Annotated[
        str,
        typer.Option(
            help="notebook (Google's notebook exactly, default), answer-only (LoRA on the language model, loss on the answer) or cpu-small"
        ),
    ] = "notebook",
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data (recipe: 1)")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps; overrides --epochs")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (recipe: 2e-4)")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank (recipe: 16)")] = None,
    lora_alpha: Annotated[Optional[int], typer.Option(help="LoRA alpha (recipe: 16)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per device step (recipe: 4)")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Gradient accumulation steps (recipe: 4)")] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Checkpoint every N optimizer steps (recipe: 50)")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Truncate answers so examples fit N tokens")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order, LoRA init and dropout")] = None,
    gradient_checkpointing: Annotated[
        Optional[bool],
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory (recipe decides)"
        ),
    ] = None,
    val_data: Annotated[
        Optional[str], typer.Option(help="Separate validation file/folder (else --val-fraction)")
    ] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of the data held out for validation (per class)")] = 0.1,
    eval_task: Annotated[
        Optional[str],
        typer.Option(
            help="Score before and after training: 'val' (the validation split) or an eval task (medgemma eval list)"
        ),
    ] = None,
    eval_data: Annotated[
        Optional[str], typer.Option(help="Data for an eval task (default: the task's shipped sample)")
    ] = None,
    eval_max_new_tokens: Annotated[
        Optional[int], typer.Option(help="Cap on generated tokens for an eval task (default: its protocol's)")
    ] = None,
    preset: Annotated[
        Optional[str], typer.Option(help="Prompt preset to train with (default: the model's own)")
    ] = None,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    quiet: QuietOpt = False,
    report_to: ReportToOpt = "none",
) -> None:
    """Fine-tune a LoRA adapter on your images and text; crash-safe (kill it, then --resume).

    Example: medgemma finetune --model medgemma-4b-it --data ./slides_by_class --out runs/path1 --eval-task val
    """
    from ..train.sft import FinetuneSettings, run_finetune

    if not resume and (model is None or data is None):
        raise BadInput("--model and --data are required (unless --resume continues an existing --out)")
    overrides = _recipe_overrides(
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=lr,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        batch_size=batch_size,
        grad_accum=grad_accum,
        save_steps=save_steps,
        max_length=max_length,
        seed=seed,
        gradient_checkpointing=gradient_checkpointing,
    )
    settings = FinetuneSettings(
        model=model or "",
        data=data or "",
        out=out,
        task=task,
        method=method,
        recipe=recipe,
        overrides=overrides,
        val_data=val_data,
        val_fraction=val_fraction,
        eval_task=eval_task,
        eval_data=eval_data,
        eval_max_new_tokens=eval_max_new_tokens,
        preset=preset,
        device=device,
        resume=resume,
        quiet=quiet,
        report_to=report_to,
    )
    r = run_finetune(settings)
    resumed = f" (resumed from step {r.resumed_from})" if r.resumed_from else ""
    loss = (
        f"; loss {r.first_loss:.4f} -> {r.last_loss:.4f}"
        if r.first_loss is not None and r.last_loss is not None
        else ""
    )
    print(f"trained {r.steps} steps{resumed}{loss}")
    print(f"adapter: {r.adapter_dir}")
    print(f"run: {r.run_dir} (provenance.json, loss_log.jsonl, loss_curve.png)")
    if r.report and "after" in r.report:
        b, a = r.report["before"], r.report["after"]
        what = "validation examples" if r.report.get("eval_task") == "val" else f"{r.report['eval_task']} questions"
        print(
            f"{a['metric']} on {a['n']} {what}: before {b['value']:.3f} {b['ci95']} -> "
            f"after {a['value']:.3f} {a['ci95']}"
        )


@app.command()
def rl(
    model: BaseModelOpt = None,
    data: Annotated[
        Optional[str], typer.Option(help='MCQ JSONL: {"question", "options", "answer": "B"} per line')
    ] = None,
    out: RunDirOpt = "rl-run",
    recipe: Annotated[
        str, typer.Option(help="notebook (Google's RL notebook, default) or toolkit (our earlier recipe)")
    ] = "notebook",
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (notebook: 1700)")] = None,
    num_generations: Annotated[
        Optional[int], typer.Option(help="Completions sampled per question, the GRPO group (notebook: 4)")
    ] = None,
    max_completion_length: Annotated[
        Optional[int], typer.Option(help="New tokens per completion (notebook: 1024)")
    ] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (notebook: 5e-6)")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank (notebook: 64)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Prompts per device step (notebook: 3)")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Gradient accumulation steps (notebook: 4)")] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps (notebook: 100)")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature for the completions (1.0)")] = None,
    seed: Annotated[int, typer.Option()] = 42,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Reinforcement learning (GRPO) on multiple-choice questions, rewarding a correct "Final Answer" (Google's RL notebook by default).

    Example: medgemma rl --model medgemma-4b-it --data medqa_train.jsonl --out runs/rl1 --max-steps 200
    """
    from ..train.rl import RLSettings, run_rl

    if not resume and (model is None or data is None):
        raise BadInput("--model and --data are required (unless --resume continues an existing --out)")
    r = run_rl(
        RLSettings(
            model=model or "",
            data=data or "",
            out=out,
            recipe=recipe,
            max_steps=max_steps,
            num_generations=num_generations,
            max_completion_length=max_completion_length,
            learning_rate=lr,
            lora_r=lora_r,
            save_steps=save_steps,
            temperature=temperature,
            batch_size=batch_size,
            grad_accum=grad_accum,
            device=device,
            resume=resume,
            quiet=quiet,
            seed=seed,
        )
    )
    resumed = f" (resumed from step {r['resumed_from']})" if r["resumed_from"] else ""
    print(f"trained {r['steps']} GRPO steps{resumed}; reward {r['first_reward']} -> {r['last_reward']}")
    print(f"adapter: {r['adapter']}")
