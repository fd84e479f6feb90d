"""``bench sweep SPEC.yaml``: every cell of a spec as one ordinary run, locally or on Ray."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.app.cli import add_set_argument, interrupted_code
from benchmark.config import parse_overrides

if TYPE_CHECKING:
    from benchmark.app.sweep.spec import Sweep
    from benchmark.app.sweep.status import Executor


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of methods x tasks x data sets x models x seeds from a YAML spec",
        description="Run every cell of a sweep spec (see sweeps/*.yaml). Cells whose result file "
        "exists are skipped, so the same command resumes an interrupted sweep, as are cells whose shared "
        "data is absent. The summary ends with the CPU and wall time of the cells run.",
    )
    parser.add_argument("spec", type=Path, help="the sweep spec (YAML)")
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: one cell after another, each in a fresh process (default); ray: one Ray task per cell",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="local: run the cells in this process instead (faster for tiny cells, but a cell's time "
        "then depends on the cells before it)",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to join (e.g. auto or ray://head:10001); without it a local Ray instance is started",
    )
    parser.add_argument(
        "--num-cpus", type=float, help="CPUs of the local Ray instance (default: the spec's ray.num_cpus)"
    )
    parser.add_argument(
        "--num-gpus", type=float, help="GPUs of the local Ray instance (default: the spec's ray.num_gpus or all)"
    )
    parser.add_argument("--out", type=Path, help="result folder (default: the spec's out)")
    add_set_argument(parser, "override a parameter in every cell (replaces the spec's value)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AXIS=V1,V2",
        help="run only the cells with these values (axes: method task dataset model profile seed)",
    )
    parser.add_argument("--force", action="store_true", help="recompute cells whose result exists")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their status; run nothing")
    parser.set_defaults(handler=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from benchmark.app.sweep import (
        FAILED,
        LocalExecutor,
        RayExecutor,
        import_ray,
        load_spec,
        print_summary,
        run_sweep,
        with_only,
    )

    if args.executor == "ray" and not args.dry_run:
        import_ray()  # says how to install it before any work
    sweep = load_spec(args.spec, overrides=parse_overrides(args.overrides), out=args.out, force=args.force)
    if args.only:
        sweep = with_only(sweep, parse_overrides(args.only))
    if args.dry_run:
        return dry_run(sweep)
    executor: Executor
    if args.executor == "ray":
        executor = RayExecutor(
            address=args.address,
            num_cpus=args.num_cpus if args.num_cpus is not None else sweep.ray.get("num_cpus"),
            num_gpus=args.num_gpus if args.num_gpus is not None else sweep.ray.get("num_gpus"),
            max_retries=int(sweep.ray.get("max_retries", 1)),
            verbose=args.verbose,
        )
    else:
        executor = LocalExecutor(isolate=not args.in_process)
    try:
        log = run_sweep(sweep, executor)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated
        print(
            f"bench: sweep interrupted; run the same command to resume (finished cells and episodes "
            f"are kept in {sweep.out})",
            file=sys.stderr,
        )
        return interrupted_code(exc)
    print()
    print_summary(log)
    return 1 if log.counts()[FAILED] else 0


def dry_run(sweep: Sweep) -> int:
    from benchmark.app.sweep import (
        FAILED,
        PENDING,
        StatusLog,
        settled,
        skip_notes,
        summary_table,
        unavailable_here,
    )

    log = StatusLog(sweep, "dry-run")
    for cell in sweep.cells:
        status = settled(cell)
        if status is None:
            reason = unavailable_here(cell)  # a cluster's workers may still run it
            status = {"status": PENDING, "path": str(cell.path), "headline": reason and f"({reason})"}
        log.set(cell, status)
    for line in skip_notes(sweep, log):
        print(line)
    print(f"sweep {sweep.name}: {len(sweep.cells)} cells; results in {sweep.out} (dry run: nothing written)")
    print(summary_table(log))
    counts = log.counts()
    print(f"{counts[PENDING]} to run, {log.done_before()}, {counts[FAILED]} invalid")
    return 0
