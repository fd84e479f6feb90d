"""A sweep spec and its cells: parsing the YAML, expanding its axes, ``set`` values, ``grid`` entries
and ``exclude`` rules into one resolved cell per run (its result file named, or the error that makes
it invalid), the resources a cell asks a cluster for, and the shared data it needs.

``methods: all`` stands for every registered method that can run on the machine reading the spec;
cells where the task does not apply to such a method are left out, not reported as invalid.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from benchmark import runner
from benchmark.errors import BenchError, UnavailableError
from benchmark.paths import shared_data, shared_data_dir
from benchmark.registry import METHODS, TASKS
from benchmark.runner import RunRequest

AXES = ("method", "task", "dataset", "model", "profile", "seed")
ENTRY_KEYS = {*AXES, *(a + "s" for a in AXES), "set", "resources", "device", "needs_data"}
TOP_KEYS = ENTRY_KEYS | {"name", "out", "grid", "exclude", "ray"}
RESOURCE_KEYS = {"cpus", "gpus", "memory", "custom"}
RAY_KEYS = {"num_cpus", "num_gpus", "max_retries"}
ALL_METHODS = "all"  # `methods: all`: every registered method that can run here


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
    needs_data: tuple[str, ...] = ()  # folders under the shared data folder that the cell reads

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
    notes: list[str] = field(default_factory=list)  # what the spec asked for that is left out, and why


def load_spec(
    path: Path, overrides: dict[str, str] | None = None, out: Path | None = None, force: bool = False
) -> Sweep:
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


def expand(
    data: Any,
    name: str = "sweep",
    overrides: dict[str, str] | None = None,
    out: Path | None = None,
    force: bool = False,
) -> Sweep:
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
    notes: list[str] = []
    for number, entry in enumerate(entries, 1):
        where = f"grid entry {number}" if data.get("grid") else "the spec"
        _check_keys(entry, ENTRY_KEYS, where)
        merged = _merge(base, entry)
        every = merged.get("method") == ALL_METHODS
        if every:
            merged["method"], left_out = runnable_methods()
            notes += [n for n in left_out if n not in notes]
        needs = _needs_data(merged["needs_data"], where)
        for request, resources in _entry_cells(
            merged, where, overrides or {}, out_dir.absolute(), force, applicable_only=every
        ):
            cell = _resolve(Cell(len(cells), request, resources, needs_data=needs))
            if any(_matches(rule, cell) for rule in excludes):
                continue
            key = str(cell.path) if cell.path else repr(asdict(request))
            if key in seen:
                continue  # the same run reached twice (e.g. an override equal to a default)
            seen.add(key)
            cells.append(cell)
    if not cells:
        raise BenchError("the sweep spec expands to no cells")
    return Sweep(str(data.get("name") or name), out_dir.absolute(), cells, ray_settings, notes=notes)


def runnable_methods() -> tuple[list[str], list[str]]:
    """What ``methods: all`` means here: the registered methods with no ``unavailable_reason``, and
    a note for each one left out, so a newly registered method joins every ``all`` sweep."""
    names, notes = [], []
    for name, cls in METHODS.items():
        reason = cls.unavailable_reason()
        if reason:
            notes.append(f"method {name}: not run here ({reason})")
        else:
            names.append(name)
    return names, notes


def _applies(method: str, task: str) -> bool:
    """Whether ``task`` takes ``method``; an unknown name is left for its cell to report."""
    if method not in METHODS or task not in TASKS:
        return True
    return not TASKS.get(task).method_problem(METHODS.get(method))


def _needs_data(value: Any, where: str) -> tuple[str, ...]:
    """``needs_data``: a folder, or a list of them, relative to the shared data folder."""
    folders = _as_list(value) if value is not None else []
    if not all(isinstance(f, str) and f.strip() for f in folders):
        raise BenchError(f"needs_data in {where} must be a folder or a list of folders under the shared data folder")
    return tuple(folders)


def data_absent(cell: Cell) -> str | None:
    """Why the cell is skipped for want of shared data (e.g. a licensed set not copied here), or None."""
    missing = [f for f in cell.needs_data if shared_data(*f.split("/")) is None]
    if not missing:
        return None
    return f"data not present ({', '.join(missing)} under {shared_data_dir()})"


def _check_keys(mapping: Mapping[str, Any], allowed: set[str], where: str) -> None:
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
    merged["needs_data"] = entry.get("needs_data", base.get("needs_data"))
    return merged


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _entry_cells(
    merged: dict[str, Any],
    where: str,
    cli_overrides: dict[str, str],
    out: Path,
    force: bool,
    applicable_only: bool = False,
) -> Iterator[tuple[RunRequest, Resources]]:
    """One request per combination of the entry's axes and swept ``set`` values; with
    ``applicable_only`` (``methods: all``) none for a method that the task does not apply to."""
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
        if applicable_only and not _applies(str(method), str(task)):
            continue
        for combo in itertools.product(*set_values):
            values = {k: _override_text(k, v, where) for k, v in zip(set_keys, combo)}
            values.update(cli_overrides)
            yield (
                RunRequest(
                    method=str(method),
                    task=str(task),
                    dataset=_absolute_if_file(str(dataset)) if dataset is not None else None,
                    model=str(model) if model is not None else None,
                    profile=str(profile),
                    seed=seed,
                    device=str(merged["device"]),
                    overrides=_absolute_data_path(values),
                    out=out,
                    force=force,
                ),
                resources,
            )


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
    return all(
        {str(axes[a]), str(getattr(cell.request, a))} & {str(v) for v in _as_list(values)} for a, values in rule.items()
    )


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


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
