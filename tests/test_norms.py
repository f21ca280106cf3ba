"""Gemma's RMSNorm through `F.rms_norm` (runtime/norms.py) against transformers' own module, on its own and as
a whole model's logits and greedy tokens (fp32 and bf16)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

from medgemma_toolkit import MedGemma
from medgemma_toolkit.runtime.norms import fuse_rms_norms


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norm_equals_transformers(dtype):
    torch.manual_seed(0)
    ref = Gemma3RMSNorm(640, eps=1e-6)
    ref.weight.data.normal_()
    ref = ref.to(dtype)
    fused = copy.deepcopy(ref)
    assert fuse_rms_norms(torch.nn.Sequential(fused)) == 1
    x = (torch.randn(3, 17, 640) * 4).to(dtype)
    with torch.inference_mode():
        want, got = ref(x), fused(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-6, atol=1e-6)
    # a changed weight (an adapter merged in place) is picked up
    with torch.no_grad():
        ref.weight.add_(0.5)
        fused.weight.add_(0.5)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x).float(), ref(x).float(), rtol=1e-6, atol=1e-6)


def test_loaded_model_logits_and_greedy_tokens_unchanged(tiny_text_model_dir):
    """The backend fuses its norms at load; the logits of a plain transformers model stay within fp32 rounding."""
    from transformers import AutoModelForCausalLM

    mg = MedGemma.load(str(tiny_text_model_dir), dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_text_model_dir), dtype=torch.float32).eval()
    assert mg.backend.model.model.norm.forward.__func__ is not Gemma3RMSNorm.forward  # fused at load
    be = mg.backend
    inputs = be._encode([mg.request("Is there an effusion in the left lung?").prompt])
    with torch.inference_mode():
        a = be.model(**inputs).logits
        b = plain(**inputs).logits
        ga = be.model.generate(**inputs, max_new_tokens=12, do_sample=False)
        gb = plain.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert (a - b).abs().max().item() <= 1e-5
    assert ga.tolist() == gb.tolist()
    fuse_rms_norms(be.model, on=False)  # back to transformers' own: the plain model's logits exactly
    with torch.inference_mode():
        assert torch.equal(be.model(**inputs).logits, b)
    fuse_rms_norms(be.model)
