"""The ranked leaderboard: one table per task × data set × model, one row per method and setting.

Runs that differ only by seed share a row (its scores bootstrap each context's answers under every
seed together). Columns: tied rank, every score the task declares as a leaderboard column, as a mean
with a 95% interval (the primary score first, used for ranking, then its paired difference against
the floor method), cost (injection seconds, training tokens/s, footprint, wall seconds; means over
seeds), the latest run's date, every commit the row's runs came from, and a link to the result file.
Runs on a split other than the scored one (dev) get boards of their own, titled with the split.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.method_info import MethodInfo
from benchmark.results import safe_name
from benchmark.schema import upgrade_all
from benchmark.task_info import TaskInfo
from leaderboard import extract, meta
from leaderboard.render import MISSING, Table, fmt_bytes, fmt_number, fmt_score

Result = dict[str, Any]
Summary = dict[str, Any]


@dataclass
class Row:
    """One method under one configuration on a board: its runs, one per seed, pooled into one row."""

    runs: list[Result]

    @property
    def first(self) -> Result:
        return self.runs[0]

    def score(self, metric: str) -> Summary | None:
        """The score over the row's seeds: one run's own, or contexts × seeds bootstrapped together."""
        return extract.seeds_summary(
            self.runs, lambda r: extract.metric(r, metric), lambda runs: extract.pooled_units(runs, metric)
        )

    def curve(self, metric: str) -> list[float | None] | None:
        """The mean of ``metric`` after each step, averaged over the seeds that have the step."""
        curves = [c for c in (extract.step_curve(r, metric) for r in self.runs) if c]
        if not curves:
            return None
        steps = [
            [v for v in (c[i] for c in curves if i < len(c)) if v is not None]
            for i in range(max(len(c) for c in curves))
        ]
        return [sum(v) / len(v) if v else None for v in steps]


@dataclass
class Board:
    task: str
    dataset: str
    model: str
    rows: list[Row]
    metrics: list[str]
    task_info: TaskInfo  # what the runs say of their task (see meta.by_task)
    deltas: list[Summary | None] = field(default_factory=list)  # main score minus the floor's, per row
    ranks: list[int | None] = field(default_factory=list)  # tied ranks, per row
    methods: dict[str, MethodInfo] = field(default_factory=dict)  # what the runs say of each method
    scope: str = ""  # e.g. "50 contexts": set when runs of one task × data set × model were scored apart
    split: str = ""  # the runs' split when it is not the scored one (e.g. "dev")

    def heading(self, metric: str) -> str:
        """A score column's heading: the task's label for it."""
        return self.task_info.metric(metric).heading

    def info(self, row: Row) -> MethodInfo:
        name = str(row.first["method"])
        return self.methods.get(name) or meta.of_result(row.first)

    def display(self, row: Row) -> str:
        """The method's display name, with the run's variant settings when it has any."""
        name, label = self.info(row).row_name, extract.variant_label(row.first)
        return f"{name} ({label})" if label else name

    @property
    def floor_name(self) -> str:
        return meta.floor_name(self.methods.values())

    @property
    def slug(self) -> str:
        split = f"__{self.split}" if self.split else ""
        scope = f"__{self.scope.replace(' ', '-')}" if self.scope else ""
        return safe_name(f"{self.task}__{self.dataset}__{self.model}{split}{scope}")

    @property
    def where(self) -> str:
        """Data set, model, the split unless it is the scored one, and, when a cell has several sets
        of questions, the board's (its ``scope``)."""
        split = f"{self.split} split" if self.split else ""
        return " · ".join(part for part in (self.dataset, self.model, split, self.scope) if part)

    @property
    def title(self) -> str:
        return f"{self.task} · {self.where}"


def board_metrics(task: TaskInfo, runs: list[Result]) -> list[str]:
    """The score columns of one board: the task's leaderboard columns that some run has."""
    return [m for m in task.board_metrics if any(extract.metric(r, m) for r in runs)]


def boards(results: list[Result]) -> list[Board]:
    """One board per task × data set × model × split (the scored split first, the others titled
    with theirs, so a tuning run's score is never read as a test score), and within it per set of
    questions scored: runs on 20 contexts and runs on 50 cannot be paired or ranked together, so each
    set gets its own board, titled with its size (in the units a bootstrap draws), largest first."""
    groups: dict[tuple[str, str, str, str], list[Result]] = defaultdict(list)
    for r in upgrade_all(results):
        split = "" if extract.on_scored_split(r) else extract.split(r)
        groups[(str(r["task"]), str(r["dataset"]), str(r["model"]), split)].append(r)
    found = []
    for (task, dataset, model, split), runs in sorted(groups.items()):
        info = meta.by_task(runs)
        parts = scored_sets(runs, info)
        scopes: list[str] = []
        for size, part in parts:
            scope = f"{size} {info.resampled_unit}" if len(parts) > 1 else ""
            if scope in scopes:  # two sets of one size: number the later ones
                scope += f", set {sum(s.startswith(scope) for s in scopes) + 1}"
            scopes.append(scope)
            found.append(make_board(task, dataset, model, part, info, scope, split))
    return found


