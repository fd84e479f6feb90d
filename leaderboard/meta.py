"""What the tables and the leaderboard know of a method (row name, storage class S, row order, role,
the paper's row labels for it) and of a task (its scores: labels, the primary one, what a bootstrap
resamples, curves, the paper's table it fills).

Read from the result files' ``method_info`` and ``task_info`` (the runner writes them); for files
written before they existed, from what the registered class declares (built-ins, and classes of
outside packages found through the ``selfparam_bench.methods`` / ``selfparam_bench.tasks`` entry
points), and likewise the paper's row labels for a ``method_info`` written before it carried them. A
method neither knows shows its raw name, no storage class and a place after the others; a task
neither knows shows its top-level scores, in name order, the first as the primary one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from benchmark.method_info import MethodInfo
from benchmark.registry import METHODS, TASKS
from benchmark.schema import upgrade
from benchmark.task_info import MetricInfo, TaskInfo

Result = dict[str, Any]
UNNAMED_FLOOR = "the floor"


def registered(name: str) -> MethodInfo | None:
    """What the class registered under ``name`` declares, or None when no class is registered."""
    return MethodInfo.of_class(METHODS.get(name)) if name in METHODS else None


def known(name: str) -> MethodInfo:
    """A method known by its name alone (no result file says more): its class, or its name."""
    return registered(name) or MethodInfo(name, name)


def of_result(result: Result) -> MethodInfo:
    """What one result file says about its method (or, without ``method_info``, its class; without
    ``paper_rows`` or ``stand_in`` in it, the class's)."""
    name = str(result["method"])
    record = result.get("method_info")
    if not isinstance(record, dict):
        return known(name)
    info = MethodInfo.from_record(name, record)
    declared = registered(name)
    if declared is not None:
        if "paper_rows" not in record:
            info = replace(info, paper_rows=declared.paper_rows)
        if "stand_in" not in record:
            info = replace(info, stand_in=declared.stand_in)
    return info


def stand_in_notes(infos: Iterable[MethodInfo]) -> list[str]:
    """One note per stand-in row among ``infos`` (a table that shows one says what it is)."""
    return list(dict.fromkeys(note for info in infos if (note := info.stand_in_note)))


def by_method(results: Iterable[Result]) -> dict[str, MethodInfo]:
    """One entry per method of the results, from its latest file that has ``method_info``, so a
    method shows under one name and in one place however many files it has."""
    results = list(results)
    latest: dict[str, Result] = {}
    for r in sorted(results, key=lambda r: (str(r.get("finished_at")), str(r.get("_path")))):
        if isinstance(r.get("method_info"), dict):
            latest[str(r["method"])] = r
    names = sorted({str(r["method"]) for r in results})
    return {name: of_result(latest[name]) if name in latest else known(name) for name in names}


def ordered(infos: Iterable[MethodInfo]) -> list[MethodInfo]:
    """Rows in their declared order; methods that declare none follow, alphabetically."""
    return sorted(infos, key=lambda i: i.rank)


def floor_name(infos: Iterable[MethodInfo]) -> str:
    """The row name of the floor method: among ``infos``, else among the registered methods."""
    floors = [i for i in infos if i.role == "floor"]
    if not floors:
        floors = [i for i in (MethodInfo.of_class(cls) for _, cls in METHODS.items()) if i.role == "floor"]
    return ordered(floors)[0].display_name if floors else UNNAMED_FLOOR


# ---- tasks ----------------------------------------------------------------------------------------
INFERRED_COLUMNS = 6  # leaderboard columns of a task that declares none


def task_registered(name: str) -> TaskInfo | None:
    """What the task class registered under ``name`` declares, or None when none is registered."""
    return TaskInfo.of_class(TASKS.get(name)) if name in TASKS else None


def task_of(result: Result) -> TaskInfo:
    """What one result file says about its task (or, without ``task_info``, its class)."""
    name = str(result.get("task"))
    record = result.get("task_info")
    if isinstance(record, dict):
        return TaskInfo.from_record(name, record)
    return task_registered(name) or inferred(name, [result])


def by_task(results: Iterable[Result]) -> TaskInfo:
    """One task's metadata for results of that task: its latest file's ``task_info``, else its class,
    else what the results' scores show."""
    results = list(results)
    name = str(results[0].get("task")) if results else ""
    described = [r for r in results if isinstance(r.get("task_info"), dict)]
    if described:
        return task_of(max(described, key=lambda r: (str(r.get("finished_at")), str(r.get("_path")))))
    return task_registered(name) or inferred(name, results)


def inferred(name: str, results: Iterable[Result]) -> TaskInfo:
    """A task known from its results alone: every top-level score is a metric (name order, the first
    primary, the first few leaderboard columns); ``bench compare`` pairs every per-unit score."""
    views = [upgrade(r) for r in results]
    means = sorted({n for v in views for n in v["scores"] if "." not in n})
    metrics = tuple(MetricInfo(n, primary=i == 0, board=i < INFERRED_COLUMNS) for i, n in enumerate(means))
    per_unit = sorted(
        {
            m
            for v in views
            for e in v["episodes"]
            for entry in (e.get("per_unit") or [])[-1:]
            if isinstance(entry, dict)
            for values in entry.values()
            for m in values
        }
    )
    return TaskInfo(name, metrics=metrics, compared=tuple(per_unit))
