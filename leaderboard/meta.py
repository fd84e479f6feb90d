"""What the tables and the leaderboard show of a method: row name, storage class S, row order, role.

Read from the result files' ``method_info`` (the runner writes it); for files written before it
existed, from what the registered class declares (built-ins, and methods of outside packages found
through the ``selfparam_bench.methods`` entry points); for a method neither knows, its raw name,
no storage class and a place after the others.
"""

from __future__ import annotations

from typing import Any, Iterable

from benchmark.method_info import MethodInfo
from benchmark.registry import METHODS

Result = dict[str, Any]
UNNAMED_FLOOR = "the floor"


def registered(name: str) -> MethodInfo | None:
    """What the class registered under ``name`` declares, or None when no class is registered."""
    return MethodInfo.of_class(METHODS.get(name)) if name in METHODS else None


def known(name: str) -> MethodInfo:
    """A method named without a result file (the paper's published rows): its class, or its name."""
    return registered(name) or MethodInfo(name, name)


def of_result(result: Result) -> MethodInfo:
    """What one result file says about its method (or, without ``method_info``, its class)."""
    name = str(result["method"])
    record = result.get("method_info")
    if isinstance(record, dict):
        return MethodInfo.from_record(name, record)
    return known(name)


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
