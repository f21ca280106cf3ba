"""Tiny random checkpoints of the MedASR architecture (`LasrForCTC`, model type `lasr_ctc`), for tests.

Same files as `google/medasr` (config.json, safetensors, tokenizer, preprocessor_config.json with the 128-bin log-mel
feature extractor at 16 kHz), only small and random. The tokenizer is a character-level `LasrTokenizer` built here:
`<pad>` (id 0) is the CTC blank, as in MedASR, then `</s>`, `<unk>`, the word separator "▁" and the letters.
A random model cannot recognise speech; tests check the mechanics (decoding, chunking, timestamps, batching).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any


def asr_vocab() -> list[tuple[str, float]]:
    """The (piece, score) list of the tiny tokenizer: specials first, as `LasrTokenizer` expects."""
    pieces = ["<pad>", "</s>", "<unk>", "▁"] + list(string.ascii_lowercase) + ["'", "."]
    return [(p, 0.0 if i < 4 else -1.0) for i, p in enumerate(pieces)]


def build_tiny_asr(
    out_dir: str | Path,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny random `LasrForCTC` checkpoint folder (processor included) and return its path."""
    import torch
    from transformers import (
        LasrCTCConfig,
        LasrFeatureExtractor,
        LasrForCTC,
        LasrProcessor,
        LasrTokenizer,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = LasrTokenizer(vocab=asr_vocab(), extra_ids=0)
    encoder: dict[str, Any] = {
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": hidden_size * 2,
        "conv_kernel_size": 9,
        "subsampling_conv_channels": 16,
        "num_mel_bins": 128,
    }
    cfg = LasrCTCConfig(vocab_size=len(tok), encoder_config=encoder, pad_token_id=tok.pad_token_id)
    model = LasrForCTC(cfg).eval()
    fe = LasrFeatureExtractor()
    # transformers initialises with std 0.02, which a 2-layer random encoder turns into one constant token; torch's
    # own fan-in initialisation keeps the frames distinct, so the tiny model emits varied words to time and group.
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv1d):
            module.reset_parameters()
    _spread_outputs(model, fe, tok.pad_token_id, tok.get_vocab()["▁"])
    LasrProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(out)
    model.save_pretrained(out)
    return out


def _spread_outputs(model: Any, fe: Any, blank: int, space: int) -> None:
    """Centre the CTC head's logits on noise and favour the blank and the word separator a little, so the random
    model emits words separated by pauses (a random head otherwise emits one token everywhere)."""
    import numpy as np
    import torch

    noise = np.random.default_rng(0).standard_normal(32_000).astype(np.float32) * 0.1
    feats = fe(noise, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        model.ctc_head.weight.mul_(4.0)
        logits = model(**feats).logits[0]
        model.ctc_head.bias.sub_(logits.mean(0))
        model.ctc_head.bias[blank] += 0.5
        model.ctc_head.bias[space] += 1.0
