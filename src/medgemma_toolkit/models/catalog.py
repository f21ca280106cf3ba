"""`medgemma models`: the variant table joined with what is on this machine."""

from __future__ import annotations

from typing import Any

from .local import registered
from .resolve import locate_variant
from .variants import BY_NAME, VARIANTS


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

    t = Table(title="MedGemma variants (weights-only memory, GiB)")
    for col in ("name", "modality", "tuned", "thinking", "bf16", "8-bit", "4-bit", "local"):
        t.add_column(col)
    for r in rows:
        mem = r.get("memory_gib") or {}
        t.add_row(
            r["name"],
            r.get("modality") or "?",
            "-" if r.get("instruction_tuned") is None else ("it" if r["instruction_tuned"] else "pt"),
            "yes" if r.get("thinking") else "no",
            str(mem.get("bf16", "")),
            str(mem.get("8bit", "")),
            str(mem.get("4bit", "")),
            f"{r['path']} ({r['source']})" if r["present"] else "not found",
        )
    Console(width=200).print(t)
    print(
        "MedGemma images: 896x896 -> 256 tokens; MedSigLIP (embedding): 448x448, use `medgemma embed`. "
        "Get weights: see `medgemma ask --model NAME` for instructions."
    )
