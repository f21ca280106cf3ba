"""bf16 linear layers through oneDNN-packed weights (runtime/packed_linear.py): the same numbers as `F.linear`,
a copy for eval's throughput load of a bf16 CPU model (and of an fp32 one on AMD CPUs), in place for every other
bf16 CPU load.

The oracle is torch's own `F.linear` on the same weights, compared bit for bit, and a model's logits and greedy
tokens with the packing switched off.
"""

from __future__ import annotations

import mmap
import sys

import pytest
import torch

from medgemma_toolkit import MedGemma
from medgemma_toolkit.runtime.packed_linear import can_pack, pack_linears, packable, release_pages

# Packing needs oneDNN's bf16 kernels (AVX512-BF16 or AMX CPUs); the switch and the page release run everywhere.
needs_bf16 = pytest.mark.skipif(not can_pack(), reason="this CPU's torch has no oneDNN bf16 kernels")


@needs_bf16
@pytest.mark.parametrize("shape", [(1, 64), (5, 64), (3, 7, 64), (300, 64)])
def test_packed_layer_equals_f_linear_and_follows_weight_changes(shape):
    layer = torch.nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(*shape).to(torch.bfloat16)
    assert pack_linears(layer) == 1
    with torch.inference_mode():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    with torch.no_grad():
        layer.weight.mul_(-0.5)  # an in-place change (an adapter merged, a weight loaded) repacks
    with torch.inference_mode():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    pack_linears(layer, on=False)
    assert "forward" not in layer.__dict__


@needs_bf16
def test_fp32_and_training_keep_the_plain_path():
    layer = torch.nn.Linear(8, 8)
    assert packable(layer) == [] and pack_linears(layer) == 0  # fp32: nothing to pack
    bf16 = torch.nn.Linear(8, 8).to(torch.bfloat16)
    pack_linears(bf16)
    x = torch.randn(2, 8, dtype=torch.bfloat16, requires_grad=True)
    bf16(x).sum().backward()  # with autograd on, the plain F.linear runs and gradients flow
    assert x.grad is not None


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    from medgemma_toolkit.testing.tiny_checkpoint import build_tiny_medgemma

    return build_tiny_medgemma(tmp_path_factory.mktemp("pack") / "tiny", text_only=True, seed=1, hidden_size=64)


@needs_bf16
def test_throughput_load_packs_and_changes_no_logit_or_token(text_dir):
    mg = MedGemma.load(str(text_dir), dtype="bfloat16", device="cpu", workload="throughput")
    be = mg.backend
    assert int(be.info.extra["packed_linears"]) == len(packable(be.model)) > 0
    assert "forward" in be.model.get_output_embeddings().__dict__  # the output layer too
    (packed_logits, packed), (plain_logits, plain) = packed_then_plain(mg, torch.bfloat16)
    assert torch.equal(packed_logits, plain_logits)
    assert packed == plain


def packed_then_plain(mg, dtype) -> list[tuple[torch.Tensor, list[str]]]:
    """Logits and greedy answers of three questions through the packed layers, then again with packing off."""
    be = mg.backend
    qs = ["Is there an effusion?", "Describe the heart size and the lungs in detail.", "x"]
    reqs = [mg.request(q, max_new_tokens=12) for q in qs]
    inputs = dict(be._encode([r.prompt for r in reqs]))
    out = []
    with torch.inference_mode():
        for on in (True, False):
            pack_linears(be.model, on=on, dtype=dtype)
            out.append((be.model(**inputs).logits, [c.text for c in be.generate(reqs)]))
    return out


