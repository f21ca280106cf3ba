"""Metrics over per-item records, with 95% confidence intervals that do not collapse, and paired tests.

Proportions (accuracy: one right/wrong answer per item) get the Wilson score interval, which stays inside [0, 1]
and keeps a width at 0% and 100% where a bootstrap collapses to a point. Everything else (F1, ROUGE, accuracy over
several questions per item) gets a percentile bootstrap over items. The summary states which (`ci_method`).

Records are the dicts the runner writes (`parsed`, `gold`, `correct`, `score`, `condition`, `answer_type`,
`item_id`). An unparseable answer (`parsed` is None) is wrong: it scores 0 and, for F1 over yes/no conditions,
counts as the label opposite to the truth. Bootstrap resamples *items* (an X-ray with five condition questions is
one draw), so correlated questions do not shrink the interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..stats import (
    bootstrap_ratio,
    bootstrap_statistic,
    normalize_answer,
    resample_indices,
    wilson_interval,
)
from ..stats import token_f1 as token_f1  # re-exported: per-answer scores live beside the record metrics

Record = dict[str, Any]


# -- per-answer scores ------------------------------------------------------------------------------------------
def exact_match(prediction: str | None, reference: str) -> bool:
    if prediction is None:
        return False
    p, r = normalize_answer(prediction), normalize_answer(reference)
    if p == r:
        return True
    # Closed questions: "Yes, there is an effusion." answers "yes".
    return r in ("yes", "no") and p.split()[:1] == [r]


_rouge_scorer = None


def rouge_l(prediction: str | None, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, Porter stemming)."""
    global _rouge_scorer
    if prediction is None:
        return 0.0
    if _rouge_scorer is None:
        rouge_scorer = _need("rouge_score.rouge_scorer", "ROUGE-L")

        _rouge_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_rouge_scorer.score(reference, prediction)["rougeL"].fmeasure)


