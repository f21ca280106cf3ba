"""Each metric against an independent computation: scikit-learn, rouge-score, sacrebleu, or values worked by hand."""

from __future__ import annotations

import math
import random
import sys

import numpy as np
import pytest

from medgemma_toolkit.eval.metrics import (
    METRICS,
    binary_f1,
    bootstrap_ci,
    compute_metrics,
    exact_match,
    macro_f1,
    mcnemar_exact,
    paired_bootstrap,
    per_condition_f1,
    rouge_l,
    token_f1,
)


def _mcq(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        gold = rnd.choice("ABCD")
        parsed = rnd.choice(["A", "B", "C", "D", None])
        out.append(
            {
                "item_id": f"q{i}",
                "gold": gold,
                "parsed": parsed,
                "correct": parsed == gold,
                "score": float(parsed == gold),
            }
        )
    return out


def test_accuracy_matches_sklearn():
    from sklearn.metrics import accuracy_score

    recs = _mcq(200, 1)
    ours = compute_metrics(recs, ["accuracy"], n_boot=200)["accuracy"]
    ref = accuracy_score([r["gold"] for r in recs], [r["parsed"] or "none" for r in recs])
    assert ours["value"] == pytest.approx(ref)
    assert ours["ci_low"] < ours["value"] < ours["ci_high"]
    assert ours["n"] == 200


def _conditions(n_images: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    recs = []
    for i in range(n_images):
        for c in ("Atelectasis", "Cardiomegaly", "Edema"):
            gold = rnd.random() < 0.4
            parsed = rnd.choice(["yes", "no", None])
            recs.append(
                {
                    "item_id": f"img{i}",
                    "condition": c,
                    "gold": "yes" if gold else "no",
                    "parsed": parsed,
                    "correct": parsed == ("yes" if gold else "no"),
                }
            )
    return recs


def test_macro_f1_matches_sklearn_with_unparseable_counted_wrong():
    from sklearn.metrics import f1_score

    recs = _conditions(80, 2)
    per = per_condition_f1(recs)
    expected = {}
    for c in per:
        rows = [r for r in recs if r["condition"] == c]
        y = [r["gold"] == "yes" for r in rows]
        # unparseable -> the wrong label
        p = [(r["parsed"] == "yes") if r["parsed"] else not (r["gold"] == "yes") for r in rows]
        expected[c] = f1_score(y, p)
        assert per[c] == pytest.approx(expected[c])
    assert macro_f1(recs) == pytest.approx(np.mean(list(expected.values())))


def test_binary_f1_edge_cases_match_sklearn():
    from sklearn.metrics import f1_score

    for y, p in [([1, 0, 0], [0, 0, 0]), ([0, 0], [0, 0]), ([1, 1], [1, 1]), ([0, 1], [1, 0])]:
        assert binary_f1([bool(v) for v in y], [bool(v) for v in p]) == pytest.approx(f1_score(y, p, zero_division=0))


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("left lung", "left lung", 1.0),
        ("The left lung.", "left lung", 1.0),  # articles and punctuation are normalized away
        ("left upper lung", "left lung", 2 * (2 / 3) * 1 / (2 / 3 + 1)),
        ("right", "left lung", 0.0),
        (None, "yes", 0.0),
        ("yes yes", "yes", 2 * 0.5 * 1 / 1.5),
    ],
)
def test_token_f1_hand_values(pred, ref, expected):
    assert token_f1(pred, ref) == pytest.approx(expected)


def test_exact_match_for_closed_questions():
    assert exact_match("Yes, there is an effusion.", "yes")
    assert not exact_match("No.", "yes")
    assert exact_match("Left lung", "left lung")
    assert not exact_match(None, "no")


