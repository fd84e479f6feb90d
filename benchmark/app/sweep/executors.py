"""Running cells: one ordinary run per cell, one after another in this process (``LocalExecutor``) or
as Ray tasks with each cell's resource request (``RayExecutor``)."""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from types import ModuleType
from typing import Any

from benchmark import results, runner
from benchmark.app import worker
from benchmark.app.sweep.spec import Cell, one_line
from benchmark.app.sweep.status import DONE, FAILED, SKIPPED
from benchmark.errors import BenchError
from benchmark.runner import RunRequest
from benchmark.schema import nested_scores

RAY_INSTALL_HINT = "Ray is not installed: pip install 'selfparam-bench[ray]' (or pip install 'ray[default]')"


def cpu_seconds() -> float:
    """User and system CPU time of this process (all its threads) and of its children that ended."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_cell(request: RunRequest) -> dict[str, Any]:
    """One ordinary run; never raises for a failure of the run itself (Ctrl-C still stops it).

    Its CPU time is measured here, in the process that runs it (this one, or a Ray worker), so the
    sweep's total counts the same thing whichever executor ran the cells.
    """
    tick, cpu = time.perf_counter(), cpu_seconds()
    try:
        outcome = runner.run(request)
    except Exception as exc:
        return {
            "status": FAILED,
            "error": one_line(exc),
            "traceback": traceback.format_exc(),
            "wall_s": time.perf_counter() - tick,
            "cpu_s": cpu_seconds() - cpu,
        }
    return {
        "status": SKIPPED if outcome.reused else DONE,
        "path": str(outcome.path),
        "git_commit": outcome.result.get("git_commit"),
        "resumed_episodes": outcome.resumed_episodes,
        "headline": headline(nested_scores(outcome.result)),
        "wall_s": time.perf_counter() - tick,
        "cpu_s": cpu_seconds() - cpu,
    }


def headline(scores: dict[str, Any]) -> str:
    """The first few mean scores of a result, for the sweep's summary."""
    parts = [
        f"{k}={v['mean']:.4f}"
        for k, v in scores.items()
        if isinstance(v, dict) and isinstance(v.get("mean"), (int, float))
    ]
    return " ".join(parts[:3])


Report = Callable[[Cell, dict[str, Any]], None]


def check_checkout(start_commit: str | None, cell: Cell) -> None:
    """Stop before ``cell`` if the checkout's commit or dirty state is no longer the one the sweep
    started at: this process imported the code then, so a cell run now would run the old code but
    record the new commit. Rerunning the command resumes at the new code (finished cells are kept)."""
    now = results.git_commit()
    if now != start_commit:
        raise BenchError(
            f"the checkout changed during the sweep (commit {results.short_commit(start_commit)} when it started, "
            f"{results.short_commit(now)} now): stopping before {cell.label()}; finished cells are kept, "
            "run the same command again to go on with the new code"
        )


class LocalExecutor:
    """Cells one after another in this process (each loads its model like ``bench run`` does)."""

    name = "local"

    def run(self, cells: list[Cell], report: Report, start_commit: str | None = None) -> None:
        """Run ``cells``; ``start_commit`` is the commit the sweep started at (the code this process
        imported), read here when not given."""
        if start_commit is None:
            start_commit = results.git_commit()
        for cell in cells:
            check_checkout(start_commit, cell)
            report(cell, run_cell(cell.request))


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise BenchError(RAY_INSTALL_HINT) from None
    return ray


class RayExecutor:
    """Each cell a Ray task with the spec's resource request, on an existing or a local cluster."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        max_retries: int = 1,
        verbose: bool = False,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.verbose = verbose

    def _connect(self, ray: ModuleType) -> bool:
        """Join ``address`` or start a local Ray; returns whether this call started it."""
        if ray.is_initialized():
            return False
        common = dict(log_to_driver=self.verbose, logging_level="INFO" if self.verbose else "WARNING")
        if self.address:
            env = {
                k: v
                for k, v in os.environ.items()
                if k.startswith("SELFPARAM_BENCH_") or k in ("TRANSFORMERS_VERBOSITY", "HF_HUB_OFFLINE")
            }
            try:
                ray.init(address=self.address, runtime_env={"env_vars": env} if env else None, **common)
            except ConnectionError as exc:
                raise BenchError(f"cannot join the Ray cluster at {self.address!r}: {one_line(exc)}") from None
        else:
            # address="local": a fresh instance, never a cluster that `ray start` left on this machine
            ray.init(address="local", num_cpus=self.num_cpus, num_gpus=self.num_gpus, include_dashboard=False, **common)
        return True

    def run(self, cells: list[Cell], report: Report, start_commit: str | None = None) -> None:
        """Each cell in a Ray worker, which imports the code and reads the commit itself
        (``start_commit`` is not checked here)."""
        ray = import_ray()
        if not cells:
            return  # nothing to do: no need to start or join a cluster
        started = self._connect(ray)
        remote = ray.remote(worker.run_cell)
        pending: dict[Any, Cell] = {}
        try:
            totals = ray.cluster_resources()
            for cell in cells:
                options = cell.resources.ray_options()
                missing = _unschedulable(options, totals) if started else None
                if missing:  # a fixed local cluster would wait for it forever
                    report(
                        cell,
                        {
                            "status": FAILED,
                            "error": f"needs {missing}; this Ray instance has "
                            f"{_describe_totals(totals)} (raise --num-cpus or lower resources)",
                        },
                    )
                    continue
                ref = remote.options(**options, max_retries=self.max_retries).remote(asdict(cell.request))
                pending[ref] = cell
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # the worker died (out of memory, node lost, ...)
                        result = {"status": FAILED, "error": one_line(exc)}
                    report(cell, result)
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                # already finished or the cluster is gone: nothing left to stop
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


def _unschedulable(options: dict[str, Any], totals: dict[str, float]) -> str | None:
    wanted = {
        "CPU": options.get("num_cpus", 0),
        "GPU": options.get("num_gpus", 0),
        "memory": options.get("memory", 0),
        **options.get("resources", {}),
    }
    for key, amount in wanted.items():
        if amount and amount > totals.get(key, 0):
            return f"{amount / 2**30:.1f} GiB memory" if key == "memory" else f"{amount:g} {key}"
    return None


def _describe_totals(totals: dict[str, float]) -> str:
    parts = [f"{totals.get('CPU', 0):g} CPU", f"{totals.get('GPU', 0):g} GPU"]
    if totals.get("memory"):
        parts.append(f"{totals['memory'] / 2**30:.1f} GiB memory")
    return ", ".join(parts)