def _need(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        from ..errors import BackendUnavailable

        raise BackendUnavailable(f"{what} needs {module.split('.')[0]}: pip install 'medgemma-toolkit[eval]'") from None


# -- aggregate metrics -------------------------------------------------------------------------------------------
def binary_f1(gold: Sequence[bool], pred: Sequence[bool]) -> float:
    tp = sum(g and p for g, p in zip(gold, pred))
    fp = sum(p and not g for g, p in zip(gold, pred))
    fn = sum(g and not p for g, p in zip(gold, pred))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def per_condition_f1(records: Sequence[Record]) -> dict[str, float]:
    by: dict[str, tuple[list[bool], list[bool]]] = defaultdict(lambda: ([], []))
    for r in records:
        gold = r["gold"] == "yes"
        pred = (r["parsed"] == "yes") if r["parsed"] in ("yes", "no") else not gold  # unparseable = wrong
        by[r["condition"]][0].append(gold)
        by[r["condition"]][1].append(pred)
    return {c: binary_f1(g, p) for c, (g, p) in sorted(by.items())}


def macro_f1(records: Sequence[Record]) -> float | None:
    f1s = per_condition_f1(records)
    return float(np.mean(list(f1s.values()))) if f1s else None


def corpus_bleu(records: Sequence[Record]) -> float | None:
    """sacrebleu corpus BLEU on a 0-1 scale (sacrebleu's score / 100)."""
    if not records:
        return None
    sacrebleu = _need("sacrebleu", "BLEU")
    preds = [r["parsed"] or "" for r in records]
    refs = [r["gold"] or "" for r in records]
    return float(sacrebleu.corpus_bleu(preds, [refs]).score) / 100.0


def radgraph_f1(records: Sequence[Record]) -> float | None:
    """RadGraph F1 (partial reward) when the `radgraph` package and its model are available locally."""
    scorer = _radgraph()
    preds = [r["parsed"] or "" for r in records]
    refs = [r["gold"] or "" for r in records]
    out = scorer(hyps=preds, refs=refs)
    return float(out[0] if isinstance(out, tuple) else out)


def radgraph_unavailable() -> str | None:
    """Why RadGraph F1 cannot be computed here, or None when it can."""
    try:
        _radgraph()
    except Exception as e:
        return (
            f"RadGraph F1 skipped: needs `pip install radgraph` and its model in the local cache ({type(e).__name__})"
        )
    return None


_radgraph_scorer = None


def _radgraph() -> Any:
    global _radgraph_scorer
    if _radgraph_scorer is None:
        from radgraph import F1RadGraph  # optional; its model must already be cached (we never download)

        _radgraph_scorer = F1RadGraph(reward_level="partial")
    return _radgraph_scorer


@dataclass(frozen=True)
class Metric:
    name: str
    # Mean-type metrics give a per-record value (None = record not counted): bootstrap is then vectorized.
    unit_value: Callable[[Record], float | None] | None = None
    aggregate: Callable[[Sequence[Record]], float | None] | None = None
    binary: bool = False  # each value is right/wrong (0 or 1): a proportion, so the Wilson interval applies

    def compute(self, records: Sequence[Record]) -> float | None:
        if self.aggregate is not None:
            return self.aggregate(records)
        vals = [v for v in map(self.unit_value, records) if v is not None]  # type: ignore[arg-type]
        return float(np.mean(vals)) if vals else None


def _is_closed(r: Record) -> bool:
    """Closed as the run's metric convention decided (`closed`, eval/conventions.py), else the release's type."""
    closed = r.get("closed")
    return bool(closed) if closed is not None else r.get("answer_type") == "closed"


def _closed(r: Record) -> float | None:
    return float(bool(r["correct"])) if _is_closed(r) else None


def _open_f1(r: Record) -> float | None:
    return float(r["score"]) if not _is_closed(r) else None


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", unit_value=lambda r: float(bool(r["correct"])), binary=True),
    "macro_f1": Metric("macro_f1", aggregate=macro_f1),
    "token_f1": Metric("token_f1", unit_value=lambda r: float(r["score"])),
    "open_token_f1": Metric("open_token_f1", unit_value=_open_f1),
    "closed_accuracy": Metric("closed_accuracy", unit_value=_closed, binary=True),
    "rouge_l": Metric("rouge_l", unit_value=lambda r: float(r["score"])),
    "bleu": Metric("bleu", aggregate=corpus_bleu),
    "radgraph_f1": Metric("radgraph_f1", aggregate=radgraph_f1),
}


# -- intervals ----------------------------------------------------------------------------------------------------
def _proportion(records: Sequence[Record], metric: Metric) -> tuple[int, int] | None:
    """(successes, n) when `metric` is a 0/1 value with exactly one counted record per item; else None."""
    if metric.unit_value is None or not metric.binary:
        return None
    vals = [(str(r["item_id"]), v) for r in records if (v := metric.unit_value(r)) is not None]
    if not vals or any(v not in (0.0, 1.0) for _, v in vals) or len({i for i, _ in vals}) != len(vals):
        return None
    return int(sum(v for _, v in vals)), len(vals)


# -- bootstrap ----------------------------------------------------------------------------------------------------
def _groups(records: Sequence[Record], key: str = "item_id") -> list[list[int]]:
    by: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by[str(r[key])].append(i)
    return list(by.values())


