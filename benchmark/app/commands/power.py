"""``bench power PATHS...``: how small a difference each cell of results can detect.

For every cell (task × data set × model, as on the leaderboard) found under the given result files
or folders, one markdown table: each method's paired difference against the floor method (the one
whose declared role is "floor": the untouched model without the context) on the task's main score
with its bootstrap 95% interval, and the minimum detectable difference (MDE) of that paired
comparison at the cell's size (80% power, two-sided alpha 0.05). A difference smaller than the MDE
that the interval calls a tie is not evidence of no effect: the cell is too small to see it. Runs
are grouped, pooled over seeds and paired exactly as the leaderboard's "Δ vs" floor column, so the
Δ here is that column's.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError

NOTE = (
    "MDE: the smallest difference a paired test detects at this size with 80% power at "
    "two-sided alpha 0.05 (normal approximation: 2.80 × the standard error of the mean per-unit "
    "difference, over the units the bootstrap draws)."
)
NO_SPREAD = '"no spread": every unit\'s difference is the same, so the data give no standard error to plan with.'


@dataclass
class PowerTable:
    """One cell: its title, the table's header and rows, and the runs left out with why."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "power",
        help="paired difference vs the floor and the smallest detectable difference, per cell",
        description="For each cell (task, data set, model) under the given result files or folders, "
        "print a markdown table: method, number of independent units, the paired "
        "difference against the floor method (the untouched model without the "
        "context) on the main score with its bootstrap 95% interval, and the smallest "
        "difference a paired test detects at that size (80% power, alpha 0.05). Runs "
        "that cannot be paired with the floor are left out with a one-line note on "
        "stderr.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="result files or folders, e.g. results/batch/fictional/smollm2-135m-instruct/",
    )
    parser.add_argument("--profile", help="only runs of this profile")
    parser.set_defaults(handler=cmd_power)


def cmd_power(args: argparse.Namespace) -> int:
    from leaderboard.load import load_results

    loaded = load_results(args.paths)
    results = [r for r in loaded.results if args.profile is None or r.get("profile") == args.profile]
    if not results:
        raise BenchError(
            f"no result files under {', '.join(map(str, args.paths))}"
            + (f" with profile {args.profile}" if args.profile else "")
        )
    tables = power_tables(results)
    for path, why in loaded.skipped:
        print(f"bench: skipped {path}: {why}", file=sys.stderr)
    for table in tables:
        for note in table.notes:
            print(f"bench: {note}", file=sys.stderr)
    if not any(table.rows for table in tables):
        raise BenchError(f"no run under {', '.join(map(str, args.paths))} could be paired with the floor method")
    print(render(tables), end="")
    return 0


def power_tables(results: list[dict[str, Any]]) -> list[PowerTable]:
    """One table per leaderboard board: every row but the floor's, paired against the floor."""
    from benchmark.metrics import detectable_difference, unit_differences
    from leaderboard import extract
    from leaderboard.board import boards, floor_rows

    tables = []
    for board in boards(results):
        task = board.task_info
        drawn = task.resampled_unit
        main = board.metrics[0] if board.metrics else None
        floor_name = board.floor_name
        table = PowerTable(
            board.title,
            [
                "method",
                f"n ({drawn})",
                f"Δ {board.heading(main or '')} vs {floor_name} [95% CI]",
                "MDE (80% power, α 0.05)",
            ],
        )
        tables.append(table)
        floors = floor_rows(board.rows, board.methods)
        if main is None or not floors:
            why = "no score to compare" if main is None else f"no {floor_name} run to pair with"
            table.notes.append(f"{board.title}: {why}; {len(board.rows)} runs left out")
            continue
        profiles = {str(row.first.get("profile")) for row in board.rows}
        cluster = extract.cluster(task)
        for row in board.rows:
            if any(row is floor for floor in floors):
                continue
            pairs = ((floor, extract.paired(floor.runs, row.runs, main)) for floor in floors)
            floor, diff = next(((f, d) for f, d in pairs if d is not None), (None, None))
            if floor is None or diff is None:
                table.notes.append(
                    f"skipped {row.first.get('_path')}: cannot be paired with "
                    f"{floor_name} (other contexts, questions or seeds, or no "
                    f"per-unit {main} scores)"
                )
                continue
            differences = unit_differences(
                extract.pooled_units(floor.runs, main) or {}, extract.pooled_units(row.runs, main) or {}
            )
            mde = detectable_difference(differences, cluster)
            name = board.display(row)
            if len(profiles) > 1:
                name += f" ({row.first.get('profile')})"
            if len(row.runs) > 1:
                name += f", {len(row.runs)} seeds"
            table.rows.append(
                [
                    name,
                    str(len({cluster(k) for k in differences})),
                    f"{diff['mean']:+.4f} [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}]",
                    "— (n < 2)" if math.isnan(mde) else "— (no spread)" if mde < 1e-9 else f"±{mde:.4f}",
                ]
            )
    return tables


def render(tables: list[PowerTable]) -> str:
    from tabulate import tabulate

    parts = []
    for table in tables:
        if not table.rows:
            continue
        body = tabulate(table.rows, headers=table.headers, tablefmt="github", disable_numparse=True)
        parts.append(f"### {table.title}\n\n{body}\n")
    spreadless = any(row[-1] == "— (no spread)" for table in tables for row in table.rows)
    return "\n".join(parts) + f"\n{NOTE}" + (f" {NO_SPREAD}" if spreadless else "") + "\n"
