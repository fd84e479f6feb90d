"""Sweeps: many ordinary runs from one YAML spec, run in-process or as Ray tasks, resumable.

A spec names methods, tasks, data sets, models, profiles and seeds (each a value or a list) and
``set`` overrides (a list value is swept too); lists expand to their product. ``grid`` entries
repeat that per part of the sweep, on top of the top-level defaults, and ``exclude`` drops cells.
Each cell is one ``benchmark.runner.run`` with its own result file, so a cell whose result file
exists is skipped, and an interrupted cell resumes from its finished episodes. Every cell's status
(done / skipped / failed, with the error message) is kept in ``<out>/<name>.sweep.jsonl``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from benchmark import runner
from benchmark.app import worker
from benchmark.errors import BenchError, UnavailableError
from benchmark.results import safe_name
from benchmark.runner import RunRequest

# Axis name -> how a spec may spell it (singular or plural).
AXES = ("method", "task", "dataset", "model", "profile", "seed")
ENTRY_KEYS = {*AXES, *(a + "s" for a in AXES), "set", "resources", "device"}
TOP_KEYS = ENTRY_KEYS | {"name", "out", "grid", "exclude", "ray"}
RESOURCE_KEYS = {"cpus", "gpus", "memory", "custom"}
RAY_KEYS = {"num_cpus", "num_gpus", "max_retries"}
RAY_INSTALL_HINT = "Ray is not installed: pip install 'selfparam-bench[ray]' (or pip install 'ray[default]')"

SKIPPED, DONE, FAILED, PENDING = "skipped", "done", "failed", "pending"


@dataclass(frozen=True)
class Resources:
    """What one cell asks a Ray cluster for; the local executor runs cells one by one regardless."""

    cpus: float = 1
    gpus: float = 0
    memory: int | None = None  # bytes
    custom: tuple[tuple[str, float], ...] = ()

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory:
            options["memory"] = self.memory
        if self.custom:
            options["resources"] = dict(self.custom)
        return options

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU"] + ([f"{self.gpus:g} GPU"] if self.gpus else [])
        parts += [f"{self.memory / 2**30:.1f} GiB"] if self.memory else []
        parts += [f"{v:g} {k}" for k, v in self.custom]
        return ", ".join(parts)


@dataclass
class Cell:
    """One run of the sweep, resolved (result file known) or invalid (``error`` says why)."""

    index: int
    request: RunRequest
    resources: Resources
    path: Path | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def axes(self) -> dict[str, Any]:
        """The cell's coordinates, with the task's / profile's defaults filled in where known."""
        r = self.request
        values = {a: getattr(r, a) for a in AXES}
        return {a: self.identity.get(a, values[a]) for a in AXES}

    def label(self) -> str:
        a = self.axes()
        text = f"{a['method']} {a['task']}/{a['dataset'] or '-'} {a['model'] or '-'} {a['profile']} seed{a['seed']}"
        if self.request.overrides:
            text += " " + " ".join(f"{k}={v}" for k, v in self.request.overrides.items())
        return text


@dataclass
class Sweep:
    name: str
    out: Path
    cells: list[Cell]
    ray: dict[str, Any]
    source: Path | None = None


# ---- spec parsing and expansion ------------------------------------------------------------------