def bootstrap_ci(
    records: Sequence[Record], metric: Metric, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of `metric`, resampling items with replacement (fixed seed: reproducible)."""
    groups = _groups(records)
    if metric.unit_value is not None:
        vals = [metric.unit_value(r) for r in records]
        sums = [sum(v for i in g if (v := vals[i]) is not None) for g in groups]
        counts = [sum(vals[i] is not None for i in g) for g in groups]
        return bootstrap_ratio(sums, counts, n_boot, seed, level)
    return bootstrap_statistic(
        len(groups), lambda row: metric.compute([records[i] for j in row for i in groups[j]]), n_boot, seed, level
    )


def compute_metrics(
    records: Sequence[Record], names: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """{metric: {value, ci_low, ci_high, ci_method, n}}; a metric that cannot run here gets `value: None` and a
    `note`. ci_method is "wilson" (a proportion over independent items), "bootstrap" (percentile, over items) or
    "wilson-items" (a bootstrap that gave one value, 0 or 1, for every resample: Wilson on the item count)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        m = METRICS[name]
        if name == "radgraph_f1":
            why = radgraph_unavailable()
            if why:
                out[name] = {
                    "value": None,
                    "ci_low": None,
                    "ci_high": None,
                    "ci_method": None,
                    "n": len(records),
                    "note": why,
                }
                continue
        value = m.compute(records)
        lo: float | None
        hi: float | None
        prop = _proportion(records, m) if value is not None else None
        if prop is not None:
            (lo, hi), method = wilson_interval(*prop), "wilson"
        elif value is not None:
            (lo, hi), method = bootstrap_ci(records, m, n_boot, seed), "bootstrap"
            if lo is not None and lo == hi and value in (0.0, 1.0):
                # Every resample gave the same 0 or 1 (e.g. no item scored at all): the percentile interval is a
                # point. A [0, 1] score that is 0 (1) on every item is bounded like the proportion 0/n (n/n) of
                # items, so the Wilson interval on the items stands in, and says so.
                n_items = len({str(r["item_id"]) for r in records})
                (lo, hi), method = wilson_interval(round(value * n_items), n_items), "wilson-items"
        else:
            (lo, hi), method = (None, None), None
        n = len(records) if m.unit_value is None else sum(m.unit_value(r) is not None for r in records)
        out[name] = {
            "value": value,
            "ci_low": lo,
            "ci_high": hi,
            "ci_method": method if lo is not None else None,
            "n": n,
        }
    return out


# -- paired comparison --------------------------------------------------------------------------------------------
def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, float]:
    """Exact (binomial) McNemar test on paired right/wrong outcomes: two-sided p-value."""
    b = sum(x and not y for x, y in zip(a_correct, b_correct))
    c = sum(y and not x for x, y in zip(a_correct, b_correct))
    n = b + c
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p_value": 1.0}
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return {"only_a": b, "only_b": c, "p_value": min(1.0, 2 * tail)}


def paired_bootstrap(
    a: Sequence[Record], b: Sequence[Record], metric: Metric, n_boot: int = 1000, seed: int = 0
) -> dict[str, float | None]:
    """Difference A - B on the same items, its 95% interval, and a two-sided bootstrap p-value.

    `a` and `b` must be aligned (same key at the same index).
    """
    groups = _groups(a)
    va, vb = metric.compute(a), metric.compute(b)
    if va is None or vb is None:
        return {"diff": None, "ci_low": None, "ci_high": None, "p_value": None}
    diffs = []
    for row in resample_indices(len(groups), n_boot, seed):
        idx = [i for j in row for i in groups[j]]
        x, y = metric.compute([a[i] for i in idx]), metric.compute([b[i] for i in idx])
        if x is not None and y is not None:
            diffs.append(x - y)
    d = np.array(diffs)
    lo, hi = np.quantile(d, [0.025, 0.975]) if d.size else (None, None)
    # Two-sided: how often the resampled difference falls on the other side of zero, doubled.
    p = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0)))) if d.size else None
    return {
        "diff": va - vb,
        "ci_low": None if lo is None else float(lo),
        "ci_high": None if hi is None else float(hi),
        "p_value": p,
    }


UNPARSED = "(unparseable)"


def confusion(records: Sequence[Record]) -> tuple[list[str], list[str], list[list[int]]]:
    """(row labels = gold, column labels = answers incl. the unparseable column, counts)."""
    labels = sorted({r["gold"] for r in records if r["gold"]} | {r["parsed"] for r in records if r["parsed"]})
    index = {k: i for i, k in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for r in records:
        col = index.get(r["parsed"], len(labels)) if r["parsed"] is not None else len(labels)
        matrix[index[r["gold"]]][col] += 1
    return labels, labels + [UNPARSED], matrix
