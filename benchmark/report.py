"""Small text renderings of scores for the terminal."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate


def fmt_ci(score: dict[str, Any], digits: int = 4) -> str:
    """``0.5043 [0.4810, 0.5290]``: a mean with its 95% interval."""
    return f"{score['mean']:.{digits}f} [{score['ci_low']:.{digits}f}, {score['ci_high']:.{digits}f}]"


SCORE_KEYS = ("qa_f1", "acc", "retrieval_recall@1", "retrieval_recall@k")  # the last two: retrievers only


def score_table(scores: dict[str, Any], keys: tuple[str, ...] = SCORE_KEYS) -> str:
    rows = [(key, fmt_ci(scores[key]), scores[key]["n"]) for key in keys if key in scores]
    return tabulate(rows, headers=("metric", "mean [95% CI]", "n"), tablefmt="github")
