"""Reading result files: every finished run's JSON under the given files or folders, in the shape
readers expect (``benchmark.schema.upgrade``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.schema import upgrade

# Keys without which a JSON file is not a result file of this harness.
REQUIRED_KEYS = ("task", "method", "dataset", "model", "scores")


@dataclass
class Loaded:
    """The result dicts found, sorted, plus the files that were skipped and why."""

    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def result_files(paths: list[Path]) -> list[Path]:
    """``*.json`` files under each folder (recursively) and each file given directly."""
    files: set[Path] = set()
    for path in paths:
        if path.is_dir():
            files.update(p for p in path.rglob("*.json") if p.is_file())
        elif path.is_file():
            files.add(path)
        else:
            raise BenchError(f"no such result file or folder: {path}")
    return sorted(files)


def load_results(paths: list[Path]) -> Loaded:
    """Parse every result file; files that are not result files are skipped, not fatal."""
    loaded = Loaded()
    for path in result_files(paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            loaded.skipped.append((str(path), f"unreadable: {type(exc).__name__}"))
            continue
        if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
            loaded.skipped.append((str(path), "not a result file (task/method/dataset/model/scores missing)"))
            continue
        data["_path"] = path.as_posix()
        loaded.results.append(upgrade(data))
    loaded.results.sort(key=sort_key)
    return loaded


def sort_key(result: dict[str, Any]) -> tuple[Any, ...]:
    """A total order on runs that does not depend on the file system's listing order."""
    return (
        str(result.get("task")),
        str(result.get("dataset")),
        str(result.get("model")),
        str(result.get("method")),
        str(result.get("profile")),
        str(result.get("seed")),
        str(result.get("finished_at")),
        str(result.get("_path")),
    )
