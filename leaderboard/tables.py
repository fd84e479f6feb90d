"""The paper's four tables, rebuilt from result files.

1. Batch injection: QA-F1 by model × number of contexts, with the storage class S beside the
   measured footprint in bytes.
2. Conversational recommendation: Recall@1 under r1..r4 for INSPIRED and REDIAL.
3. Sequential injection: mean QA-F1 after each step 0..L.
4. Target-sentence generator ablation: QA-F1 of the methods that train on target sentences, by
   generator.

Which results fill which table, and with which scores, each task declares (``paper_table`` and
``paper_metrics``, see ``benchmark.task_info``); tables 1 and 4 show the results of a task that
declares table 1. Data sets and models are in name order. A cell without a result shows "—".

Only runs on the scored split (``test``) fill the tables: a tuning run on ``dev`` never stands in for
a test score, and a table whose runs include some on other splits says how many it left out. Runs
that differ only in seed are pooled into one cell, marked "(N seeds)": the interval bootstraps each
context (or sequence, test point) with its answers under every seed together (see
``extract.seeds_summary``). Of several configurations for one cell (other settings, the seed aside)
the most recent one is shown, marked "‡", and the table's notes name its settings that differ from
the others'.

With ``paper``, Table 1 gets a "paper" column (the published value of the paper's row for the method,
found through the labels the method declares in ``paper_rows``, where model, data set and number of
contexts match), and Tables 1, 2 and 4 are followed by the paper's own table as published
(``leaderboard.paper``): its row labels, columns and numbers, at the paper's scale.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from benchmark.method_info import MethodInfo
from benchmark.schema import upgrade_all
from benchmark.task_info import TaskInfo
from leaderboard import extract, meta
from leaderboard.paper import (
    PAPER_TABLE1,
    PAPER_TABLE1_DATASET,
    PAPER_TABLE1_STORAGE,
    PAPER_TABLE2,
    PAPER_TABLE4,
    Published,
    paper_model,
    paper_row,
)
from leaderboard.render import MISSING, Table, fmt_bytes, fmt_score

Result = dict[str, Any]
TABLE_IDS = ("1", "2", "3", "4")


def _groups(
    results: list[Result], key: Callable[[Result], Any]
) -> Iterator[tuple[Any, list[Result], list[Result], TaskInfo]]:
    """The groups of ``results`` by ``key`` (a tuple), in key order, that make a table: (key, every run
    of the group, those on the scored split, their task). A group without scored runs, or whose task
    declares no ``paper_columns``, makes none."""
    groups: dict[Any, list[Result]] = defaultdict(list)
    for r in results:
        groups[key(r)].append(r)
    for group, every in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        runs = _scored(every)
        task = meta.by_task(runs) if runs else None
        if task is not None and task.paper_columns:
            yield group, every, runs, task


def _methods(results: list[Result]) -> list[MethodInfo]:
    """The methods of these results, in row order."""
    return meta.ordered(meta.by_method(results).values())


def _of(results: list[Result], **match: Any) -> list[Result]:
    return [r for r in results if all(r.get(k) == v for k, v in match.items())]


def _filling(results: list[Result], table: str) -> list[Result]:
    """The results of tasks that fill the paper's table ``table``, on any split (each table keeps
    those on the scored split, ``_scored``, and notes the others, ``_split_notes``)."""
    return [r for r in upgrade_all(results) if meta.task_of(r).paper_table == table]


def _score(name: str) -> Callable[[Result], Any]:
    return lambda r: extract.metric(r, name)


def _pooled(shown: list[Result], value: Callable[[Result], Any], metric: str, step: int = -1) -> extract.Summary | None:
    """The score over a cell's shown seeds, bootstrapping the seeds' per-unit ``metric`` scores together."""
    return extract.pooled(shown, value, lambda runs: extract.pooled_units(runs, metric, step))


CHOSEN_MARK = "‡"  # a cell that shows one of several configurations


class Cells:
    """Formats one table's score cells and notes each cell that chose among configurations."""

    def __init__(self, ci: bool) -> None:
        self.ci = ci
        self.notes: list[str] = []

    def score(
        self,
        cell: list[Result],
        value: Callable[[Result], Any],
        metric: str,
        where: str,
        step: int = -1,
        digits: int = 4,
    ) -> str:
        """The cell's pooled score, marked when it chose a configuration (``where`` names the cell
        in the note)."""
        shown, which = extract.chosen(cell, value)
        text = fmt_score(_pooled(shown, value, metric, step), self.ci, digits)
        if which and text != MISSING:
            text += f" {CHOSEN_MARK}"
            self.notes.append(f"{CHOSEN_MARK} {where}: {which}.")
        return text

    def note_lines(self) -> list[str]:
        return list(dict.fromkeys(self.notes))


