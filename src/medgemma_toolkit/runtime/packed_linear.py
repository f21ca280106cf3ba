"""bf16 linear layers on CPUs through oneDNN weights packed once (`mkldnn._reorder_linear_weight`), not per call.

`F.linear` on a bf16 CPU tensor hands oneDNN the plain (out, in) weight, which it re-lays out for its kernel on
every call. For the large matmuls of a prefill that is noise; for decode steps of a batch (8-64 rows) it is not: on
the eval machine (2 Zen 4 cores, AVX512-BF16) the demo's 262k-word output layer at 32 rows takes 42.7 ms plain and
30.4 ms packed (8 rows: 25.0 vs 14.2 ms), a 2048x640 layer 0.25 vs 0.21 ms (`python benchmarks/eval_runner.py`
measures the whole run). torch's own compiler packs bf16 CPU linears the same way (inductor's freezing pass).

The result is the same oneDNN kernel's: bit-identical outputs on every shape we compared (1 to 1024 rows, 2-D and
3-D inputs; tests/test_packed_linear.py compares a model's logits). Two ways to hold the packed weights:

- `pack_linears`, a copy beside the original weights (which stay, for the embedding the output layer is tied to,
  adapters and state dicts, and are repacked if they change): a model's linear weights are held twice. The backend
  uses it for throughput work (eval, batch) where the copy takes at most a quarter of the free memory.
- `pack_linears_in_place`, for every other bf16 CPU load (ask, chat, serve; eval of a model too large to copy): each
  untied layer's weight is replaced by its packed copy, and the original's pages are handed back (`release_pages`),
  so memory does not grow. One question's decode reads every weight once per token; plain `F.linear` re-lays each
  weight out on every call, so it moves the weights about three times. MedGemma 4B, one row, 2 Zen 4 cores: a
  10240x2560 layer 2.37 ms plain vs 1.53 ms packed (22 vs 34 GB/s). The layer's `weight` becomes a `meta` tensor
  of the same shape and dtype: anything that would read the original values fails loudly instead of reading the
  packed layout as a matrix.

float32 too, for throughput loads on AMD x86 CPUs (`fp32_packing_pays`): there `F.linear` goes to MKL, whose
float32 kernels are slow at a decode batch's few rows on AMD. On the 2-core AVX2 EPYC a 10240x2560 layer took
50.1 ms through MKL and 11.5 ms packed at 8 rows, 104 vs 51 ms at 64, 277 vs 223 at 290; the demo's `eval` went from
39 to 56 GFLOP/s of useful work, 56% to 78% of the fp32 matmul peak (`python benchmarks/eval_runner.py`). The two
differ in fp32 summation order only (not bit-identical: MKL's kernel is not oneDNN's).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import types
from typing import Any

PACK_ROWS_HINT = 32  # the batch oneDNN lays the weights out for (any row count works, this one best)


def fp32_packing_pays() -> bool:
    """Whether float32 layers run faster packed: an x86 CPU from AMD with oneDNN in this torch, where MKL's float32
    kernels (what `F.linear` calls) were measured 1.2-4x slower than oneDNN's at 8-290 rows. Intel CPUs (MKL's own)
    and others keep `F.linear`: not measured there."""
    from .torch_setup import cpu_field, has_onednn

    return has_onednn() and cpu_field("vendor_id") == "AuthenticAMD"


def can_pack() -> bool:
    """Whether this torch build has oneDNN with bf16 support on this CPU."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


PACK_ENV = "MEDGEMMA_PACK_LINEARS"


def packing_on() -> bool:
    """False when `MEDGEMMA_PACK_LINEARS` is 0 (plain `F.linear` layers, for side-by-side benchmarks); any value but
    0 or 1 is a one-line `BadInput`, so a typo does not silently measure the wrong thing."""
    from ..errors import BadInput

    value = os.environ.get(PACK_ENV, "1").strip()
    if value not in ("0", "1"):
        raise BadInput(f"{PACK_ENV} must be 0 or 1; got {value!r}")
    return value == "1"


