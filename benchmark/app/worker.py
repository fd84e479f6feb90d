"""The entry of a Ray worker that runs one sweep cell.

It imports nothing heavy, and the cell's request arrives as a plain dict, so the worker chooses its
OpenMP wait policy (``benchmark.threads``) on its own machine's load before torch loads, as ``bench``
does at start; only then are the runner and torch imported.
"""

from __future__ import annotations

from typing import Any

from benchmark.threads import choose_omp_wait_policy


def run_cell(request: dict[str, Any]) -> dict[str, Any]:
    choose_omp_wait_policy()
    # Imported here, not above: after the wait policy is set, since torch comes with them.
    from benchmark.app.sweep.executors import run_cell as run_one
    from benchmark.runner import RunRequest

    return run_one(RunRequest(**request))
