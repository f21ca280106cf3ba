"""GPU check: our transformers backend on a full-size MedGemma-4B-architecture model, bf16, random weights.

Run only on a machine with a CUDA GPU (never in CI): builds the checkpoint from MedGemma 4B's real config values
(no download; decode speed does not depend on weight values), saves it, loads it through our `TransformersBackend`,
and prints one table:
  * copy bandwidth of the GPU's memory (a large device-to-device copy),
  * batch-1 decode tok/s against the bandwidth bound (language-model bytes read per token / bandwidth),
  * throughput at batch 8/32/64 with one 896x896 image per request.
Designed to finish in ~5 minutes on an H200. Works with torch >= 2.6 and transformers >= 5.17, without vLLM.

Run: PYTHONPATH=src python benchmarks/gpu/medgemma4b_check.py [--out /tmp/medgemma4b-random] [--batches 8,32,64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

# MedGemma 4B (google/medgemma-4b-it config.json): Gemma 3 4B decoder + SigLIP-so400m at 896 px.
TEXT = dict(
    vocab_size=262_208,
    hidden_size=2560,
    intermediate_size=10_240,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    query_pre_attn_scalar=256,
    sliding_window=1024,
    max_position_embeddings=131_072,
    rope_scaling={"rope_type": "linear", "factor": 8.0},
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
    rms_norm_eps=1e-6,
)
VISION = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=896,
    patch_size=14,
    vision_use_head=False,
)
TOKENS_PER_IMAGE = 256


SMOKE_TEXT = dict(
    TEXT,
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    query_pre_attn_scalar=32,
)
SMOKE_VISION = dict(
    VISION,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=112,
    patch_size=14,
)


def build_checkpoint(out: Path, device: str = "cuda", smoke: bool = False) -> Path:
    """Random-weight MedGemma-4B-shaped checkpoint (bf16 safetensors + a small local tokenizer)."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        GenerationConfig,
        SiglipVisionConfig,
    )

    from medgemma_toolkit.testing.tiny_checkpoint import CONTROL, build_tokenizer

    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()  # ids of <start_of_image> etc. come from this small vocabulary, not 262k
    ids = {t: tok.convert_tokens_to_ids(t) for t in CONTROL}
    text_kwargs = dict(SMOKE_TEXT if smoke else TEXT)
    text_kwargs.update(pad_token_id=0, bos_token_id=2, eos_token_id=[1, ids["<end_of_turn>"]])
    try:
        text_cfg = Gemma3TextConfig(**text_kwargs)
    except TypeError:  # a transformers without the legacy rope keys
        for k in ("rope_scaling", "rope_theta", "rope_local_base_freq"):
            text_kwargs.pop(k)
        text_cfg = Gemma3TextConfig(**text_kwargs)
    cfg = Gemma3Config(
        text_config=text_cfg,
        vision_config=SiglipVisionConfig(**(SMOKE_VISION if smoke else VISION)),
        mm_tokens_per_image=16 if smoke else TOKENS_PER_IMAGE,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):  # random init on the GPU: seconds instead of minutes on CPU
        model = Gemma3ForConditionalGeneration(cfg)
    torch.set_default_dtype(prev)
    model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=[1, ids["<end_of_turn>"]], pad_token_id=0)
    model.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    try:
        from transformers import Gemma3ImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import Gemma3ImageProcessor as ImageProcessor
    side = (SMOKE_VISION if smoke else VISION)["image_size"]
    improc = ImageProcessor(size={"height": side, "width": side})
    Gemma3Processor(
        image_processor=improc, tokenizer=tok, image_seq_length=16 if smoke else TOKENS_PER_IMAGE
    ).save_pretrained(out)
    return out


def copy_bandwidth_gbs() -> float:
    import torch

    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 20
    for _ in range(n):
        y.copy_(x)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    del x, y
    torch.cuda.empty_cache()
    return 2 * 2 * 1024**3 * n / secs / 1e9  # read + write


