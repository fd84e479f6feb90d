"""Sweeps: many ordinary runs from one YAML spec, run in-process or as Ray tasks, resumable.

A spec names methods, tasks, data sets, models, profiles and seeds (each a value or a list) and
``set`` overrides (a list value is swept too); lists expand to their product. ``grid`` entries
repeat that per part of the sweep, on top of the top-level defaults, and ``exclude`` drops cells.
``methods: all`` is every method that runs here (only where the task applies to it), and
``needs_data`` names shared-data folders without which a cell is skipped, not failed.
Each cell is one ``benchmark.runner.run`` with its own result file, so a cell whose result file
exists is skipped, and an interrupted cell resumes from its finished episodes. Every cell's status
(done / skipped / failed, with the error message, its wall and CPU time) is kept in
``<out>/<name>.sweep.jsonl``.

The parts: ``spec`` (reading and expanding a spec into cells), ``executors`` (running cells here or
on Ray) and ``status`` (the status log and ``run_sweep``). Their names are importable from here.
"""

from __future__ import annotations

from benchmark.app.sweep.executors import (
    RAY_INSTALL_HINT,
    LocalExecutor,
    RayExecutor,
    Report,
    cpu_seconds,
    headline,
    import_ray,
    run_cell,
)
from benchmark.app.sweep.spec import (
    ALL_METHODS,
    AXES,
    ENTRY_KEYS,
    RAY_KEYS,
    RESOURCE_KEYS,
    TOP_KEYS,
    Cell,
    Resources,
    Sweep,
    data_absent,
    expand,
    load_spec,
    one_line,
    parse_resources,
    runnable_methods,
    unavailable_here,
    with_only,
)
from benchmark.app.sweep.status import (
    DONE,
    FAILED,
    PENDING,
    SKIPPED,
    StatusLog,
    duration,
    print_summary,
    run_sweep,
    settled,
    skip_notes,
    summary_table,
)

__all__ = [
    "ALL_METHODS",
    "AXES",
    "DONE",
    "ENTRY_KEYS",
    "FAILED",
    "PENDING",
    "RAY_INSTALL_HINT",
    "RAY_KEYS",
    "RESOURCE_KEYS",
    "SKIPPED",
    "TOP_KEYS",
    "Cell",
    "LocalExecutor",
    "RayExecutor",
    "Report",
    "Resources",
    "StatusLog",
    "Sweep",
    "cpu_seconds",
    "data_absent",
    "duration",
    "expand",
    "headline",
    "import_ray",
    "load_spec",
    "one_line",
    "parse_resources",
    "print_summary",
    "run_cell",
    "run_sweep",
    "runnable_methods",
    "settled",
    "skip_notes",
    "summary_table",
    "unavailable_here",
    "with_only",
]