@needs_bf16
def test_interactive_load_packs_in_place_with_the_same_logits_and_tokens(text_dir, monkeypatch):
    """ask/chat/serve: the untied layers' weights are replaced by their packed copies (no second copy), the tied
    output layer keeps the embedding's weight, and logits and greedy tokens equal a plain load's bit for bit."""
    qs = ["Is there an effusion?", "Describe the heart size and the lungs in detail.", "x"]
    monkeypatch.setenv("MEDGEMMA_PACK_LINEARS", "0")
    plain = MedGemma.load(str(text_dir), dtype="bfloat16", device="cpu")
    assert "packed_linears" not in plain.backend.info.extra
    monkeypatch.delenv("MEDGEMMA_PACK_LINEARS")
    mg = MedGemma.load(str(text_dir), dtype="bfloat16", device="cpu")
    be = mg.backend
    layers = [m for n, m in be.model.named_modules() if isinstance(m, torch.nn.Linear) and "_packed_only" in m.__dict__]
    assert be.info.extra["packed_linears"] == f"{len(layers)} in place" and len(layers) > 0
    assert all(m.weight.device.type == "meta" for m in layers)  # nothing can read the packed layout as a matrix
    out = be.model.get_output_embeddings()
    assert out.weight.device.type == "cpu" and "_packed_only" not in out.__dict__  # tied to the embedding
    reqs = [mg.request(q, max_new_tokens=12) for q in qs]
    inputs = dict(be._encode([r.prompt for r in reqs]))
    with torch.inference_mode():
        assert torch.equal(be.model(**inputs).logits, plain.backend.model(**inputs).logits)
    assert [mg.ask(q, max_new_tokens=12).raw for q in qs] == [plain.ask(q, max_new_tokens=12).raw for q in qs]
    x = torch.randn(2, layers[0].in_features, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(RuntimeError, match="packed for inference"):
        layers[0](x)


def test_fp32_throughput_load_packs_on_amd_only_and_keeps_tokens(text_dir, monkeypatch):
    """float32 is packed for throughput work (eval, batch) where `fp32_packing_pays` (AMD x86 CPUs: MKL's fp32
    kernels are slow there at a few rows); the oracle is the same model through `F.linear`. Not bit-identical (MKL's
    summation order is not oneDNN's): logits within fp32 rounding, greedy tokens equal. Interactive loads, other
    CPUs and bf16 weights with fp32 arithmetic keep the plain layers."""
    from medgemma_toolkit.runtime import packed_linear

    pays = packed_linear.fp32_packing_pays()
    mg = MedGemma.load(str(text_dir), dtype="float32", device="cpu", workload="throughput")
    be = mg.backend
    if not pays:
        assert "packed_linears" not in be.info.extra
        pytest.skip("float32 layers are packed on AMD x86 CPUs only")
    layers = packable(be.model, torch.float32)
    assert int(be.info.extra["packed_linears"]) == len(layers) > 0
    assert all("forward" in m.__dict__ for m in layers)
    (packed_logits, packed), (plain_logits, plain) = packed_then_plain(mg, torch.float32)
    assert all("forward" not in m.__dict__ for m in layers)  # switched off: F.linear again
    assert torch.allclose(packed_logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert packed == plain
    assert "packed_linears" not in MedGemma.load(str(text_dir), dtype="float32", device="cpu").backend.info.extra
    weights = MedGemma.load(str(text_dir), dtype="bfloat16-weights", device="cpu", workload="throughput")
    assert "packed_linears" not in weights.backend.info.extra
    monkeypatch.setattr(packed_linear, "fp32_packing_pays", lambda: False)  # an Intel CPU: MKL's own kernels
    other = MedGemma.load(str(text_dir), dtype="float32", device="cpu", workload="throughput")
    assert "packed_linears" not in other.backend.info.extra


def test_packing_switch_is_checked(text_dir, monkeypatch):
    from medgemma_toolkit.errors import BadInput

    monkeypatch.setenv("MEDGEMMA_PACK_LINEARS", "no")
    with pytest.raises(BadInput, match="MEDGEMMA_PACK_LINEARS must be 0 or 1"):
        MedGemma.load(str(text_dir), dtype="bfloat16", device="cpu")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release is Linux-only")
def test_release_pages_drops_file_pages_and_keeps_values(tmp_path):
    """The oracle is the kernel's own count of this process's resident file pages (/proc/self/status RssFile):
    released pages leave it, and reading the tensor again pages the same values back in from the file."""
    n = 64 << 20
    path = tmp_path / "weights.bin"
    values = torch.arange(n // 2, dtype=torch.int16).to(torch.bfloat16)
    path.write_bytes(values.view(torch.uint8).numpy().tobytes())
    mapped = torch.from_file(str(path), shared=False, size=n // 2, dtype=torch.bfloat16)
    assert float(mapped.float().sum()) == float(values.float().sum())  # every page touched
    before = _rss_file()
    assert release_pages(mapped) >= n - 2 * mmap.PAGESIZE
    assert before - _rss_file() >= (n >> 10) // 2  # kB: at least half of it left this process
    assert torch.equal(mapped, values)
    anon = values.clone()  # not file-backed: left alone
    assert release_pages(anon) == 0 and torch.equal(anon, values)
    assert release_pages(mapped[1:]) == 0  # a view inside a larger storage: other bytes share its pages


def _rss_file() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("RssFile:"))