def test_rouge_l_matches_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [
        ("The heart is enlarged. No effusion.", "The heart size is enlarged. There is no pleural effusion."),
        ("Normal chest.", "The heart size is normal. The lungs are clear."),
        ("", "Something."),
    ]
    for pred, ref in pairs:
        assert rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)
    recs = [
        {"item_id": str(i), "parsed": p, "gold": r, "score": rouge_l(p, r), "correct": None}
        for i, (p, r) in enumerate(pairs)
    ]
    value = compute_metrics(recs, ["rouge_l"], n_boot=100)["rouge_l"]["value"]
    assert value == pytest.approx(np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs]))


def test_bleu_matches_sacrebleu():
    import sacrebleu

    preds = ["the heart is enlarged and there is a small effusion", "no acute findings in the chest"]
    refs = ["the heart is enlarged with a small right effusion", "no acute cardiopulmonary findings"]
    recs = [{"item_id": str(i), "parsed": p, "gold": r} for i, (p, r) in enumerate(zip(preds, refs))]
    assert METRICS["bleu"].compute(recs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score / 100)


def test_bootstrap_is_reproducible_and_degenerate_cases():
    recs = _mcq(60, 3)
    m = METRICS["accuracy"]
    assert bootstrap_ci(recs, m, 300, seed=7) == bootstrap_ci(recs, m, 300, seed=7)
    all_right = [{**r, "correct": True} for r in recs]
    assert bootstrap_ci(all_right, m, 200) == (1.0, 1.0)
    assert bootstrap_ci(recs[:1], m, 200) == (None, None)


def test_bootstrap_vectorized_path_equals_generic_path():
    from medgemma_toolkit.eval.metrics import Metric

    recs = _conditions(30, 4)
    vec = METRICS["accuracy"]
    generic = Metric("accuracy", aggregate=lambda rs: float(np.mean([bool(r["correct"]) for r in rs])))
    a = bootstrap_ci(recs, vec, 200, seed=1)
    b = bootstrap_ci(recs, generic, 200, seed=1)
    assert a == pytest.approx(b)


def test_bootstrap_ci_covers_binomial_interval():
    recs = _mcq(400, 5)
    v = compute_metrics(recs, ["accuracy"], n_boot=1000)["accuracy"]
    p, n = v["value"], 400
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # normal approximation, computed by hand
    assert v["ci_low"] == pytest.approx(p - half, abs=0.015)
    assert v["ci_high"] == pytest.approx(p + half, abs=0.015)


def test_mcnemar_exact_hand_values():
    # 8 discordant pairs split 7/1: p = 2 * P(X <= 1 | n=8, 0.5) = 2 * 9/256
    a = [True] * 7 + [False] * 1 + [True] * 5
    b = [False] * 7 + [True] * 1 + [True] * 5
    r = mcnemar_exact(a, b)
    assert (r["only_a"], r["only_b"]) == (7, 1)
    assert r["p_value"] == pytest.approx(2 * 9 / 256)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0


def test_paired_bootstrap_detects_a_real_difference():
    base = _mcq(150, 6)
    better = [{**r, "correct": True, "parsed": r["gold"]} for r in base]
    res = paired_bootstrap(better, base, METRICS["accuracy"], n_boot=300)
    assert res["diff"] == pytest.approx(1.0 - np.mean([r["correct"] for r in base]))
    assert res["ci_low"] > 0 and res["p_value"] < 0.01
    same = paired_bootstrap(base, base, METRICS["accuracy"], n_boot=100)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_radgraph_reported_unavailable_without_package(monkeypatch):
    from medgemma_toolkit.eval import metrics

    monkeypatch.setitem(sys.modules, "radgraph", None)  # not installed, whether or not it is here
    monkeypatch.setattr(metrics, "_radgraph_scorer", None)
    out = compute_metrics([{"item_id": "1", "parsed": "x", "gold": "y", "score": 0.0}], ["radgraph_f1"], n_boot=10)
    assert out["radgraph_f1"]["value"] is None
    assert "pip install radgraph" in out["radgraph_f1"]["note"]


