"""A sweep's status: which cells are done, skipped, failed or pending, kept in
``<out>/<name>.sweep.jsonl`` (rewritten atomically after every cell), and ``run_sweep``, which skips
finished cells and cells whose shared data is absent, records invalid ones and hands the rest to an
executor. A skipped cell with a ``reason`` was not run; one without was done before."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from benchmark import results
from benchmark.app.sweep.spec import Cell, Sweep, data_absent
from benchmark.results import safe_name


class Executor(Protocol):
    """What runs a sweep's cells (``LocalExecutor``, ``RayExecutor``), reporting each cell's outcome."""

    name: str

    def run(
        self, cells: list[Cell], report: Callable[[Cell, dict[str, Any]], None], start_commit: str | None = None
    ) -> None: ...


SKIPPED, DONE, FAILED, PENDING = "skipped", "done", "failed", "pending"


class StatusLog:
    """``<out>/<name>.sweep.jsonl``: a header line, then one line per cell, rewritten atomically."""

    def __init__(self, sweep: Sweep, executor: str) -> None:
        self.path = sweep.out / f"{safe_name(sweep.name)}.sweep.jsonl"
        self.header = {
            "sweep": sweep.name,
            "spec": str(sweep.source) if sweep.source else None,
            "executor": executor,
            "out": str(sweep.out),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            # the code this process imported: every cell must run at it (see LocalExecutor)
            "git_commit": results.git_commit(),
        }
        self.rows: dict[int, dict[str, Any]] = {}
        self.wall_s: float | None = None  # of this invocation, once it has finished

    def set(self, cell: Cell, result: dict[str, Any]) -> None:
        row = {
            "cell": cell.index,
            **cell.axes(),
            "overrides": dict(cell.request.overrides),
            "resources": cell.resources.describe(),
            "status": result["status"],
            "path": result.get("path") or (str(cell.path) if cell.path else None),
        }
        for key in ("error", "reason", "headline", "wall_s", "cpu_s", "resumed_episodes", "git_commit", "traceback"):
            if result.get(key) is not None:
                row[key] = result[key]
        self.rows[cell.index] = row

    def counts(self) -> dict[str, int]:
        counts = {DONE: 0, SKIPPED: 0, FAILED: 0, PENDING: 0}
        for row in self.rows.values():
            counts[row["status"]] += 1
        return counts

    def not_run(self) -> int:
        """Skipped cells that were never done (their data is absent), as opposed to done before."""
        return sum(1 for row in self.rows.values() if row["status"] == SKIPPED and row.get("reason"))

    def done_before(self) -> str:
        """``N already done`` for the skipped cells (with how many were written at other commits than
        the checkout's), and how many of the skipped lack their data."""
        absent = self.not_run()
        text = f"{self.counts()[SKIPPED] - absent} already done"
        if others := self.other_commits():
            listed = ", ".join(f"{results.short_commit(c)} x{n}" for c, n in others.most_common())
            text += f" ({others.total()} at other commits: {listed})"
        return f"{text}, {absent} without their data" if absent else text

    def other_commits(self) -> Counter[str | None]:
        """The commits that done-before cells' result files record, where not the checkout's: such a
        file is kept (its name is the cell's identity), but the code that wrote it may differ. Empty
        where the checkout's commit is unknown (not a git checkout)."""
        here = self.header.get("git_commit")
        if here is None:
            return Counter()
        return Counter(
            row.get("git_commit")
            for row in self.rows.values()
            if row["status"] == SKIPPED and not row.get("reason") and row.get("git_commit") != here
        )

    def cpu_s(self) -> float:
        """CPU time of the cells run by this invocation, each measured in the process that ran it."""
        return sum(float(row.get("cpu_s") or 0.0) for row in self.rows.values())

    def write(self, finished: bool = False) -> None:
        header: dict[str, Any] = {**self.header, "counts": self.counts()}
        if finished:
            header["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            header.update(cpu_s=self.cpu_s(), wall_s=self.wall_s)
        lines = [header] + [self.rows[i] for i in sorted(self.rows)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(line, default=str) + "\n" for line in lines))
        os.replace(tmp, self.path)


def settled(cell: Cell) -> dict[str, Any] | None:
    """A cell's status before anything runs: failed (invalid), skipped (its result file exists and
    no --force) or skipped with a reason (its shared data is absent); None for a cell still to run."""
    if cell.error:
        return {"status": FAILED, "error": cell.error}
    if cell.path is not None and cell.path.exists() and not cell.request.force:
        return {"status": SKIPPED, "path": str(cell.path), "git_commit": results.recorded_commit(cell.path)}
    reason = data_absent(cell)
    if reason:
        return {"status": SKIPPED, "reason": reason}
    return None


def skip_notes(sweep: Sweep, log: StatusLog) -> list[str]:
    """One line per reason that leaves part of the sweep out: methods that cannot run here, and
    shared data that is absent (with how many cells it leaves out)."""
    reasons = Counter(row["reason"] for row in log.rows.values() if row.get("reason"))
    return [f"skipped: {note}" for note in sweep.notes] + [
        f"skipped: {reason}: {_cells(n)}" for reason, n in reasons.items()
    ]


def run_sweep(sweep: Sweep, executor: Executor, echo: Callable[[str], None] = print) -> StatusLog:
    """Skip finished cells and those without their data, record invalid ones, run the rest with
    ``executor``; returns the log."""
    log = StatusLog(sweep, executor.name)
    todo: list[Cell] = []
    for cell in sweep.cells:
        status = settled(cell)
        log.set(cell, status or {"status": PENDING})
        if status is None:
            todo.append(cell)
    counts = log.counts()
    for line in skip_notes(sweep, log):
        echo(line)
    echo(
        f"sweep {sweep.name}: {len(sweep.cells)} cells, {log.done_before()}, "
        f"{counts[FAILED]} invalid, {len(todo)} to run ({executor.name}); results in {sweep.out}"
    )
    log.write()
    finished = 0
    tick = time.perf_counter()

    def report(cell: Cell, result: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        log.set(cell, result)
        log.write()
        note = result.get("error") or result.get("headline") or ""
        wall = f" {result['wall_s']:.1f}s" if result.get("wall_s") is not None else ""
        echo(f"[{finished}/{len(todo)}] {result['status']:<7} {cell.label()}{wall}  {note}".rstrip())

    try:
        executor.run(todo, report, start_commit=log.header["git_commit"])
    finally:
        log.wall_s = time.perf_counter() - tick
        log.write(finished=True)
    return log


def summary_table(log: StatusLog) -> str:
    from tabulate import tabulate

    rows = []
    for row in (log.rows[i] for i in sorted(log.rows)):
        sets = " ".join(f"{k}={v}" for k, v in row["overrides"].items())
        rows.append(
            (
                row["cell"],
                row["method"],
                row["task"],
                row["dataset"],
                row["model"],
                row["profile"],
                row["seed"],
                sets,
                row["status"],
                row.get("error") or row.get("reason") or row.get("headline") or "",
            )
        )
    return tabulate(
        rows,
        headers=("#", "method", "task", "dataset", "model", "profile", "seed", "set", "status", "scores / error"),
        tablefmt="simple",
        maxcolwidths=[None] * 9 + [70],
    )


def print_summary(log: StatusLog, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    counts = log.counts()
    print(summary_table(log), file=stream)
    absent = f" ({log.not_run()} without their data)" if log.not_run() else ""
    line = f"{counts[DONE]} done, {counts[SKIPPED]} skipped{absent}, {counts[FAILED]} failed"
    if counts[PENDING]:
        line += f", {counts[PENDING]} not run"
    print(f"{line}; status per cell: {log.path}", file=stream)
    ran = sum(1 for row in log.rows.values() if "cpu_s" in row)
    print(
        f"CPU time {duration(log.cpu_s())} ({_cells(ran)} run now, each measured where it ran), "
        f"wall time {duration(log.wall_s or 0.0)}",
        file=stream,
    )


def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def duration(seconds: float) -> str:
    """``2h 03m 04s`` / ``3m 04s`` / ``4.2s``: long sweeps read in hours, short ones in seconds."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
