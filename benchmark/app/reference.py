"""The reference runs behind the leaderboard: every method that runs here, on every task and data set
present, with the ``quick`` profile, written to ``results/``.

    python -m benchmark.app.reference --dry-run      # list the runs
    python -m benchmark.app.reference                # run them (finished ones are kept, not redone)
    make reference                               # the same, then bench leaderboard

Runs that do not apply (e.g. the C+Q oracle on recommendation, which has no gold context) or that
fail are reported and skipped; the rest go on. A finished result file is reused, so an interrupted
reference set continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.paths import shared_data
from benchmark.registry import METHODS, TASKS
from benchmark.results import REPO_ROOT
from benchmark.threads import choose_omp_wait_policy

# (task, data set, the shared-data folder it needs or None for built-in data, settings of the cell).
# Sizes chosen for power (README, "Power"): 50 SQuAD test contexts spread over 18 articles detect a
# 0.1 QA-F1 difference between the trained methods; recommendation asks every INSPIRED test point and
# 320 of ReDial's.
CELLS: tuple[tuple[str, str, str | None, dict[str, str]], ...] = (
    ("batch", "fictional", None, {}),
    ("batch", "squad", "squad", {"num_contexts": "50"}),
    ("sequential", "fictional", None, {}),
    ("recommendation", "inspired", "crs/inspired", {"num_probes": "0"}),
    ("recommendation", "redial", "crs/redial", {"num_probes": "320"}),
)


@dataclass(frozen=True)
class Cell:
    method: str
    task: str
    dataset: str
    overrides: tuple[tuple[str, str], ...] = ()  # the cell's --set values


def plan(
    methods: list[str] | None = None, tasks: list[str] | None = None, datasets: list[str] | None = None
) -> tuple[list[Cell], list[str]]:
    """The runs to do, and a line for each method, task or data set left out (and why)."""
    notes = []
    chosen = []
    for name, cls in METHODS.items():
        if methods and name not in methods:
            continue
        reason = cls.unavailable_reason()
        if reason:
            notes.append(f"method {name}: not run here ({reason})")
            continue
        chosen.append(name)
    cells = []
    for task, dataset, needs, settings in CELLS:
        if (tasks and task not in tasks) or (datasets and dataset not in datasets):
            continue
        if task not in TASKS:
            notes.append(f"task {task}: not installed")
            continue
        if needs and shared_data(*needs.split("/")) is None:
            notes.append(f"{task} on {dataset}: data not present ({needs})")
            continue
        for method in chosen:
            if TASKS.get(task).method_problem(METHODS.get(method)):
                continue  # the task does not apply to it (e.g. no gold context for the C+Q oracle)
            cells.append(Cell(method, task, dataset, tuple(settings.items())))
    return cells, notes


def main(argv: list[str] | None = None) -> int:
    choose_omp_wait_policy()  # as `bench` does, before torch loads (benchmark.threads)
    parser = argparse.ArgumentParser(prog="python -m benchmark.app.reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", help="comma-separated subset of methods")
    parser.add_argument("--tasks", help="comma-separated subset of tasks")
    parser.add_argument("--datasets", help="comma-separated subset of data sets")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--dry-run", action="store_true", help="list the runs without running them")
    args = parser.parse_args(argv)

    def split(text: str | None) -> list[str] | None:
        return [s.strip() for s in text.split(",") if s.strip()] if text else None

    cells, notes = plan(split(args.methods), split(args.tasks), split(args.datasets))
    for note in notes:
        print(f"skip: {note}")
    if args.dry_run:
        for cell in cells:
            sets = "".join(f" --set {key}={value}" for key, value in cell.overrides)
            print(
                f"bench run --method {cell.method} --task {cell.task} --dataset {cell.dataset} "
                f"--profile {args.profile} --seed {args.seed}{sets} --out {args.out}"
            )
        print(f"{len(cells)} runs")
        return 0

    from benchmark.runner import RunRequest, run  # after the wait policy: it loads torch

    done, failed = 0, []
    for i, cell in enumerate(cells, start=1):
        label = f"[{i}/{len(cells)}] {cell.method} on {cell.task}/{cell.dataset}"
        print(label, flush=True)
        tick = time.perf_counter()
        try:
            outcome = run(
                RunRequest(
                    method=cell.method,
                    task=cell.task,
                    dataset=cell.dataset,
                    profile=args.profile,
                    seed=args.seed,
                    overrides=dict(cell.overrides),
                    out=args.out,
                )
            )
        except BenchError as exc:
            failed.append(f"{label}: {exc}")
            print(f"  not done: {exc}", flush=True)
            continue
        done += 1
        state = "reused" if outcome.reused else f"{time.perf_counter() - tick:.0f}s"
        print(f"  {state}: {outcome.path}", flush=True)
    print(f"{done} runs done, {len(failed)} not done")
    for line in failed:
        print(f"  {line}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