def packable(model: Any, dtype: Any = None) -> list[Any]:
    """The `nn.Linear` modules of `model` on the CPU whose weights are in `dtype` (default bf16), vision tower
    excluded (OpenVINO may run it)."""
    import torch

    dtype = torch.bfloat16 if dtype is None else dtype
    return [
        m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and "vision" not in name
        and m.weight.dtype == dtype
        and m.weight.device.type == "cpu"
    ]


def packed_bytes(model: Any, dtype: Any = None) -> int:
    """Memory `pack_linears` would add: one more copy of each packable layer's weight."""
    return sum(m.weight.numel() * m.weight.element_size() for m in packable(model, dtype))


def pack_linears(model: Any, on: bool = True, rows: int = PACK_ROWS_HINT, dtype: Any = None) -> int:
    """Route every packable linear layer of `model` through a oneDNN-packed copy of its weight (inference only;
    repacked if the weight changes), or back to `F.linear` (`on=False`, for side-by-side benchmarks); returns how
    many layers were changed. `dtype`: the layers' weight dtype (default bf16; float32 where `fp32_packing_pays`)."""
    import torch

    n = 0
    for module in packable(model, dtype):
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


def pack_linears_in_place(model: Any, rows: int = 1) -> int:
    """Replace the weight of every packable linear layer of `model` but the output layer (tied to the embedding,
    and read by log-likelihood scoring) and any whose weight another module shares by its oneDNN-packed copy, handing the original's
    memory back as it goes, so the peak is the model plus one layer; returns how many were packed. Inference only:
    the layers refuse autograd and other dtypes with a one-line error. `rows`: the batch the layout is chosen for
    (1: decoding one question; prefills of hundreds of rows run as fast through it)."""
    import torch

    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    n = 0
    for module in packable(model):
        w = module.weight
        if owners.get(id(w), 0) != 1 or module is output:  # scoring reads the output layer's weight (loglik.py)
            continue
        with torch.no_grad():
            packed = _pack(w.detach(), rows)
        release_pages(w)
        module.__dict__["_packed_only"] = packed
        module.weight = torch.nn.Parameter(torch.empty(w.shape, dtype=w.dtype, device="meta"), requires_grad=False)
        module.forward = types.MethodType(_packed_only_forward, module)
        del w
        n += 1
    return n


def _packed_only_forward(self: Any, x: Any) -> Any:
    import torch

    packed = self.__dict__["_packed_only"]
    if x.dtype != packed.dtype or torch.is_grad_enabled():
        raise RuntimeError(
            f"this layer's {packed.dtype} weights are packed for inference; {x.dtype} input"
            + (" with autograd on" if torch.is_grad_enabled() else "")
            + f" needs plain weights: load with {PACK_ENV}=0"
        )
    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")


def release_pages(t: Any) -> int:
    """Drop the pages of `t` that lie in a file mapping (weights that transformers maps straight from the
    safetensors file) from this process's resident memory, and return how many bytes: the file keeps them, and a
    later read would page them in again from it. A page written since it was mapped (a private mapping's own copy,
    e.g. an adapter merged into the weight) would read back as the file's bytes instead, so callers release only a
    tensor they will not read again (`pack_linears_in_place` has packed it first). Memory that is not file-backed is
    left alone (it is freed when the tensor is). Only whole pages inside the tensor's own bytes are touched. Linux
    only; elsewhere 0."""
    start = int(t.data_ptr())
    end = start + t.numel() * t.element_size()
    storage = t.untyped_storage()
    whole = storage.data_ptr() == start and storage.nbytes() == end - start  # no other view's bytes around it
    if not sys.platform.startswith("linux") or not whole or end <= start or not _file_mapped(start, end):
        return 0
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, end // page * page
    if hi <= lo:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.madvise(lo, hi - lo, MADV_DONTNEED) != 0:
        return 0
    return hi - lo


MADV_DONTNEED = 4  # Linux <sys/mman.h>


def _file_mapped(start: int, end: int) -> bool:
    """Whether [start, end) lies inside one mapping of a regular file (/proc/self/maps), not anonymous memory."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                if lo <= start and end <= hi:
                    path = fields[5].strip() if len(fields) > 5 else ""
                    return path.startswith("/") and " (deleted)" not in path
    except OSError:
        pass
    return False


def _pack(weight: Any, rows: int) -> Any:
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)
