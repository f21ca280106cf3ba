"""bf16 linear layers on CPUs through oneDNN weights packed once (`mkldnn._reorder_linear_weight`), not per call.

`F.linear` on a bf16 CPU tensor hands oneDNN the plain (out, in) weight, which it re-lays out for its kernel on
every call. For the large matmuls of a prefill that is noise; for decode steps of a batch (8-64 rows) it is not: on
the eval machine (2 Zen 4 cores, AVX512-BF16) the demo's 262k-word output layer at 32 rows takes 42.7 ms plain and
30.4 ms packed (8 rows: 25.0 vs 14.2 ms), a 2048x640 layer 0.25 vs 0.21 ms (`python benchmarks/eval_runner.py`
measures the whole run). torch's own compiler packs bf16 CPU linears the same way (inductor's freezing pass).

The result is the same oneDNN kernel's: bit-identical outputs on every shape we compared (1 to 1024 rows, 2-D and
3-D inputs; tests/test_packed_linear.py compares a model's logits). The cost is memory: the packed copy sits beside
the original weights (which stay, for the embedding the output layer is tied to, adapters and state dicts), so a
model's linear weights are held twice. The backend packs only for throughput work (eval, batch) on a bf16 CPU model
and only when the copy takes at most a quarter of the free memory.
"""

from __future__ import annotations

import types
from typing import Any

PACK_ROWS_HINT = 32  # the batch oneDNN lays the weights out for (any row count works, this one best)


def can_pack() -> bool:
    """Whether this torch build has oneDNN with bf16 support on this CPU."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def packable(model: Any) -> list[Any]:
    """The bf16 `nn.Linear` modules of `model` on the CPU, vision tower excluded (OpenVINO may run it)."""
    import torch

    return [
        m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and "vision" not in name
        and m.weight.dtype == torch.bfloat16
        and m.weight.device.type == "cpu"
    ]


def packed_bytes(model: Any) -> int:
    """Memory `pack_linears` would add: one more copy of each packable layer's weight."""
    return sum(m.weight.numel() * m.weight.element_size() for m in packable(model))


def pack_linears(model: Any, on: bool = True, rows: int = PACK_ROWS_HINT) -> int:
    """Route every packable linear layer of `model` through a oneDNN-packed copy of its weight (inference only;
    repacked if the weight changes), or back to `F.linear` (`on=False`, for side-by-side benchmarks); returns how
    many layers were changed."""
    import torch

    n = 0
    for module in packable(model):
        if on:
            module.__dict__["_pack_rows"] = rows
            with torch.no_grad():  # packed now, so the memory is taken at load and not in the first batch
                w = module.weight
                module.__dict__["_packed"] = ((w.data_ptr(), w._version), _pack(w.detach(), rows))
            module.forward = types.MethodType(_packed_forward, module)
        else:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_packed", None)
        n += 1
    return n


def _packed_forward(self: Any, x: Any) -> Any:
    import torch

    w = self.weight
    if x.dtype != w.dtype or torch.is_grad_enabled():  # autograd or another dtype: the plain path
        return torch.nn.functional.linear(x, w, self.bias)
    key = (w.data_ptr(), w._version)
    cached = self.__dict__.get("_packed")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, _pack(w.detach(), self.__dict__.get("_pack_rows", PACK_ROWS_HINT)))
        self.__dict__["_packed"] = cached
    return torch.ops.mkldnn._linear_pointwise(x, cached[1], self.bias, "none", [], "")


def _pack(weight: Any, rows: int) -> Any:
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)
