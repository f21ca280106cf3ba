"""The one statistics module: checked against SciPy and the normal approximation, and shared by eval and training."""

from __future__ import annotations

import random

import numpy as np
import pytest

from medgemma_toolkit.stats import bootstrap_mean, normalize_answer, token_f1, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 10), (3, 10), (7, 20), (50, 50), (1, 3), (412, 1000)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_refuses_an_empty_sample():
    with pytest.raises(ValueError, match="positive"):
        wilson_interval(0, 0)


def test_bootstrap_mean_agrees_with_the_normal_approximation():
    # 2000 draws: the percentile bootstrap of the mean is mean +- 1.96 * sd / sqrt(n) to within a few percent.
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 2.0, 2000)
    half = 1.959964 * x.std(ddof=1) / np.sqrt(len(x))
    lo, hi = bootstrap_mean(x.tolist(), n_boot=4000)
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)
    assert bootstrap_mean([0.5]) == (None, None)  # one value has no spread to resample


def test_token_f1_by_hand():
    assert normalize_answer("The  Left, lung!") == "left lung"
    assert token_f1("left lower lobe", "the left lobe") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1(None, "x") == 0.0 and token_f1("", "") == 1.0 and token_f1("a", "the") == 1.0


def test_training_scores_use_the_harness_statistics():
    """Fine-tuning's before/after intervals are the evaluation harness's for the same answers."""
    from medgemma_toolkit.eval.metrics import compute_metrics
    from medgemma_toolkit.train.data import Example
    from medgemma_toolkit.train.evaluate import score_answers

    rnd = random.Random(3)
    words = ["left", "right", "effusion", "nodule", "normal", "lobe"]
    refs = [" ".join(rnd.choices(words, k=3)) for _ in range(40)]
    preds = [" ".join(rnd.choices(words, k=rnd.randint(1, 4))) if i % 3 else refs[i] for i in range(40)]
    examples = [Example(question="q", answer=r) for r in refs]
    recs = [
        {
            "item_id": str(i),
            "parsed": p,
            "gold": r,
            "correct": normalize_answer(p) == normalize_answer(r),
            "score": token_f1(p, r),
        }
        for i, (p, r) in enumerate(zip(preds, refs))
    ]
    ref = compute_metrics(recs, ["accuracy", "token_f1"])

    acc, f1 = score_answers(preds, examples, "accuracy"), score_answers(preds, examples, "token_f1")
    assert acc["value"] == round(ref["accuracy"]["value"], 4) and ref["accuracy"]["ci_method"] == "wilson"
    assert acc["ci95"] == [round(ref["accuracy"]["ci_low"], 4), round(ref["accuracy"]["ci_high"], 4)]
    assert f1["value"] == round(ref["token_f1"]["value"], 4) and ref["token_f1"]["ci_method"] == "bootstrap"
    assert f1["ci95"] == [round(ref["token_f1"]["ci_low"], 4), round(ref["token_f1"]["ci_high"], 4)]
