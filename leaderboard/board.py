"""The ranked leaderboard: one table per task × data set × model, one row per run.

Columns: every score the task reports as a mean with a 95% interval (the task's main score first,
used for ranking), then cost (injection seconds, training tokens/s, footprint, wall seconds), the
run's date and commit, and a link to its result file.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leaderboard import extract
from leaderboard.paper import display, method_rank
from leaderboard.render import MISSING, Table, fmt_bytes, fmt_number, fmt_score

Result = dict[str, Any]

# The score columns of each known task, main score (the ranking key) first. Dotted names reach
# into nested scores; recommendation's r1..r4 are Recall@1 under each filter.
PREFERRED = {
    "batch": ("qa_f1", "acc"),
    "sequential": ("qa_f1", "efficacy.qa_f1", "retention_mean.qa_f1", "interference", "before.qa_f1", "acc"),
    "recommendation": ("r1", "r2", "r3", "r4", "recall@5_r1", "recall@10_r1"),
}
LABELS = {
    "qa_f1": "QA-F1",
    "efficacy.qa_f1": "efficacy QA-F1",
    "before.qa_f1": "QA-F1 before injection",
    "retention_mean.qa_f1": "retention QA-F1 (mean over distances ≥ 1)",
    "interference": "interference (lower is better)",
    "r1": "R@1 r1", "r2": "R@1 r2", "r3": "R@1 r3", "r4": "R@1 r4",
    "recall@5_r1": "R@5 r1", "recall@10_r1": "R@10 r1",
}
TASK_LABELS = {("sequential", "qa_f1"): "QA-F1 after the last step"}
MAX_SCORE_COLUMNS = 6


@dataclass
class Board:
    task: str
    dataset: str
    model: str
    runs: list[Result]
    metrics: list[str]

    @property
    def slug(self) -> str:
        from benchmark.results import safe_name

        return safe_name(f"{self.task}__{self.dataset}__{self.model}")

    @property
    def title(self) -> str:
        return f"{self.task} · {self.dataset} · {self.model}"


def metric_value(result: Result, name: str) -> dict[str, Any] | None:
    """A score column's value; recommendation columns r1..r4 also accept the task's other spellings."""
    if result.get("task") == "recommendation" and name in extract.RULES:
        return extract.recall(result, name)
    return extract.metric(result, name)


def board_metrics(task: str, runs: list[Result]) -> list[str]:
    """The score columns of one board: a known task's columns that some run has; for another
    task every top-level mean it reports."""
    if task in PREFERRED:
        return [m for m in PREFERRED[task] if any(metric_value(r, m) for r in runs)]
    present: dict[str, None] = {}
    for run in runs:
        for name in extract.summary_metrics(run):
            present[name] = None
    return sorted(present)[:MAX_SCORE_COLUMNS]


def label(task: str, name: str) -> str:
    return TASK_LABELS.get((task, name), LABELS.get(name, name))


def boards(results: list[Result]) -> list[Board]:
    groups: dict[tuple[str, str, str], list[Result]] = defaultdict(list)
    for r in results:
        groups[(str(r["task"]), str(r["dataset"]), str(r["model"]))].append(r)
    found = []
    for (task, dataset, model), runs in sorted(groups.items()):
        metrics = board_metrics(task, runs)
        found.append(Board(task, dataset, model, ranked(runs, metrics), metrics))
    return found


def ranked(runs: list[Result], metrics: list[str]) -> list[Result]:
    """Best main score first; runs without it last; ties in the paper's method order."""
    def key(r: Result) -> tuple:
        main = metric_value(r, metrics[0]) if metrics else None
        score = -main["mean"] if main else float("inf")
        return (score, method_rank(str(r["method"])), str(r.get("profile")), str(r.get("seed")),
                str(r.get("finished_at")), str(r.get("_path")))

    return sorted(runs, key=key)


def _commit(result: Result) -> str:
    commit = result.get("git_commit")
    if not isinstance(commit, str) or not commit:
        return MISSING
    return commit[:8] + ("-dirty" if commit.endswith("-dirty") else "")


def _date(result: Result) -> str:
    stamp = result.get("finished_at")
    return stamp[:10] if isinstance(stamp, str) and stamp else MISSING


def board_table(board: Board, link_from: Path | None = None) -> Table:
    """The board as a table; with ``link_from``, method names link to their result files."""
    headers = ["#", "method", "profile", "seed"]
    headers += [f"{label(board.task, m)} [95% CI]" for m in board.metrics]
    headers += ["inject s", "train tok/s", "footprint", "wall s", "date", "commit"]
    rows = []
    for rank, run in enumerate(board.runs, start=1):
        name = display(str(run["method"]))
        path = run.get("_path")
        if link_from is not None and path:
            rel = Path(os.path.relpath(Path(path).resolve(), link_from.resolve())).as_posix()
            name = f"[{name}]({rel})"
        row = [str(rank), name, str(run.get("profile", MISSING)), str(run.get("seed", MISSING))]
        row += [fmt_score(metric_value(run, m)) for m in board.metrics]
        row += [
            fmt_number(extract.cost(run, "inject_s")),
            fmt_number(extract.train_rate(run), 0) + (" †" if extract.rate_counts_computed_tokens_only(run) else ""),
            fmt_bytes(extract.cost(run, "footprint_bytes")),
            fmt_number(extract.cost(run, "wall_s")),
            _date(run),
            _commit(run),
        ]
        rows.append(row)
    return Table(board.title, headers, rows)