def load_spec(path: Path, overrides: dict[str, str] | None = None, out: Path | None = None,
              force: bool = False) -> Sweep:
    """Read a YAML spec and expand it into resolved cells (see ``expand``)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"sweep spec {str(path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise BenchError(f"sweep spec {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise BenchError(f"sweep spec {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}") from None
    sweep = expand(data, name=Path(path).stem, overrides=overrides, out=out, force=force)
    sweep.source = Path(path)
    return sweep


def expand(data: Any, name: str = "sweep", overrides: dict[str, str] | None = None,
           out: Path | None = None, force: bool = False) -> Sweep:
    """Turn a parsed spec into cells: the product of every axis and swept ``set`` value.

    ``overrides`` (the command line's ``--set``) replace the spec's values in every cell.
    """
    if not isinstance(data, dict):
        raise BenchError("a sweep spec must be a mapping (methods: …, tasks: …, …)")
    _check_keys(data, TOP_KEYS, "the spec")
    base = {k: v for k, v in data.items() if k in ENTRY_KEYS}
    entries = data.get("grid") or [{}]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BenchError("grid must be a list of mappings, each overriding some of the top-level keys")
    excludes = data.get("exclude") or []
    if not isinstance(excludes, list) or not all(isinstance(e, dict) for e in excludes):
        raise BenchError("exclude must be a list of mappings such as {method: memoryllm, profile: quick}")
    for rule in excludes:
        _check_keys(rule, set(AXES), "an exclude rule")
    ray_settings = data.get("ray") or {}
    if not isinstance(ray_settings, dict):
        raise BenchError("ray must be a mapping such as {num_cpus: 2}")
    _check_keys(ray_settings, RAY_KEYS, "ray")
    out_dir = Path(out or data.get("out") or Path("runs") / "sweeps" / str(data.get("name") or name))

    cells: list[Cell] = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, 1):
        where = f"grid entry {number}" if data.get("grid") else "the spec"
        _check_keys(entry, ENTRY_KEYS, where)
        merged = _merge(base, entry)
        for request, resources in _entry_cells(merged, where, overrides or {}, out_dir.absolute(), force):
            cell = _resolve(Cell(len(cells), request, resources))
            if any(_matches(rule, cell) for rule in excludes):
                continue
            key = str(cell.path) if cell.path else repr(asdict(request))
            if key in seen:
                continue  # the same run reached twice (e.g. an override equal to a default)
            seen.add(key)
            cells.append(cell)
    if not cells:
        raise BenchError("the sweep spec expands to no cells")
    return Sweep(str(data.get("name") or name), out_dir.absolute(), cells, ray_settings)


def _check_keys(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        raise BenchError(f"unknown key {unknown[0]!r} in {where}; allowed: {', '.join(sorted(allowed))}")


def _merge(base: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """An entry's values replace the defaults axis by axis; ``set`` and ``resources`` merge key by key."""
    merged = {}
    for axis in AXES:
        for source in (entry, base):
            present = [k for k in (axis, axis + "s") if k in source]
            if len(present) > 1:
                raise BenchError(f"both {axis!r} and {axis + 's'!r} are given; use one")
            if present:
                merged[axis] = source[present[0]]
                break
    for key in ("set", "resources"):
        for source in (base, entry):
            value = source.get(key) or {}
            if not isinstance(value, dict):
                raise BenchError(f"{key} must be a mapping, got {value!r}")
            merged.setdefault(key, {}).update(value)
    merged["device"] = entry.get("device", base.get("device", "auto"))
    return merged


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _entry_cells(merged: dict[str, Any], where: str, cli_overrides: dict[str, str], out: Path,
                 force: bool):
    for axis in ("method", "task"):
        if merged.get(axis) in (None, [], ""):
            raise BenchError(f"{where} names no {axis}s (add `{axis}s: [...]`)")
    axes = {
        "method": _as_list(merged["method"]),
        "task": _as_list(merged["task"]),
        "dataset": _as_list(merged.get("dataset")),
        "model": _as_list(merged.get("model")),
        "profile": _as_list(merged.get("profile") or "quick"),
        "seed": _as_list(merged.get("seed", 0)),
    }
    for seed in axes["seed"]:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BenchError(f"seeds must be integers, got {seed!r} in {where}")
    set_keys = list(merged["set"])
    set_values = [_as_list(merged["set"][k]) for k in set_keys]
    resources = parse_resources(merged["resources"], where)
    for method, task, dataset, model, profile, seed in itertools.product(*axes.values()):
        for combo in itertools.product(*set_values):
            values = {k: _override_text(k, v, where) for k, v in zip(set_keys, combo)}
            values.update(cli_overrides)
            yield RunRequest(
                method=str(method), task=str(task),
                dataset=_absolute_if_file(str(dataset)) if dataset is not None else None,
                model=str(model) if model is not None else None,
                profile=str(profile), seed=seed, device=str(merged["device"]),
                overrides=_absolute_data_path(values), out=out, force=force,
            ), resources


def _override_text(key: str, value: Any, where: str) -> str:
    """A YAML value as the string ``--set`` would have received."""
    if isinstance(value, dict):
        raise BenchError(f"set.{key} in {where} is a mapping; give a value or a list of values to sweep")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _absolute_if_file(dataset: str) -> str:
    """A data file named relative to the current folder, made absolute so Ray workers find it."""
    return str(Path(dataset).absolute()) if Path(dataset).is_file() else dataset


def _absolute_data_path(values: dict[str, str]) -> dict[str, str]:
    for key in ("data_path", "run.data_path"):
        if values.get(key) and Path(values[key]).exists():
            values[key] = str(Path(values[key]).absolute())
    return values


def _matches(rule: dict[str, Any], cell: Cell) -> bool:
    """Whether every axis of ``rule`` has one of its values in the cell (defaults filled in)."""
    axes = cell.axes()
    return all({str(axes[a]), str(getattr(cell.request, a))} & {str(v) for v in _as_list(values)}
               for a, values in rule.items())


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_resources(spec: dict[str, Any], where: str = "the spec") -> Resources:
    """``{cpus: 1, gpus: 1, memory: 16GiB, custom: {TPU: 1}}`` -> ``Resources``."""
    _check_keys(spec, RESOURCE_KEYS, f"resources of {where}")
    try:
        cpus = float(spec.get("cpus", 1))
        gpus = float(spec.get("gpus", 0))
        custom = tuple(sorted((str(k), float(v)) for k, v in (spec.get("custom") or {}).items()))
    except (TypeError, ValueError, AttributeError):
        raise BenchError(f"resources of {where}: cpus, gpus and custom amounts must be numbers") from None
    if cpus < 0 or gpus < 0:
        raise BenchError(f"resources of {where}: cpus and gpus must not be negative")
    memory = spec.get("memory")
    if memory is not None and not isinstance(memory, int):
        match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(memory))
        if not match or match.group(2).lower() not in _UNITS:
            raise BenchError(f"resources of {where}: memory {memory!r} is not a size such as 8GiB or 500MB")
        memory = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    return Resources(cpus=cpus, gpus=gpus, memory=memory, custom=custom)