def _scored(runs: list[Result]) -> list[Result]:
    """The runs on the scored split: what the paper's tables show."""
    return [r for r in runs if extract.on_scored_split(r)]


def _split_notes(runs: list[Result]) -> list[str]:
    """Says how many of a table's runs were left out for being on another split, if any."""
    others = [extract.split(r) for r in runs if not extract.on_scored_split(r)]
    if not others:
        return []
    splits = ", ".join(sorted(set(others)))
    return [
        f"{extract.SCORED_SPLIT.capitalize()} split only: {len(others)} run(s) on the {splits} split "
        "left out (the leaderboard shows them on boards of their own)."
    ]


def _footprint(r: Result) -> extract.Summary | None:
    return extract.as_summary(extract.cost(r, "footprint_bytes"))


# ---- Table 1 ------------------------------------------------------------------------------------
def table1(results: list[Result], ci: bool = False, paper: bool = False) -> list[Table]:
    batch = [r for r in _filling(results, "1") if extract.num_contexts(r) is not None]
    tables = []
    key = lambda r: (r["task"], r["dataset"], r.get("profile"))  # noqa: E731
    for (_, dataset, profile), every, runs, task in _groups(batch, key):
        main = task.metric(task.paper_columns[0])
        cells = Cells(ci)
        columns = sorted({(str(r["model"]), extract.num_contexts(r)) for r in runs})
        compared = {c for c in columns if paper and _comparable(dataset, *c)}
        headers = ["Method", "S"]
        for model, n in columns:
            headers += [f"{model} · {n} {main.short}", "S bytes"] + (["paper"] if (model, n) in compared else [])
        rows = []
        for info in _methods(runs):
            method = info.name
            row = [info.row_name, info.storage_class or MISSING]
            for model, n in columns:
                cell = [
                    r for r in runs if r["method"] == method and r["model"] == model and extract.num_contexts(r) == n
                ]
                shown, _ = extract.chosen(cell, _score(main.name))
                footprint = extract.seeds_summary(shown, _footprint)  # of the runs whose score the cell shows
                row += [
                    cells.score(cell, _score(main.name), main.name, f"{info.row_name}, {model} · {n}"),
                    fmt_bytes(footprint["mean"] if footprint else None),
                ]
                if (model, n) in compared:
                    row.append(_paper_cell(dataset, model, n, info))
            rows.append(row)
        notes = [
            "S: storage class in the number n of injected contexts; S bytes: the measured "
            "footprint (extra state the method keeps). — = no result."
        ]
        notes += meta.stand_in_notes(_methods(runs)) + cells.note_lines() + _split_notes(every)
        if compared:
            notes.append(
                f"paper: the published QA-F1 (Table 1, {PAPER_TABLE1_DATASET}) of the paper's row for "
                "the method (the labels it declares in paper_rows) where the model, data set and number "
                "of contexts match; — = the paper reports none."
            )
        tables.append(
            Table(f"Table 1 — {task.display_name}, {main.short} ({dataset}, profile {profile})", headers, rows, notes)
        )
    return tables


def _comparable(dataset: str, model: str, n: int | None) -> bool:
    """Whether the paper's Table 1 has this data set, model and number of contexts."""
    name = paper_model(model)
    return dataset == PAPER_TABLE1_DATASET and name is not None and n is not None and (name, n) in PAPER_TABLE1.columns


def _paper_cell(dataset: str, model: str, n: int | None, info: MethodInfo) -> str:
    """The paper's Table 1 value for the method's row (by its ``paper_rows``) in this column."""
    name, label = paper_model(model), paper_row(PAPER_TABLE1, info.paper_rows)
    if dataset != PAPER_TABLE1_DATASET or name is None or n is None or label is None:
        return MISSING
    return _published_value(PAPER_TABLE1.value(label, (name, n)))


