"""Tiny random checkpoints of the exact MedGemma architecture, for tests and benchmarks.

`Gemma3ForConditionalGeneration` (Gemma 3 decoder + SigLIP tower + projector) or `Gemma3ForCausalLM`, at hidden
size 64 with 2 layers, with a BPE tokenizer trained here on our own sentences and carrying Gemma's special tokens.
They load through exactly the same code as real MedGemma weights; only the numbers are small and random.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from transformers import GemmaTokenizer, PreTrainedModel

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
CONTROL = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
THINK = ["<unused94>", "<unused95>"]

CORPUS = [
    "The chest radiograph shows no acute cardiopulmonary abnormality.",
    "There is a small left pleural effusion with adjacent atelectasis.",
    "The heart size is normal. The lungs are clear.",
    "Findings are consistent with mild pulmonary edema.",
    "What is the most likely diagnosis? Final Answer: B",
    "A normal adult resting heart rate is between 60 and 100 beats per minute.",
    "You are an expert radiologist. Describe this X-ray.",
    "You are a helpful medical assistant. Answer the question.",
    "thought\nThe patient has fever and cough, so pneumonia is likely.",
    "Question: Is there cardiomegaly?\nAnswer: yes no",
    "SYSTEM INSTRUCTION: think silently if needed.",
    "SLICE 1 SLICE 2 CT MRI pathology dermatology ophthalmology histology",
    "user model system assistant image images slice window",
]


def build_tokenizer(vocab_size: int = 400) -> GemmaTokenizer:
    """A Gemma-style BPE tokenizer (byte fallback, "▁" for spaces) with Gemma's special tokens."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import GemmaTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    trained: dict[str, int] = model["vocab"]
    vocab: dict[str, int] = {}
    for t in SPECIALS + CONTROL + THINK + [f"<0x{b:02X}>" for b in range(256)]:
        vocab[t] = len(vocab)
    for t, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    gemma = GemmaTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # transformers annotates list[str]; pairs are accepted too
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    gemma.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    gemma.add_tokens(THINK)  # ordinary added tokens, like the real vocabulary's unused slots
    return gemma


def gemma3_chat_template() -> str | None:
    """The official Gemma 3 chat template as shipped verbatim by TRL (test dependency); None if TRL is absent."""
    try:
        from importlib.resources import files

        return files("trl").joinpath("chat_templates/gemma3.jinja").read_text()
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        return None


def build_tiny_medgemma(
    out_dir: str | Path,
    *,
    text_only: bool = False,
    image_size: int = 64,
    patch_size: int = 8,
    tokens_per_image: int = 16,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    chat_template: bool = True,
    readme: str | None = None,
) -> Path:
    """Write a tiny random MedGemma-architecture checkpoint folder and return its path."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForCausalLM,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        GenerationConfig,
        SiglipVisionConfig,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = build_tokenizer()
    template = gemma3_chat_template() if chat_template else None
    # One token in, one id out (transformers types the result int | list[int] for either kind of input).
    ids = {t: cast(int, tok.convert_tokens_to_ids(t)) for t in CONTROL}
    text_cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        sliding_window=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=[1, ids["<end_of_turn>"]],
    )
    if text_only:
        model: PreTrainedModel = Gemma3ForCausalLM(text_cfg)
        if template:
            tok.chat_template = template
        tok.save_pretrained(out)
    else:
        vision_cfg = SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            vision_use_head=False,
        )
        cfg = Gemma3Config(
            text_config=text_cfg,
            vision_config=vision_cfg,
            mm_tokens_per_image=tokens_per_image,
            boi_token_index=ids["<start_of_image>"],
            eoi_token_index=ids["<end_of_image>"],
            image_token_index=ids["<image_soft_token>"],
        )
        model = Gemma3ForConditionalGeneration(cfg)
        improc = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
        proc = Gemma3Processor(
            image_processor=improc, tokenizer=tok, chat_template=template, image_seq_length=tokens_per_image
        )
        proc.save_pretrained(out)
    model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=[1, ids["<end_of_turn>"]], pad_token_id=0)
    model.save_pretrained(out)
    if readme:
        (out / "README.md").write_text(readme)
    return out
