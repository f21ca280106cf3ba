"""Make a tiny random checkpoint able to learn, for fine-tuning tests and benchmarks.

Freshly initialised Gemma 3 weights cannot show learning through a language-model LoRA: the multimodal projector
starts at zero (images carry no signal) and embeddings of std 0.02 cap every logit near 1 (the tied output layer is
frozen), so the loss cannot fall far below log(vocab). Real MedGemma has neither problem; this gives the tiny model
the same two properties: a random projector and embeddings of realistic scale.
"""

from __future__ import annotations

from pathlib import Path


def make_trainable(model_dir: str | Path, embed_std: float = 0.5, projector_std: float = 0.5, seed: int = 0) -> Path:
    """Rescale embeddings to `embed_std` and give the image projector random weights, in place."""
    import torch
    from safetensors.torch import load_file, save_file

    path = Path(model_dir) / "model.safetensors"
    weights = load_file(str(path))
    gen = torch.Generator().manual_seed(seed)
    for name, w in weights.items():
        if name.endswith("embed_tokens.weight"):
            weights[name] = w * (embed_std / float(w.float().std()))
        elif name.endswith("mm_input_projection_weight"):
            weights[name] = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.dtype) * projector_std
    save_file(weights, str(path), metadata={"format": "pt"})
    return Path(model_dir)