def scored_sets(runs: list[Result], info: TaskInfo) -> list[tuple[int, list[Result]]]:
    """The runs grouped by the questions they were scored on (seeds aside), the largest set first,
    each with its number of resampled units. Runs that record no questions join the largest set
    (they pair with none)."""
    by_questions: dict[frozenset[tuple[str, ...]], list[Result]] = defaultdict(list)
    for run in runs:
        by_questions[frozenset(probe[1:] for probe in extract.probes(run))].append(run)
    unrecorded = by_questions.pop(frozenset(), [])
    unit = extract.cluster(info)  # over (seed, episode, unit, item): a seed placeholder goes first

    def size(questions: frozenset[tuple[str, ...]]) -> int:
        return len({unit(("", *q)) for q in questions})

    sized = sorted(((size(q), sorted(q), part) for q, part in by_questions.items()), key=lambda x: (-x[0], x[1]))
    if not sized:
        return [(0, unrecorded)]
    parts = [(size, part) for size, _, part in sized]
    parts[0] = (parts[0][0], parts[0][1] + unrecorded)
    return parts


def make_board(
    task: str, dataset: str, model: str, runs: list[Result], info: TaskInfo, scope: str, split: str = ""
) -> Board:
    metrics = board_metrics(info, runs)
    infos = meta.by_method(runs)
    rows = ranked(seed_rows(runs), metrics, infos, info)
    main = metrics[0] if metrics else ""
    deltas, ranks = floor_deltas(rows, main, infos), tie_ranks(rows, main)
    return Board(task, dataset, model, rows, metrics, info, deltas, ranks, infos, scope, split)


def seed_rows(runs: list[Result]) -> list[Row]:
    """Runs of one method that differ only by seed share a row; a seed run again under the same
    settings (a rerun) goes to a row of its own rather than being averaged with itself."""
    groups: dict[tuple[str, str, str], list[list[Result]]] = defaultdict(list)
    for run in runs:
        same = groups[(str(run["method"]), str(run.get("profile")), extract.config_without_seed(run))]
        free = next((g for g in same if all(r.get("seed") != run.get("seed") for r in g)), None)
        if free is None:
            same.append([run])
        else:
            free.append(run)
    seed = lambda r: (extract.number(r.get("seed")) or 0.0, str(r.get("seed")))  # noqa: E731
    return [Row(sorted(g, key=seed)) for same in groups.values() for g in same]


def ranked(rows: list[Row], metrics: list[str], infos: dict[str, MethodInfo], task: TaskInfo) -> list[Row]:
    """Best main score first (the highest, or the lowest where lower is better); rows without it
    last; ties in the methods' row order."""
    sign = -1.0 if not metrics or task.metric(metrics[0]).higher_is_better is not False else 1.0

    def key(row: Row) -> tuple[Any, ...]:
        main = row.score(metrics[0]) if metrics else None
        run = row.first
        return (
            sign * main["mean"] if main else float("inf"),
            infos[str(run["method"])].rank,
            str(run.get("profile")),
            len(row.runs),
            str(run.get("seed")),
            str(run.get("finished_at")),
            str(run.get("_path")),
        )

    return sorted(rows, key=key)


def floor_deltas(rows: list[Row], metric: str, infos: dict[str, MethodInfo]) -> list[Summary | None]:
    """Each row's main score minus the floor method's on the same contexts and seeds (paired)."""
    floors = floor_rows(rows, infos)
    deltas = []
    for row in rows:
        pairs = (extract.paired(floor.runs, row.runs, metric) for floor in floors)
        deltas.append(next((d for d in pairs if d is not None), None))
    return deltas


def floor_rows(rows: list[Row], infos: dict[str, MethodInfo]) -> list[Row]:
    """The rows of the method(s) whose role is "floor"."""
    return [row for row in rows if infos[str(row.first["method"])].role == "floor"]


def tie_ranks(rows: list[Row], metric: str) -> list[int | None]:
    """Ranks in which methods tie unless the paired interval of their difference excludes 0.

    Rows come best first. A row starts the next rank only when its paired difference against the
    first row of the current rank excludes 0; a row that cannot be paired with it (other contexts,
    no per-unit scores) gets no rank.
    """
    ranks: list[int | None] = []
    top, rank = None, 0
    for row in rows:
        if row.score(metric) is None or extract.pooled_units(row.runs, metric) is None:
            ranks.append(None)
            continue
        if top is None:
            top, rank = row, 1
        else:
            diff = extract.paired(top.runs, row.runs, metric)
            if diff is None:
                ranks.append(None)
                continue
            if diff["ci_low"] > 0 or diff["ci_high"] < 0:
                top, rank = row, rank + 1
        ranks.append(rank)
    return ranks


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _commit(row: Row) -> str:
    """Every commit the row's runs came from (short, sorted), so a row pooling seeds run at
    different commits shows it; "—" stands for a run that recorded none."""
    return ", ".join(sorted({_short_commit(r.get("git_commit")) for r in row.runs}))


