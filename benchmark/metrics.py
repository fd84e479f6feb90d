"""QA metrics (SQuAD token F1, the official code's "acc"), bootstrap intervals and paired differences."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

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
    values: Mapping[Hashable, float], cluster: Callable[[Hashable], Hashable] | None = None,
    seed: int = 0, n_resamples: int = 1000, level: float = 0.95,
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
    a: Mapping[Hashable, float], b: Mapping[Hashable, float],
    cluster: Callable[[Hashable], Hashable] | None = None, seed: int = 0,
) -> dict[str, float]:
    """Mean of B minus A over the units both scored, with its paired bootstrap 95% interval.

    Resampling the per-unit differences cancels what the units themselves contribute (an easy
    context is easy for both runs), so the interval is far tighter than two unpaired ones.
    """
    return cluster_summary({k: b[k] - a[k] for k in a.keys() & b.keys()}, cluster, seed=seed)
