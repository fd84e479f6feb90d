"""Sweeps: many ordinary runs from one YAML spec, run in-process or as Ray tasks, resumable.

A spec names methods, tasks, data sets, models, profiles and seeds (each a value or a list) and
``set`` overrides (a list value is swept too); lists expand to their product. ``grid`` entries
repeat that per part of the sweep, on top of the top-level defaults, and ``exclude`` drops cells.
Each cell is one ``benchmark.runner.run`` with its own result file, so a cell whose result file
exists is skipped, and an interrupted cell resumes from its finished episodes. Every cell's status
(done / skipped / failed, with the error message) is kept in ``<out>/<name>.sweep.jsonl``.

The parts: ``spec`` (reading and expanding a spec into cells), ``executors`` (running cells here or
on Ray) and ``status`` (the status log and ``run_sweep``). Their names are importable from here.
"""

from __future__ import annotations

from benchmark.app.sweep.executors import (
    RAY_INSTALL_HINT,
    LocalExecutor,
    RayExecutor,
    Report,
    headline,
    import_ray,
    run_cell,
)
from benchmark.app.sweep.spec import (
    AXES,
    ENTRY_KEYS,
    RAY_KEYS,
    RESOURCE_KEYS,
    TOP_KEYS,
    Cell,
    Resources,
    Sweep,
    expand,
    load_spec,
    one_line,
    parse_resources,
    unavailable_here,
    with_only,
)
from benchmark.app.sweep.status import (
    DONE,
    FAILED,
    PENDING,
    SKIPPED,
    StatusLog,
    print_summary,
    run_sweep,
    settled,
    summary_table,
)

__all__ = [
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
    "expand",
    "headline",
    "import_ray",
    "load_spec",
    "one_line",
    "parse_resources",
    "print_summary",
    "run_cell",
    "run_sweep",
    "settled",
    "summary_table",
    "unavailable_here",
    "with_only",
]
