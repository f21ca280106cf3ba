"""Gemma's RMSNorm through torch's own `rms_norm` kernel: the same float32 arithmetic in fewer passes.

transformers' `Gemma3RMSNorm` computes `x.float()`, its square, mean, rsqrt, two products and a cast as separate
element-wise ops, each a pass over the activations; with four norms per layer plus the query/key norms that is a
large share of a CPU's time on a small model (about a fifth of the demo's eval, with the casts). `F.rms_norm` on the
same float32 input with the same `1 + weight` scale does it in one kernel, in float32 as before, and the output is
cast back as before: on the tests' inputs and on the demo's logits (8 eval prompts, bf16 and fp32) bit-identical,
at most float32 rounding apart in general (tests/test_norms.py measures the logits of a model with and without).
"""

from __future__ import annotations

import types
from typing import Any

NORM_CLASSES = frozenset({"Gemma3RMSNorm"})  # (1 + weight) scale, computed in float32 then cast back


def fuse_rms_norms(model: Any, on: bool = True) -> int:
    """Route every Gemma 3 RMSNorm of `model` through `F.rms_norm` (inference only: the `1 + weight` scale is
    cached outside autograd, refreshed if the weight changes), or back to transformers' own (`on=False`, for
    side-by-side benchmarks); returns how many were changed."""
    n = 0
    for module in model.modules():
        if type(module).__name__ in NORM_CLASSES and hasattr(module, "eps") and hasattr(module, "weight"):
            if on:
                module.forward = types.MethodType(_fused_forward, module)
            else:
                module.__dict__.pop("forward", None)
            n += 1
    return n


def _fused_forward(self: Any, x: Any) -> Any:
    import torch

    w = self.weight
    key = (w.data_ptr(), w._version, w.dtype)
    cached = self.__dict__.get("_fused_scale")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, 1.0 + w.detach().float())
        self.__dict__["_fused_scale"] = cached
    return torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), cached[1], self.eps).type_as(x)