# ---- the paper's tables as published --------------------------------------------------------------
PUBLISHED_NOTE = (
    "The paper's own numbers (Wang et al., ICLR 2025), transcribed, at the paper's scale (its models, "
    "data and numbers of contexts), not results of this harness; rows and columns as the paper prints "
    "them. — = not reported."
)


def _published_value(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def _published(table: Published, notes: tuple[str, ...] = (), storage: dict[str, str | None] | None = None) -> Table:
    """One of the paper's tables as it prints it; ``storage``, by row label, adds its column S."""
    headers = [table.label, *table.headers()] + (["S"] if storage is not None else [])
    rows = []
    for label, values in table.rows.items():
        row = [label, *(_published_value(v) for v in values)]
        if storage is not None:
            row.append(storage.get(label) or MISSING)
        rows.append(row)
    return Table(f"Table {table.number} as published — {table.caption}", headers, rows, [PUBLISHED_NOTE, *notes])


def paper_table1() -> Table:
    """The paper's Table 1 (batch injection, PwC, QA-F1) as published, with its storage column S."""
    return _published(
        PAPER_TABLE1,
        ("S: the storage a method keeps in the number n of contexts, as the paper prints it.",),
        PAPER_TABLE1_STORAGE,
    )


def paper_table2() -> Table:
    """The paper's Table 2 (conversational recommendation, Recall@1, Mistral-7B) as published."""
    return _published(
        PAPER_TABLE2,
        notes=("r1: no filtering; r2: seen items filtered; r3: out-of-vocabulary items filtered; r4: both.",),
    )


def paper_table4() -> Table:
    """The paper's Table 4 (the target-sentence generator ablation, batch QA-F1) as published."""
    return _published(PAPER_TABLE4)


PUBLISHED_TABLES: dict[str, Callable[[], Table]] = {"1": paper_table1, "2": paper_table2, "4": paper_table4}


# ---- Table 2 ------------------------------------------------------------------------------------
def table2(results: list[Result], ci: bool = False) -> list[Table]:
    tables = []
    key = lambda r: (r["task"], r["model"], r.get("profile"))  # noqa: E731
    for (_, model, profile), every, runs, task in _groups(_filling(results, "2"), key):
        scores = [task.metric(name) for name in task.paper_columns]
        cells = Cells(ci)
        datasets = sorted({str(r["dataset"]) for r in runs})
        headers = ["Method"] + [f"{d.upper()} {score.short}" for d in datasets for score in scores]
        rows = []
        for info in _methods(runs):
            row = [info.row_name]
            for dataset in datasets:
                cell = _of(runs, method=info.name, dataset=dataset)
                for score in scores:
                    where = f"{info.row_name}, {dataset.upper()}"  # one note for all its scores
                    row.append(cells.score(cell, _score(score.name), score.name, where))
            rows.append(row)
        notes = [
            "Recall@1. r1: no filter; r2: items already mentioned in the dialog dropped; "
            "r3: matches at edit distance > 2 dropped; r4: both. — = no result.",
            *meta.stand_in_notes(_methods(runs)),
            *cells.note_lines(),
            *_split_notes(every),
        ]
        tables.append(
            Table(f"Table 2 — {task.display_name}, Recall@1 ({model}, profile {profile})", headers, rows, notes)
        )
    return tables


# ---- Table 3 ------------------------------------------------------------------------------------
def table3(results: list[Result], ci: bool = False) -> list[Table]:
    tables = []
    key = lambda r: (r["task"], r["dataset"], r["model"], r.get("profile"))  # noqa: E731
    for (_, dataset, model, profile), every, runs, task in _groups(_filling(results, "3"), key):
        main = task.metric(task.paper_columns[0])
        cells = Cells(ci)
        curves = {id(r): extract.step_curve(r, main.name) for r in runs}
        steps = max((len(c) for c in curves.values() if c), default=0)
        headers = ["Method"] + [str(i) for i in range(steps)]
        rows = []
        for info in _methods(runs):
            cell = _of(runs, method=info.name)
            row = [info.row_name]
            for i in range(steps):

                def at(r: Result, i: int = i, curves: dict[int, Any] = curves) -> extract.Summary | None:
                    curve = curves[id(r)]
                    return extract.as_summary(curve[i]) if curve and i < len(curve) else None

                row.append(cells.score(cell, at, main.name, info.row_name, step=i, digits=3))
            rows.append(row)
        notes = [
            f"Mean {main.short} over all contexts of a sequence after each step (step 0 = before any "
            "injection), averaged over sequences. — = no result.",
            *meta.stand_in_notes(_methods(runs)),
            *cells.note_lines(),
            *_split_notes(every),
        ]
        tables.append(
            Table(
                f"Table 3 — {task.display_name}, {main.short} per step ({dataset}, {model}, profile {profile})",
                headers,
                rows,
                notes,
            )
        )
    return tables


# ---- Table 4 ------------------------------------------------------------------------------------
def table4(results: list[Result], ci: bool = False) -> list[Table]:
    trained = [r for r in _filling(results, "1") if extract.num_targets(r) > 0 and extract.num_contexts(r) is not None]
    tables = []
    for (_, profile), every, runs, task in _groups(trained, lambda r: (r["task"], r.get("profile"))):
        main = task.paper_columns[0]
        cells = Cells(ci)
        columns = sorted({(str(r["dataset"]), str(r["model"]), extract.num_contexts(r)) for r in runs})
        infos = meta.by_method(runs)
        row_keys = sorted(
            {(str(r["method"]), extract.generator_label(r)) for r in runs}, key=lambda k: (infos[k[0]].rank, k[1])
        )
        headers = ["Method", "Generator"] + [f"{d} · {m} · {n}" for d, m, n in columns]
        rows = []
        for method, generator in row_keys:
            row = [infos[method].row_name, generator]
            for dataset, model, n in columns:
                cell = [
                    r
                    for r in runs
                    if r["method"] == method
                    and extract.generator_label(r) == generator
                    and r["dataset"] == dataset
                    and r["model"] == model
                    and extract.num_contexts(r) == n
                ]
                where = f"{infos[method].row_name} ({generator}), {dataset} · {model} · {n}"
                row.append(cells.score(cell, _score(main), main, where))
            rows.append(row)
        notes = [
            "Batch-injection QA-F1 of the methods that train on target sentences, by the "
            "generator of those sentences (dataset: the data set's own QA pairs; cloze: blanks "
            "cut from the context; local: the model's instruct variant; openai: an "
            "OpenAI-compatible endpoint; implications: statements the model writes about the "
            "passage, SEAL-style self-edits). — = no result.",
            *meta.stand_in_notes(infos[method] for method, _ in row_keys),
            *cells.note_lines(),
            *_split_notes(every),
        ]
        tables.append(Table(f"Table 4 — target-sentence generator ablation (profile {profile})", headers, rows, notes))
    return tables


def paper_tables(
    results: list[Result], which: tuple[str, ...] = TABLE_IDS, ci: bool = False, paper: bool = False
) -> list[tuple[str, list[Table], list[Table]]]:
    """(table id, our tables, the paper's) for each table asked for; an id with no results gives no
    tables of ours, and the paper's table as published comes only with ``paper``."""
    builders = {
        "1": lambda: table1(results, ci, paper),
        "2": lambda: table2(results, ci),
        "3": lambda: table3(results, ci),
        "4": lambda: table4(results, ci),
    }
    return [(t, builders[t](), [PUBLISHED_TABLES[t]()] if paper and t in PUBLISHED_TABLES else []) for t in which]


TITLES = {
    "1": "Table 1 — batch injection",
    "2": "Table 2 — conversational recommendation",
    "3": "Table 3 — sequential injection",
    "4": "Table 4 — target-sentence generator ablation",
}


def render_all(
    results: list[Result],
    which: tuple[str, ...] = TABLE_IDS,
    fmt: str = "markdown",
    ci: bool = False,
    paper: bool = False,
) -> str:
    """Every table asked for, with a one-line placeholder for those that have no results; with
    ``paper``, each followed by the paper's table as published."""
    parts = []
    for table_id, tables, published in paper_tables(results, which, ci, paper):
        if not tables:
            title = TITLES[table_id]
            parts.append(
                f"### {title}\n\nNo results yet.\n"
                if fmt == "markdown"
                else f"{title}\n{'=' * len(title)}\nNo results yet.\n"
            )
        parts += [t.render(fmt) for t in tables + published]
    return "\n".join(parts)
