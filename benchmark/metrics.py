"""QA metrics (SQuAD token F1, the official code's "acc"), bootstrap intervals, paired differences
and the smallest paired difference detectable at a given size."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)  # a scored unit's key (a tuple of ids in result files)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token-level F1 between one prediction and one gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, golds: Iterable[str]) -> float:
    """Best F1 over the accepted answers."""
    return max(token_f1(prediction, g) for g in golds)


def qa_acc(prediction: str, golds: Iterable[str]) -> float:
    """The official code's accuracy: some normalised gold answer occurs in the normalised prediction."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) and normalize_answer(g) in pred for g in golds))


def exact_match(prediction: str, golds: Iterable[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; a single value gives a zero-width interval."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (float("nan"), float("nan"))
    if data.size == 1:
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return (float(low), float(high))


def summarize(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Mean with its bootstrap 95% interval, as stored in result files."""
    low, high = bootstrap_ci(values, seed=seed)
    mean = float(np.mean(values)) if len(values) else float("nan")
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": len(values)}


def cluster_summary(
    values: Mapping[K, float],
    cluster: Callable[[K], Hashable] | None = None,
    seed: int = 0,
    n_resamples: int = 1000,
    level: float = 0.95,
) -> dict[str, float]:
    """Mean over units with a percentile bootstrap interval that resamples whole clusters of units.

    Units that share a model state (the contexts of one sequence) are not independent, so a cluster
    is drawn with all its units; by default every unit is its own cluster. Units are taken in key
    order, so the interval does not depend on the order a file listed them in.
    """
    groups: dict[Hashable, list[float]] = {}
    for key in sorted(values, key=repr):
        groups.setdefault(key if cluster is None else cluster(key), []).append(float(values[key]))
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    sums = np.array([sum(g) for g in groups.values()])
    counts = np.array([len(g) for g in groups.values()])
    mean = float(sums.sum() / n)
    if len(groups) == 1:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": n}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(n_resamples, len(groups)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high), "n": n}


def paired_difference(
    a: Mapping[K, float],
    b: Mapping[K, float],
    cluster: Callable[[K], Hashable] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of B minus A over the units both scored, with its paired bootstrap 95% interval.

    Resampling the per-unit differences cancels what the units themselves contribute (an easy
    context is easy for both runs), so the interval is far tighter than two unpaired ones.
    """
    return cluster_summary(unit_differences(a, b), cluster, seed=seed)


def unit_differences(a: Mapping[K, float], b: Mapping[K, float]) -> dict[K, float]:
    """B minus A on each unit both scored: what ``paired_difference`` resamples."""
    return {k: float(b[k]) - float(a[k]) for k in a.keys() & b.keys()}


def detectable_difference(
    differences: Mapping[K, float] | Sequence[float],
    cluster: Callable[[K], Hashable] | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """Minimum detectable difference (MDE) of the paired comparison at this size: (z_{1-alpha/2} +
    z_{power}) × SE, the normal approximation for a two-sided test at level ``alpha`` (default 0.05)
    with power ``power`` (default 0.8), i.e. 2.80 × SE.

    It answers the planning question "how large must a true gain be for a paired comparison on this
    many contexts to find it 80% of the time?": a paired interval that contains 0 only says
    something when the MDE is small, and researchers choose the number of contexts from it (the SE,
    so the MDE, shrinks as 1/sqrt(n)).

    ``differences`` are the per-unit differences B − A that ``paired_difference`` resamples (a
    mapping as ``unit_differences`` gives, grouped by ``cluster`` as there; a plain sequence is one
    unit per value). SE is the standard error of their mean over the independent clusters: with one
    unit per cluster (batch contexts, the default) it is the sample standard deviation (ddof=1)
    over sqrt(n); with clusters (sequential: the contexts of one sequence) it is the linearised SE of
    the ratio mean sum/count that the cluster bootstrap draws, sqrt(G/(G-1) · Σ_g (s_g − mean·c_g)²) / n
    over G clusters with sums s_g and counts c_g, which is the sample SD of the cluster means over
    sqrt(G) when clusters are equal in size.

    Fewer than two clusters leave no spread to estimate: the result is nan (not an error), so a
    table over many runs shows the cell as not estimable instead of stopping.
    """
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie strictly between 0 and 1 (got {alpha}, {power})")
    # A plain sequence is keyed by position (and then has no cluster function).
    units: Mapping[Any, float] = differences if isinstance(differences, Mapping) else dict(enumerate(differences))
    groups: dict[Hashable, list[float]] = {}
    for key in units:
        groups.setdefault(key if cluster is None else cluster(key), []).append(float(units[key]))
    if len(groups) < 2:
        return float("nan")
    sums = np.array([sum(g) for g in groups.values()])
    counts = np.array([len(g) for g in groups.values()], dtype=float)
    n, clusters = counts.sum(), len(groups)
    mean = sums.sum() / n
    se = math.sqrt(clusters / (clusters - 1) * float(np.sum((sums - mean * counts) ** 2))) / n
    z = NormalDist().inv_cdf
    return float((z(1 - alpha / 2) + z(power)) * se)
