"""bf16 linear layers through oneDNN-packed weights (runtime/packed_linear.py): the same numbers as `F.linear`,
used where they should be (eval's throughput load of a bf16 CPU model) and nowhere else.

The oracle is torch's own `F.linear` on the same weights, compared bit for bit, and a model's logits and greedy
tokens with the packing switched off.
"""

from __future__ import annotations

import pytest
import torch

from medgemma_toolkit import MedGemma
from medgemma_toolkit.runtime.packed_linear import can_pack, pack_linears, packable

pytestmark = pytest.mark.skipif(not can_pack(), reason="this CPU's torch has no oneDNN bf16 kernels")


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


def test_throughput_load_packs_and_changes_no_logit_or_token(text_dir):
    mg = MedGemma.load(str(text_dir), dtype="bfloat16", device="cpu", workload="throughput")
    be = mg.backend
    assert int(be.info.extra["packed_linears"]) == len(packable(be.model)) > 0
    assert "forward" in be.model.get_output_embeddings().__dict__  # the output layer too
    qs = ["Is there an effusion?", "Describe the heart size and the lungs in detail.", "x"]
    reqs = [mg.request(q, max_new_tokens=12) for q in qs]
    inputs = dict(be._encode([r.prompt for r in reqs]))
    with torch.inference_mode():
        packed_logits = be.model(**inputs).logits
        packed = [c.text for c in be.generate(reqs)]
        pack_linears(be.model, on=False)
        plain_logits = be.model(**inputs).logits
        plain = [c.text for c in be.generate(reqs)]
    assert torch.equal(packed_logits, plain_logits)
    assert packed == plain


def test_interactive_load_does_not_pack(text_dir):
    mg = MedGemma.load(str(text_dir), dtype="bfloat16", device="cpu")
    assert "packed_linears" not in mg.backend.info.extra
    assert not any("forward" in m.__dict__ for m in packable(mg.backend.model))
