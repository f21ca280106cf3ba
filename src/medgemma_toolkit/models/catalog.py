"""`medgemma models`: the variant table joined with what is on this machine."""

from __future__ import annotations

from typing import Any

from .footprint import DEFAULT_JOB_CELLS, SHOWN, llamacpp_breakdown, variant_needs
from .local import registered
from .resolve import locate_variant
from .variants import BY_NAME, VARIANTS

# Column titles of the peak-memory columns, in `SHOWN`'s order.
PEAK_TITLES = {
    "transformers bfloat16": "bf16",
    "transformers float32": "fp32",
    "llamacpp q8_0": "GGUF Q8_0",
    "llamacpp q4_k_m": "GGUF Q4_K_M",
}


def list_models() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for v in VARIANTS:
        hit = locate_variant(v)
        rows.append(
            {
                "name": v.name,
                "hub_id": v.hub_id,
                "modality": v.modality,
                "instruction_tuned": v.instruction_tuned,
                "thinking": v.thinking,
                "image_size": v.image_size,
                "tokens_per_image": v.tokens_per_image,
                "memory_gib": {p: v.memory_gib(p) for p in ("bf16", "8bit", "4bit")},  # type: ignore[arg-type]
                # Estimated peak to run, weights + loading + working memory (models.footprint), per backend/precision
                "peak_gib": variant_needs(v.params_b, v.multimodal, gguf=v.modality not in ("embedding", "speech")),
                # The GGUF Q4_K_M figure's parts, for one question in one sequence (the default llama.cpp job)
                "llamacpp_q4_k_m_gib": llamacpp_breakdown(v.params_b, v.multimodal)
                if v.modality not in ("embedding", "speech")
                else None,
                "default_preset": v.default_preset,
                "present": hit is not None,
                "path": str(hit[0]) if hit else None,
                "source": hit[1] if hit else None,
            }
        )
    for name, path in sorted(registered().items()):
        if name not in BY_NAME:
            rows.append({"name": name, "hub_id": None, "present": True, "path": path, "source": "registered"})
    return rows


def print_models(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="MedGemma variants: estimated peak memory to run them (GiB; GGUF with its 16-bit mmproj)")
    keys = [f"{b} {q}" for b, q in SHOWN]
    for col in ("name", "modality", "tuned", "thinking", *(PEAK_TITLES[k] for k in keys), "local"):
        t.add_column(col)
    for r in rows:
        peak = r.get("peak_gib") or {}
        t.add_row(
            r["name"],
            r.get("modality") or "?",
            "-" if r.get("instruction_tuned") is None else ("it" if r["instruction_tuned"] else "pt"),
            "yes" if r.get("thinking") else "no",
            *(str(peak.get(k, "-")) for k in keys),
            f"{r['path']} ({r['source']})" if r["present"] else "not found",
        )
    Console(width=200).print(t)
    print(
        "bf16/fp32: transformers on CPU (GPU: bf16 weights, `--quantize 4bit` ~0.55 byte/param); GGUF: llama.cpp "
        "(`medgemma export gguf`). Loading refuses, in one line, what will not fit (`--no-memory-check` overrides)."
    )
    parts = next((r["llamacpp_q4_k_m_gib"] for r in rows if r.get("llamacpp_q4_k_m_gib")), None)
    if parts:
        print(
            f"GGUF figures are for one question in one sequence ({DEFAULT_JOB_CELLS}-cell KV pool, sliding-window "
            f"layers at their window): e.g. {rows[0]['name']} Q4_K_M = weights {parts['weights']} + KV {parts['kv']} + "
            f"runtime {parts['runtime']} GiB. `serve --parallel N` adds KV for N sequences of 2048 cells."
        )
    print(
        "MedGemma images: 896x896 -> 256 tokens; MedSigLIP (embedding): 448x448, use `medgemma embed`. "
        "Get weights: see `medgemma ask --model NAME` for instructions."
    )