def _wilson_by_bisection(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Oracle written differently: the Wilson interval is the set of p whose score test |k/n - p| <= z*sd(p)
    accepts; find its two ends by bisection instead of the closed form."""
    phat = k / n

    def accepts(p: float) -> bool:
        return (phat - p) ** 2 <= z * z * p * (1 - p) / n + 1e-15

    def edge(inside: float, outside: float) -> float:
        for _ in range(200):
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if accepts(mid) else (inside, mid)
        return inside

    return (0.0 if accepts(0.0) else edge(phat, 0.0)), (1.0 if accepts(1.0) else edge(phat, 1.0))


@pytest.mark.parametrize("k,n", [(0, 20), (20, 20), (7, 20), (1, 3), (499, 500), (250, 500)])
def test_wilson_interval_matches_score_test_inversion(k, n):
    from medgemma_toolkit.eval.metrics import wilson_interval

    lo, hi = wilson_interval(k, n)
    olo, ohi = _wilson_by_bisection(k, n)
    assert lo == pytest.approx(olo, abs=1e-9) and hi == pytest.approx(ohi, abs=1e-9)


def test_intervals_do_not_collapse_at_zero_and_one_and_say_their_method():
    # 0 of 20 right: the "0.000 (95% CI 0.000-0.000)"; Wilson's upper end for 0/20 is 0.1611 (published)
    recs = [
        {
            "item_id": str(i),
            "gold": "A",
            "parsed": "B",
            "correct": False,
            "score": 0.0,
            "condition": None,
            "answer_type": None,
        }
        for i in range(20)
    ]
    acc = compute_metrics(recs, ["accuracy"], n_boot=200)["accuracy"]
    assert acc["ci_method"] == "wilson" and acc["ci_low"] == 0.0 and acc["ci_high"] == pytest.approx(0.16113, abs=1e-5)
    right = [{**r, "parsed": "A", "correct": True, "score": 1.0} for r in recs]
    acc = compute_metrics(right, ["accuracy"], n_boot=200)["accuracy"]
    assert acc["ci_high"] == 1.0 and acc["ci_low"] == pytest.approx(1 - 0.16113, abs=1e-5)
    # several questions per item (CXR): a clustered bootstrap, and when every resample is 0 the item-count Wilson
    cxr = [
        {
            "item_id": str(i // 5),
            "condition": f"c{i % 5}",
            "gold": "yes",
            "parsed": "no",
            "correct": False,
            "score": 0.0,
            "answer_type": None,
        }
        for i in range(20)
    ]
    m = compute_metrics(cxr, ["macro_f1", "accuracy"], n_boot=200)
    assert m["accuracy"]["ci_method"] == "wilson-items" and m["macro_f1"]["ci_method"] == "wilson-items"
    assert m["accuracy"]["ci_high"] == pytest.approx(_wilson_by_bisection(0, 4)[1], abs=1e-9)
    mixed = [{**r, "parsed": "yes", "correct": True, "score": 1.0} if i % 3 == 0 else r for i, r in enumerate(cxr)]
    assert compute_metrics(mixed, ["accuracy"], n_boot=200)["accuracy"]["ci_method"] == "bootstrap"


def test_token_f1_is_never_treated_as_a_proportion():
    recs = [
        {
            "item_id": str(i),
            "gold": "lung",
            "parsed": "x",
            "correct": False,
            "score": 0.0,
            "condition": None,
            "answer_type": "open",
        }
        for i in range(10)
    ]
    m = compute_metrics(recs, ["token_f1", "closed_accuracy"], n_boot=100)
    assert m["token_f1"]["ci_method"] == "wilson-items" and m["token_f1"]["ci_high"] > 0  # all-zero bootstrap
    assert m["closed_accuracy"]["value"] is None and m["closed_accuracy"]["ci_method"] is None
    half = [{**r, "score": 0.5} for r in recs]
    assert compute_metrics(half, ["token_f1"], n_boot=100)["token_f1"]["ci_method"] == "bootstrap"
