"""bf16 weights with float32 arithmetic: MedGemma on a CPU without bf16 matrix instructions, in half the memory.

Why: MedGemma's checkpoints are stored in bf16. On a CPU with AVX2 but no AVX512-BF16/AMX (most laptops, many
hospital VMs) torch's bf16 matmuls are emulated: a 290-row prefill through MedGemma 4B's linear layers runs ~5x
slower in bf16 than in float32, and the 4,096-row image tower likewise. Float32 is fast there but doubles the
weights: MedGemma 4B needs ~17 GB of them and ~26 GiB while converting, more than a 16-24 GB machine has.

How: the weight matrices of every `nn.Linear` and `nn.Embedding` (nearly all of the parameters) stay as stored, in
bf16; every other parameter and buffer (norms, biases, the patch convolution, the projector) becomes float32, and so
do the activations and the KV cache. A linear layer given many rows (a prefill, the image tower, a large batch)
multiplies in float32 by an upcast copy of its weight, made a slice at a time so that the temporary stays small;
upcasting bf16 is exact, so a prefill computes what a float32 model with the same weights computes (up to the fp32
kernel's summation order: oneDNN's, faster than MKL's at tens of rows). A layer given a
few rows (one question's decode step, which reads every weight once per token) multiplies in bf16 instead: upcasting
would move the weights three times for one small matmul. There the inputs and outputs are rounded to bf16, the
tolerance `--dtype bfloat16` already has (greedy answers the same but where two logits nearly tie).

Measured on the 2-core AVX2 EPYC, one MedGemma 4B decoder layer's linear layers (`benchmarks/bf16_weights.py`):
1 row 18.5 ms (fp32 24.8, bf16 18.5); 16 rows 185 ms (fp32 154, bf16 264); 290 rows 928 ms (fp32 917, bf16 4765);
half of fp32's weight memory. Whole-model figures: docs/guides/ask.md, "CPUs without bf16 instructions".
"""

from __future__ import annotations

import types
from typing import Any

from .torch_setup import has_onednn

# Fewer rows than this multiply in bf16 (decode); more through an upcast float32 copy of the weight (prefill). On
# the 2-core AVX2 EPYC, MedGemma 4B's layer shapes with oneDNN upcasting: bf16 faster at 8 rows (136 vs 167 ms a
# layer), upcasting at 12 (175 vs 200 ms) and beyond (`benchmarks/bf16_weights.py` prints both sides).
UPCAST_ROWS = 12
# Elements upcast at a time: the float32 temporary is at most 64 MiB (the 262k-word output layer would be 2.7 GB).
UPCAST_ELEMENTS = 16 << 20
MODE = "bfloat16-weights"  # the --dtype value that asks for this


def keep_bf16_weights(model: Any) -> int:
    """Make a bf16-loaded `model` compute in float32 while its linear and embedding weights stay bf16 (in place);
    returns how many layers kept bf16 weights. Inference and training both run through it (autograd follows the
    upcast), but adapters are merged before, so there is no reason to train this way."""
    import torch

    kept: set[int] = set()
    n = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and module.weight.dtype == torch.bfloat16:
            kept.add(id(module.weight))
            forward = _linear_forward if isinstance(module, torch.nn.Linear) else _embedding_forward
            module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]
            n += 1
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in kept and p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
        for module in model.modules():
            for key, buf in list(module._buffers.items()):
                if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                    module._buffers[key] = buf.float()
            # Gemma's embedding scale, sqrt(width), was made in bf16 at load (50.5 for 4B's 2560, not 50.596):
            # a float32 model has the exact value, which the module keeps as a Python float too.
            scalar = getattr(module, "scalar_embed_scale", None)
            if isinstance(scalar, float) and isinstance(module._buffers.get("embed_scale"), torch.Tensor):
                module._buffers["embed_scale"] = torch.tensor(scalar, dtype=torch.float32)
    return n


def _linear_forward(self: Any, x: Any) -> Any:
    import torch
    import torch.nn.functional as F

    w, bias = self.weight, self.bias
    rows = x.numel() // max(1, x.shape[-1])
    if rows < UPCAST_ROWS:
        b = None if bias is None else bias.to(w.dtype)
        return F.linear(x.to(w.dtype), w, b).to(x.dtype)
    # autograd and graph capture (torch.export of the tower for OpenVINO) need an op they know: F.linear
    plain = torch.is_grad_enabled() or torch.compiler.is_compiling()
    linear = F.linear if plain else _upcast_linear()
    step = max(1, UPCAST_ELEMENTS // max(1, w.shape[1]))
    if w.shape[0] <= step:
        return linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
    parts = [
        linear(x, w[i : i + step].to(x.dtype), None if bias is None else bias[i : i + step].to(x.dtype))
        for i in range(0, w.shape[0], step)
    ]
    return torch.cat(parts, dim=-1)


def _upcast_linear() -> Any:
    """The fp32 matmul for upcast weights: oneDNN's where torch has it on an x86 CPU, else `F.linear` (MKL). On the
    2-core AVX2 EPYC oneDNN ran MedGemma 4B's layer shapes 1.6x faster than MKL at 16 rows, 1.3x at 64, 1.1x at 290
    (`benchmarks/bf16_weights.py --kernel linear` gives MKL's); the two differ only in fp32 summation order."""
    import torch

    if UPCAST_KERNEL != "onednn" or not has_onednn():
        return torch.nn.functional.linear
    return _onednn_linear


# "onednn" (default where available) or "linear" (`F.linear`, for side-by-side benchmarks).
UPCAST_KERNEL = "onednn"


def _onednn_linear(x: Any, w: Any, bias: Any) -> Any:
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def _embedding_forward(self: Any, ids: Any) -> Any:
    """The rows, upcast (exact), times the embedding's scale where it has one (Gemma's `embed_scale`, float32 now:
    scaling in bf16 would round where a float32 model does not)."""
    import torch.nn.functional as F

    out = F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type, False, self.sparse).float()
    scale = getattr(self, "embed_scale", None)
    return out if scale is None else out * scale.float()


def weight_bytes(model: Any) -> tuple[int, int]:
    """(bytes held in bf16, bytes held in float32) over `model`'s distinct parameters: what the load keeps."""
    import torch

    seen: set[int] = set()
    half = full = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.dtype == torch.bfloat16:
            half += p.numel() * 2
        elif p.dtype == torch.float32:
            full += p.numel() * 4
    return half, full
