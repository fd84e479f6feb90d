"""The entry of a process that runs one sweep cell: a Ray worker, or a child of a local sweep.

It imports nothing heavy, and the cell's request arrives as a plain dict, so the worker chooses its
OpenMP wait policy (``benchmark.threads``) on its own machine's load before torch loads, as ``bench``
does at start; only then are the runner and torch imported.

``python -m benchmark.app.worker REQUEST OUTCOME`` is how a local sweep runs a cell in a fresh
process (``executors.run_in_child``): the request is read from the pickle file REQUEST and the cell's
outcome written to OUTCOME as JSON, ``{"status": "interrupted"}`` when Ctrl-C or SIGTERM stopped it.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any

from benchmark.threads import choose_omp_wait_policy


def run_cell(request: dict[str, Any]) -> dict[str, Any]:
    choose_omp_wait_policy()
    # Imported here, not above: after the wait policy is set, since torch comes with them.
    from benchmark.app.sweep.executors import run_cell as run_one
    from benchmark.runner import RunRequest

    return run_one(RunRequest(**request))


def main(argv: list[str]) -> int:
    """Run the cell in REQUEST, set up as ``bench`` sets itself up, and write its outcome to OUTCOME."""
    request_file, outcome_file = (Path(a) for a in argv)
    request = pickle.loads(request_file.read_bytes())
    # None of these loads torch (run_cell chooses the wait policy first, here and in a Ray worker).
    from benchmark.allocator import keep_freed_memory
    from benchmark.app.cli import interrupted_code, sigterm_as_interrupt
    from benchmark.errors import Terminated

    keep_freed_memory()
    try:
        with sigterm_as_interrupt():
            outcome = run_cell(request)
    except KeyboardInterrupt as exc:  # the run kept its finished episodes; the sweep stops
        outcome_file.write_text(json.dumps({"status": "interrupted", "terminated": isinstance(exc, Terminated)}))
        return interrupted_code(exc)
    outcome_file.write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
