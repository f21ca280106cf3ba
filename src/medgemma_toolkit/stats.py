"""The toolkit's statistics, written once: answer normalisation, token F1, and 95% intervals.

Used by the evaluation harness (`eval/metrics.py`, per-item records) and by fine-tuning's before/after scores
(`train/evaluate.py`, plain lists), so both report the same numbers for the same answers.

Proportions get the Wilson score interval (it stays inside [0, 1] and keeps a width at 0% and 100%, where a
bootstrap collapses to a point); means get a seeded percentile bootstrap that resamples *groups* (an item with
several questions is one draw), so correlated questions do not shrink the interval.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and articles, squeeze spaces (SQuAD-style, as VQA F1 is usually computed)."""
    return " ".join(_ARTICLES.sub(" ", s.lower().translate(_PUNCT)).split())


def token_f1(prediction: str | None, reference: str) -> float:
    """Bag-of-tokens F1 between normalized answers; no answer (None) scores 0."""
    if prediction is None:
        return 0.0
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); 0/n gives [0, >0], n/n gives [<1, 1]."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def resample_indices(n_groups: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """`n_boot` rows of `n_groups` group indices drawn with replacement (fixed seed: reproducible)."""
    return np.random.default_rng(seed).integers(0, n_groups, size=(n_boot, n_groups))


def percentile_interval(stats: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """The central `level` interval of bootstrap statistics; (None, None) when there are none."""
    arr = np.asarray(stats, dtype=float)
    if arr.size == 0:
        return (None, None)
    a = (1 - level) / 2
    lo, hi = np.quantile(arr, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ratio(
    sums: Sequence[float], counts: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float | None, float | None]:
    """Percentile bootstrap of sum(values) / count(values), resampling groups given by their (sum, count).

    A mean over items is the case count = 1 per item; resamples that draw only empty groups are dropped."""
    if len(sums) < 2:
        return (None, None)
    draws = resample_indices(len(sums), n_boot, seed)
    s, n = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    tot_n = n[draws].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = s[draws].sum(axis=1) / tot_n
    return percentile_interval(stats[tot_n > 0], level)


def bootstrap_statistic(
    n_groups: int,
    statistic: Callable[[list[int]], float | None],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap of any statistic of a resample, given as the list of drawn group indices."""
    if n_groups < 2:
        return (None, None)
    out = [v for row in resample_indices(n_groups, n_boot, seed) if (v := statistic(row.tolist())) is not None]
    return percentile_interval(out, level)


def bootstrap_mean(
    values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean of independent values."""
    return bootstrap_ratio(list(values), [1.0] * len(values), n_boot, seed, level)