def _resolve(cell: Cell) -> Cell:
    """Find the cell's result file; an invalid cell (unknown name, bad --set) keeps its error.

    Whether the method can run is left to the machine that runs the cell (a cluster's worker may
    have the GPU or checkpoint that the driver lacks); the run says so itself if not.
    """
    try:
        resolved = runner.resolve(cell.request, check_available=False)
    except Exception as exc:  # one bad cell must not stop the others
        cell.error = one_line(exc)
        return cell
    cell.path = resolved.path
    cell.identity = resolved.identity
    return cell


def unavailable_here(cell: Cell) -> str | None:
    """Why this machine cannot run the cell (a missing GPU, checkpoint or package), or None."""
    try:
        runner.resolve(cell.request)
    except UnavailableError as exc:
        return str(exc)
    except BenchError:
        return None
    return None


def one_line(exc: BaseException, limit: int = 500) -> str:
    """The error as one line for the summary (a cell's traceback is kept beside it)."""
    text = " ".join(str(exc).split())
    text = text if isinstance(exc, BenchError) else f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- running one cell (in-process or inside a Ray worker) ----------------------------------------

def run_cell(request: RunRequest) -> dict[str, Any]:
    """One ordinary run; never raises for a failure of the run itself (Ctrl-C still stops it)."""
    tick = time.perf_counter()
    try:
        outcome = runner.run(request)
    except Exception as exc:
        return {"status": FAILED, "error": one_line(exc), "traceback": traceback.format_exc(),
                "wall_s": time.perf_counter() - tick}
    return {
        "status": SKIPPED if outcome.reused else DONE,
        "path": str(outcome.path),
        "resumed_episodes": outcome.resumed_episodes,
        "headline": headline(outcome.result.get("scores", {})),
        "wall_s": time.perf_counter() - tick,
    }


