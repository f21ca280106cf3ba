"""Tiny random checkpoints of the MedSigLIP architecture (`SiglipModel`: image and text towers), for tests and
benchmarks.

Same files as `google/medsiglip-448` (config.json, safetensors, a SentencePiece `spiece.model` for
`SiglipTokenizer`, preprocessor_config.json with SigLIP's [-1, 1] normalisation), only small and random. The
SentencePiece model is trained here on our own sentences.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .tiny_checkpoint import CORPUS

EXTRA = [
    "pleural effusion",
    "normal chest x-ray",
    "a photo of an arm with a rash",
    "a photo of a leg with no rash",
    "cardiomegaly pneumothorax consolidation edema atelectasis",
]


def _train_spiece(out: Path, vocab_size: int) -> Path:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((CORPUS + EXTRA) * 4),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    path = out / "spiece.model"
    path.write_bytes(buf.getvalue())
    return path


def build_tiny_siglip(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    layers: int = 2,
    text_tokens: int = 64,
    vocab_size: int = 160,
    seed: int = 0,
) -> Path:
    """Write a tiny random `SiglipModel` checkpoint folder (processor included) and return its path.

    The embedding size is `hidden_size` (SigLIP's pooled output; MedSigLIP-448: 1152)."""
    import torch
    from transformers import (
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
        SiglipProcessor,
        SiglipTextConfig,
        SiglipTokenizer,
        SiglipVisionConfig,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    spiece = _train_spiece(out, vocab_size)
    tok = SiglipTokenizer(vocab_file=str(spiece), model_max_length=text_tokens)
    common: dict[str, Any] = {
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
    }
    cfg = SiglipConfig(
        text_config=SiglipTextConfig(
            vocab_size=len(tok),
            max_position_embeddings=text_tokens,
            pad_token_id=1,
            bos_token_id=None,
            eos_token_id=1,
            **common,
        ).to_dict(),
        vision_config=SiglipVisionConfig(image_size=image_size, patch_size=patch_size, **common).to_dict(),
    )
    model = SiglipModel(cfg)
    with torch.no_grad():  # like a trained SigLIP: a large temperature and a negative bias (random here otherwise)
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.0)
    improc = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    SiglipProcessor(image_processor=improc, tokenizer=tok).save_pretrained(out)
    model.save_pretrained(out)
    return out
