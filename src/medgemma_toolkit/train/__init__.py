"""Fine-tuning: LoRA/QLoRA adapters on the user's own images and text (TRL SFT), GRPO on multiple-choice
questions, crash-safe checkpoints, provenance, and merging adapters into plain checkpoints.

Modules: `data` (sources -> examples), `recipe` (presets as data), `collator` (answer-only labels), `model` (LoRA on
the language model), `checkpoints` (atomic saves), `logs` (loss log, curve, progress), `provenance`, `fit` (device
checks), `evaluate` (before/after), `sft` (`finetune`), `rl` (`rl`), `merge` (`export --merge`).
"""

from __future__ import annotations

from ..errors import BackendUnavailable


def require_train_dependencies(*names: str) -> None:
    """One clear line instead of an ImportError when the `train` extra is missing."""
    import importlib.util

    missing = [n for n in (names or ("peft", "trl", "datasets")) if importlib.util.find_spec(n) is None]
    if missing:
        raise BackendUnavailable(f"fine-tuning needs {', '.join(missing)}: pip install 'medgemma-toolkit[train]'")
