"""PNG figures for the leaderboard: scores with their intervals, and retention curves.

Figures are byte-for-byte reproducible: the Agg backend, matplotlib's default style (not the
user's matplotlibrc), fixed size and resolution, and no "Software" metadata in the PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.typing import RcKeyType  # noqa: E402

from leaderboard.board import Board, Row  # noqa: E402

_RC: dict[RcKeyType, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def _label(row: Row, board: Board) -> str:
    """The method's name, with profile and seeds when the board has several rows of it."""
    run = row.first
    name = board.display(row)
    if sum(1 for r in board.rows if r.first["method"] == run["method"]) > 1:
        seeds = ",".join(str(r.get("seed")) for r in row.runs)
        name += f" ({run.get('profile')}, seed{'s' if len(row.runs) > 1 else ''} {seeds})"
    return name


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def scores_plot(board: Board, path: Path) -> bool:
    """Horizontal bars of the board's main score with 95% intervals; False if nothing to draw."""
    if not board.metrics:
        return False
    metric = board.metrics[0]
    points = [(r, s) for r in board.rows if (s := r.score(metric)) is not None]
    if not points:
        return False
    with plt.style.context("default"), matplotlib.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(points) + 1.2))
        # a bar whose interval is only the range of its seeds' means says so
        labels = [_label(r, board) + (f" [{s['interval']}]" if s.get("interval") else "") for r, s in points][::-1]
        means = [s["mean"] for _, s in points][::-1]
        lows = [s["mean"] - s["ci_low"] if s.get("ci_low") is not None else 0.0 for _, s in points][::-1]
        highs = [s["ci_high"] - s["mean"] if s.get("ci_high") is not None else 0.0 for _, s in points][::-1]
        ax.barh(range(len(points)), means, xerr=[lows, highs], color="#4C72B0", capsize=3)
        ax.set_yticks(range(len(points)), labels)
        ax.set_xlabel(f"{board.heading(metric)} (mean, 95% CI)")
        ax.set_xlim(0, max(1.0, max(m + h for m, h in zip(means, highs))))
        ax.set_title(board.title)
        fig.tight_layout()
        _save(fig, path)
    return True


def retention_plot(board: Board, path: Path) -> bool:
    """The task's (first) per-step score after each step, one line per row; False when no row has
    per-step scores."""
    if not board.task_info.curves:
        return False
    metric = board.task_info.metric(board.task_info.curves[0])
    curves = [(r, c) for r in board.rows if (c := r.curve(metric.name))]
    if not curves:
        return False
    with plt.style.context("default"), matplotlib.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for row, curve in curves:
            steps = [i for i, v in enumerate(curve) if v is not None]
            ax.plot(steps, [v for v in curve if v is not None], marker="o", markersize=3, label=_label(row, board))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step (contexts injected so far)")
        ax.set_ylabel(f"{metric.short} over the sequence's contexts")
        ax.set_ylim(0, 1)
        ax.set_title(f"retention · {board.where}")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        _save(fig, path)
    return True
