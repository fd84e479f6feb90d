"""Running cells: one ordinary run per cell, one after another on this machine (``LocalExecutor``),
each in a fresh process unless asked otherwise, or as Ray tasks with each cell's resource request
(``RayExecutor``), each in a fresh worker."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmark import results, runner
from benchmark.app import worker
from benchmark.app.sweep.spec import Cell, one_line
from benchmark.app.sweep.status import DONE, FAILED, SKIPPED
from benchmark.errors import BenchError, Terminated
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
    started at, so that one sweep's cells run one version of the code (a cell in this process would
    even run the code imported at the start but record the new commit). Rerunning the command
    resumes at the new code (finished cells are kept)."""
    now = results.git_commit()
    if now != start_commit:
        raise BenchError(
            f"the checkout changed during the sweep (commit {results.short_commit(start_commit)} when it started, "
            f"{results.short_commit(now)} now): stopping before {cell.label()}; finished cells are kept, "
            "run the same command again to go on with the new code"
        )


def child_command(request_file: Path, outcome_file: Path) -> list[str]:
    """The command that runs one cell in a fresh Python process (``benchmark.app.worker``). ``-P``:
    the child finds the code where this process found it, not in whatever folder it was started from."""
    return [sys.executable, "-P", "-m", "benchmark.app.worker", str(request_file), str(outcome_file)]


def run_in_child(request: RunRequest) -> dict[str, Any]:
    """``run_cell`` in a fresh process, as ``bench run`` would run it, so that the cell's time and
    peak memory owe nothing to the cells before it (the allocator's heap, kernels compiled by an
    earlier cell, the process's peak resident size).

    The child inherits the environment (the malloc ``bench`` chose, the OpenMP settings) and runs in
    a session of its own, so a Ctrl-C at the terminal reaches this process only, which hands it on
    once: the child then stops as an interrupted ``bench run`` does (finished episodes kept) and the
    sweep stops. A second Ctrl-C kills it. A child that ends without reporting (killed, out of memory)
    is a failed cell; the sweep goes on.
    """
    with tempfile.TemporaryDirectory(prefix="bench-cell-") as folder:
        request_file, outcome_file = Path(folder) / "request.pickle", Path(folder) / "outcome.json"
        request_file.write_bytes(pickle.dumps(asdict(request)))
        tick = time.perf_counter()
        child = subprocess.Popen(child_command(request_file, outcome_file), start_new_session=True)
        try:
            code = child.wait()
        except KeyboardInterrupt as exc:
            child.send_signal(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
            try:
                child.wait()
            except KeyboardInterrupt:  # asked twice: stop it now
                child.kill()
                child.wait()
            raise
        if not outcome_file.exists():
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            return {
                "status": FAILED,
                "error": f"the cell's process ended with {how} before reporting (killed? out of memory?)",
                "wall_s": time.perf_counter() - tick,
            }
        outcome: dict[str, Any] = json.loads(outcome_file.read_text())
    if outcome.get("status") == "interrupted":  # stopped by a signal sent to it alone: the sweep stops too
        raise Terminated() if outcome.get("terminated") else KeyboardInterrupt()
    return outcome


class LocalExecutor:
    """Cells one after another on this machine, each in a fresh process (``run_in_child``), or with
    ``isolate=False`` in this process (faster for tiny cells; a cell's time then depends on what ran
    before it in the process)."""

    name = "local"

    def __init__(self, isolate: bool = True) -> None:
        self.isolate = isolate

    def run(self, cells: list[Cell], report: Report, start_commit: str | None = None) -> None:
        """Run ``cells``; ``start_commit`` is the commit the sweep started at, read here when not
        given: a cell is not started once the checkout's code differs from it."""
        if start_commit is None:
            start_commit = results.git_commit()
        for cell in cells:
            check_checkout(start_commit, cell)
            report(cell, run_in_child(cell.request) if self.isolate else run_cell(cell.request))


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
        # A fresh worker process per cell, as a local sweep gives: a reused one would carry the
        # earlier cells' heap and compiled kernels into this cell's time and memory.
        remote = ray.remote(max_calls=1)(worker.run_cell)
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
