"""`medgemma export --adapter DIR --merge -o OUT`: fold a LoRA adapter into its base model's weights.

The result is a plain checkpoint folder (config, safetensors, processor/tokenizer, chat template) that
`medgemma ask --model OUT` and `AutoModelForImageTextToText.from_pretrained(OUT)` load with no PEFT at all.
It is written to a temporary sibling folder and renamed into place, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..errors import BadInput
from ..models.resolve import resolve_model
from ..provenance import package_versions
from .checkpoints import fsync_dir, fsync_tree, write_atomic

CARRIED = ("README.md",)  # the base's model card: lets `medgemma` recognise the variant (and its prompt preset)


def adapter_base(adapter_dir: Path) -> str:
    cfg = adapter_dir / "adapter_config.json"
    if not cfg.is_file():
        raise BadInput(f"{adapter_dir}: not a PEFT adapter folder (no adapter_config.json)")
    try:
        base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    except ValueError:
        raise BadInput(f"{cfg}: not valid JSON") from None
    if not base:
        raise BadInput(f"{cfg}: names no base model; pass --base")
    return str(base)


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None) -> Path:
    """Merge `adapter` into its base (from adapter_config.json unless `base` is given) and save to `out`."""
    from . import require_train_dependencies

    require_train_dependencies("peft")
    import torch
    from peft import PeftModel

    from ..models.checkpoint import is_multimodal, load_hf_model, load_processing

    adapter_dir = Path(adapter).expanduser()
    dest = Path(out).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInput(f"{dest}: already exists and is not empty; choose another -o")
    resolved = resolve_model(base or adapter_base(adapter_dir))
    if resolved.format != "hf":
        raise BadInput(f"{resolved.path}: the base must be a Hugging Face checkpoint directory to merge into")
    base_dir = resolved.path
    multimodal = is_multimodal(base_dir)
    # dtype="auto": the base's stored precision (bf16 for MedGemma), so the merged copy is the same size.
    model = load_hf_model(str(base_dir), multimodal, dtype="auto")
    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (ValueError, KeyError, RuntimeError) as e:
        raise BadInput(f"{adapter_dir}: adapter does not fit base {base_dir} ({type(e).__name__})") from None
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.no_grad():
        merged.save_pretrained(str(tmp))
    has_proc = (adapter_dir / "processor_config.json").is_file() or (adapter_dir / "tokenizer_config.json").is_file()
    src = adapter_dir if has_proc else base_dir
    proc = load_processing(str(src), multimodal)
    (proc.processor if multimodal else proc.tokenizer).save_pretrained(str(tmp))
    for name in CARRIED:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, tmp / name)
    write_atomic(
        tmp / "merge_info.json",
        json.dumps(
            {
                "base": str(base_dir),
                "adapter": str(adapter_dir.resolve()),
                "merged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "packages": package_versions(),
            },
            indent=2,
        ),
    )
    fsync_tree(tmp)
    if dest.exists():
        dest.rmdir()
    tmp.replace(dest)
    fsync_dir(dest.parent)
    return dest