def headline(scores: dict[str, Any]) -> str:
    """The first few mean scores of a result, for the sweep's summary."""
    parts = [f"{k}={v['mean']:.4f}" for k, v in scores.items()
             if isinstance(v, dict) and isinstance(v.get("mean"), (int, float))]
    return " ".join(parts[:3])


Report = Callable[[Cell, dict[str, Any]], None]


class LocalExecutor:
    """Cells one after another in this process (each loads its model like ``bench run`` does)."""

    name = "local"

    def run(self, cells: list[Cell], report: Report) -> None:
        for cell in cells:
            report(cell, run_cell(cell.request))


def import_ray():
    try:
        import ray
    except ImportError:
        raise BenchError(RAY_INSTALL_HINT) from None
    return ray


class RayExecutor:
    """Each cell a Ray task with the spec's resource request, on an existing or a local cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float | None = None,
                 num_gpus: float | None = None, max_retries: int = 1, verbose: bool = False) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.verbose = verbose

    def _connect(self, ray) -> bool:
        """Join ``address`` or start a local Ray; returns whether this call started it."""
        if ray.is_initialized():
            return False
        common = dict(log_to_driver=self.verbose, logging_level="INFO" if self.verbose else "WARNING")
        if self.address:
            env = {k: v for k, v in os.environ.items()
                   if k.startswith("SELFPARAM_BENCH_") or k in ("TRANSFORMERS_VERBOSITY", "HF_HUB_OFFLINE")}
            try:
                ray.init(address=self.address, runtime_env={"env_vars": env} if env else None, **common)
            except ConnectionError as exc:
                raise BenchError(f"cannot join the Ray cluster at {self.address!r}: {one_line(exc)}") from None
        else:
            # address="local": a fresh instance, never a cluster that `ray start` left on this machine
            ray.init(address="local", num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                     include_dashboard=False, **common)
        return True

    def run(self, cells: list[Cell], report: Report) -> None:
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
                    report(cell, {"status": FAILED, "error": f"needs {missing}; this Ray instance has "
                                  f"{_describe_totals(totals)} (raise --num-cpus or lower resources)"})
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
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or the cluster is gone: nothing left to stop
                    pass
            if started:
                ray.shutdown()


def _unschedulable(options: dict[str, Any], totals: dict[str, float]) -> str | None:
    wanted = {"CPU": options.get("num_cpus", 0), "GPU": options.get("num_gpus", 0),
              "memory": options.get("memory", 0), **options.get("resources", {})}
    for key, amount in wanted.items():
        if amount and amount > totals.get(key, 0):
            return f"{amount / 2**30:.1f} GiB memory" if key == "memory" else f"{amount:g} {key}"
    return None


def _describe_totals(totals: dict[str, float]) -> str:
    parts = [f"{totals.get('CPU', 0):g} CPU", f"{totals.get('GPU', 0):g} GPU"]
    if totals.get("memory"):
        parts.append(f"{totals['memory'] / 2**30:.1f} GiB memory")
    return ", ".join(parts)


# ---- the sweep itself: skip, dispatch, record ----------------------------------------------------

class StatusLog:
    """``<out>/<name>.sweep.jsonl``: a header line, then one line per cell, rewritten atomically."""

    def __init__(self, sweep: Sweep, executor: str) -> None:
        self.path = sweep.out / f"{safe_name(sweep.name)}.sweep.jsonl"
        self.header = {"sweep": sweep.name, "spec": str(sweep.source) if sweep.source else None,
                       "executor": executor, "out": str(sweep.out),
                       "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.rows: dict[int, dict[str, Any]] = {}

    def set(self, cell: Cell, result: dict[str, Any]) -> None:
        row = {"cell": cell.index, **cell.axes(),
               "overrides": dict(cell.request.overrides), "resources": cell.resources.describe(),
               "status": result["status"], "path": result.get("path") or (str(cell.path) if cell.path else None)}
        for key in ("error", "headline", "wall_s", "resumed_episodes", "traceback"):
            if result.get(key) is not None:
                row[key] = result[key]
        self.rows[cell.index] = row

    def counts(self) -> dict[str, int]:
        counts = {DONE: 0, SKIPPED: 0, FAILED: 0, PENDING: 0}
        for row in self.rows.values():
            counts[row["status"]] += 1
        return counts

    def write(self, finished: bool = False) -> None:
        header = {**self.header, "counts": self.counts()}
        if finished:
            header["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        lines = [header] + [self.rows[i] for i in sorted(self.rows)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(line, default=str) + "\n" for line in lines))
        os.replace(tmp, self.path)


def run_sweep(sweep: Sweep, executor, echo: Callable[[str], None] = print) -> StatusLog:
    """Skip finished cells, record invalid ones, run the rest with ``executor``; returns the log."""
    log = StatusLog(sweep, executor.name)
    todo: list[Cell] = []
    for cell in sweep.cells:
        if cell.error:
            log.set(cell, {"status": FAILED, "error": cell.error})
        elif cell.path.exists() and not cell.request.force:
            log.set(cell, {"status": SKIPPED, "path": str(cell.path)})
        else:
            log.set(cell, {"status": PENDING})
            todo.append(cell)
    counts = log.counts()
    echo(f"sweep {sweep.name}: {len(sweep.cells)} cells, {counts[SKIPPED]} already done, "
         f"{counts[FAILED]} invalid, {len(todo)} to run ({executor.name}); results in {sweep.out}")
    log.write()
    finished = 0

    def report(cell: Cell, result: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        log.set(cell, result)
        log.write()
        note = result.get("error") or result.get("headline") or ""
        wall = f" {result['wall_s']:.1f}s" if result.get("wall_s") is not None else ""
        echo(f"[{finished}/{len(todo)}] {result['status']:<7} {cell.label()}{wall}  {note}".rstrip())

    try:
        executor.run(todo, report)
    finally:
        log.write(finished=True)
    return log


def summary_table(log: StatusLog) -> str:
    from tabulate import tabulate

    rows = []
    for row in (log.rows[i] for i in sorted(log.rows)):
        sets = " ".join(f"{k}={v}" for k, v in row["overrides"].items())
        rows.append((row["cell"], row["method"], row["task"], row["dataset"], row["model"], row["profile"],
                     row["seed"], sets, row["status"], row.get("error") or row.get("headline") or ""))
    return tabulate(rows, headers=("#", "method", "task", "dataset", "model", "profile", "seed", "set",
                                   "status", "scores / error"), tablefmt="simple", maxcolwidths=[None] * 9 + [70])


def print_summary(log: StatusLog, stream=None) -> None:
    stream = stream or sys.stdout
    counts = log.counts()
    print(summary_table(log), file=stream)
    line = f"{counts[DONE]} done, {counts[SKIPPED]} skipped, {counts[FAILED]} failed"
    if counts[PENDING]:
        line += f", {counts[PENDING]} not run"
    print(f"{line}; status per cell: {log.path}", file=stream)


def with_only(sweep: Sweep, filters: dict[str, str]) -> Sweep:
    """Keep the cells whose axes match every ``--only axis=v1,v2``."""
    for axis in filters:
        if axis not in AXES:
            raise BenchError(f"--only {axis}=…: the axes are {', '.join(AXES)}")
    rule = {a: [s.strip() for s in v.split(",")] for a, v in filters.items()}
    cells = [c for c in sweep.cells if _matches(rule, c)]
    if not cells:
        raise BenchError("--only leaves no cells of the sweep")
    return replace(sweep, cells=cells)