def _short_commit(commit: Any) -> str:
    if not isinstance(commit, str) or not commit:
        return MISSING
    return commit[:8] + ("-dirty" if commit.endswith("-dirty") else "")


def _latest(row: Row) -> Result:
    return max(row.runs, key=lambda r: (str(r.get("finished_at")), str(r.get("_path"))))


def _date(row: Row) -> str:
    stamp = _latest(row).get("finished_at")
    return stamp[:10] if isinstance(stamp, str) and stamp else MISSING


FEW_UNITS = 10  # below this many resampled units a percentile bootstrap's 95% interval is too narrow


def few_units_note(board: Board, main_scores: list[Summary | None]) -> list[str]:
    """A note under a board whose bootstrap intervals (of its rows' ``main_scores``) rest on fewer
    than ``FEW_UNITS`` units (e.g. 4 sequences): such an interval covers less than 95%, and a tie
    there says little either way. Seed ranges are not bootstraps and do not count."""
    counts = [
        s["n"] for s in main_scores if s and isinstance(s.get("n"), int) and s.get("interval") != extract.SEED_RANGE
    ]
    if not counts or min(counts) >= FEW_UNITS:
        return []
    fewest = min(counts)
    return [
        f"Few units: the intervals on this board resample {fewest} {board.task_info.resampled_unit}"
        f"{'' if fewest == max(counts) else ' or more'}. A percentile bootstrap over fewer than {FEW_UNITS} "
        "units covers less than 95%, so an interval that excludes 0 is weak evidence, and one that "
        "contains it means little either way."
    ]


def _devices(runs: list[Result]) -> list[str]:
    """The devices ``runs`` measured their costs on, sorted; "—" for files that recorded none."""
    return sorted({extract.device(r) or MISSING for r in runs})


def mixed_devices_note(board: Board) -> list[str]:
    """A note under a board whose cost columns come from more than one device (or from files that
    do not say which): seconds and rates compare only between runs of one device."""
    devices = _devices([r for row in board.rows for r in row.runs])
    if len(devices) < 2:
        return []
    return [
        f"Mixed devices: this board's costs were measured on {len(devices)} devices ({'; '.join(devices)}). "
        "Compare seconds and rates only between rows of the same device (and day: a CPU's speed drifts)."
    ]


def board_table(board: Board, link_from: Path | None = None) -> Table:
    """The board as a table; with ``link_from``, method names link to their (first seed's) result file."""
    main = board.metrics[:1]
    headers = ["#", "rank", "method", "profile", "seeds"]
    headers += [f"{board.heading(m)} [95% CI]" for m in main]
    headers += [f"Δ vs {board.floor_name} [95% CI]"] if main else []
    headers += [f"{board.heading(m)} [95% CI]" for m in board.metrics[1:]]
    headers += ["inject s", "train tok/s", "footprint", "wall s", "device", "date", "commit"]
    rows = []
    main_scores: list[Summary | None] = []
    for position, (row, delta, rank) in enumerate(zip(board.rows, board.deltas, board.ranks), start=1):
        name = board.display(row)
        path = row.first.get("_path")
        if link_from is not None and path:
            rel = Path(os.path.relpath(Path(path).resolve(), link_from.resolve())).as_posix()
            name = f"[{name}]({rel})"
        cells = [
            str(position),
            MISSING if rank is None else str(rank),
            name,
            str(row.first.get("profile", MISSING)),
            str(len(row.runs)),
        ]
        summaries = [row.score(m) for m in board.metrics]
        main_scores += summaries[:1]
        scores = [fmt_score(summary) for summary in summaries]
        cells += scores[:1] + ([fmt_score(delta)] if main else []) + scores[1:]
        cells += [
            fmt_number(_mean([extract.cost(r, "inject_s") for r in row.runs])),
            fmt_number(_mean([extract.train_rate(r) for r in row.runs]), 0)
            + (" †" if any(extract.rate_counts_computed_tokens_only(r) for r in row.runs) else ""),
            fmt_bytes(_mean([extract.cost(r, "footprint_bytes") for r in row.runs])),
            fmt_number(_mean([extract.cost(r, "wall_s") for r in row.runs])),
            ", ".join(_devices(row.runs)),
            _date(row),
            _commit(row),
        ]
        rows.append(cells)
    notes = meta.stand_in_notes(board.info(row) for row in board.rows) + few_units_note(board, main_scores)
    notes += mixed_devices_note(board)
    return Table(board.title, headers, rows, notes)