def decode_bytes_per_token(model) -> int:
    """Bytes of language-model weights read for one decoded token (embeddings read once, as the tied LM head)."""
    total = 0
    for name, p in model.named_parameters():
        if "vision" in name or "multi_modal_projector" in name:
            continue
        total += p.numel() * p.element_size()
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/medgemma4b-random"))
    ap.add_argument("--batches", default="8,32,64")
    ap.add_argument("--decode-tokens", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=64)
    ap.add_argument("--smoke", action="store_true", help="Tiny sizes on CPU: checks this script runs, measures nothing")
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    from PIL import Image

    from medgemma_toolkit.backends.base import GenerationRequest, SamplingParams
    from medgemma_toolkit.backends.transformers_backend import TransformersBackend
    from medgemma_toolkit.core.messages import ImagePart, Message, Prompt, TextPart
    from medgemma_toolkit.core.options import LoadOptions

    smoke = args.smoke
    device = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: this check only runs on a GPU machine (or pass --smoke)")
    t_start = time.perf_counter()
    gpu = "cpu smoke run" if smoke else torch.cuda.get_device_name(0)
    print(f"device: {gpu}; torch {torch.__version__}; transformers {transformers.__version__}")
    bw = 1.0 if smoke else copy_bandwidth_gbs()
    t0 = time.perf_counter()
    path = build_checkpoint(args.out, device, smoke)
    build_s = time.perf_counter() - t0
    batches = [int(b) for b in args.batches.split(",") if b]
    t0 = time.perf_counter()
    be = TransformersBackend(
        path,
        {"name": "medgemma-4b-random", "pretrained": False},
        LoadOptions(device=device, dtype="float32" if smoke else "bfloat16", max_batch_size=max(batches)),
    )
    load_s = time.perf_counter() - t0
    per_token = decode_bytes_per_token(be.model)

    def text_req(n: int) -> GenerationRequest:
        msg = Message("user", [TextPart("Describe the typical findings of lobar pneumonia on a chest X-ray.")])
        return GenerationRequest(Prompt([msg]), SamplingParams(max_new_tokens=n))

    def sync() -> None:
        if not smoke:
            torch.cuda.synchronize()

    def timed(reqs: list[GenerationRequest]) -> tuple[float, int]:
        sync()
        t = time.perf_counter()
        outs = be.generate(reqs)
        sync()
        return time.perf_counter() - t, sum(c.completion_tokens for c in outs)

    timed([text_req(8)])  # warm-up (kernels, allocator)
    t1, _ = timed([text_req(1)])  # prefill + one token
    tn, n = timed([text_req(args.decode_tokens)])
    decode_tps = (n - 1) / max(1e-9, tn - t1)
    bound_tps = bw * 1e9 / per_token

    rng = np.random.default_rng(0)
    side = be.info.image_size or 896
    image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    rows = []
    for b in batches:
        reqs = [
            GenerationRequest(
                Prompt([Message("user", [ImagePart(image), TextPart(f"Describe this X-ray ({i}).")])]),
                SamplingParams(max_new_tokens=args.batch_tokens),
            )
            for i in range(b)
        ]
        secs, toks = timed(reqs)
        rows.append((b, secs, toks))

    print()
    print(f"checkpoint build {build_s:.0f} s, load {load_s:.0f} s; LM weights read per token {per_token / 1e9:.2f} GB")
    print(f"{'measure':38} {'value':>12}")
    print(f"{'copy bandwidth (GB/s)':38} {bw:12.0f}")
    print(f"{'batch-1 decode (tok/s)':38} {decode_tps:12.1f}")
    print(f"{'bandwidth bound (tok/s)':38} {bound_tps:12.1f}")
    print(f"{'decode / bound':38} {decode_tps / bound_tps:12.0%}")
    for b, secs, toks in rows:
        label = f"batch {b} + 1 image each: tok/s (req/s)"
        print(f"{label:38} {toks / secs:12.1f} ({b / secs:.2f})")
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
