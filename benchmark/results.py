"""Result files: where a run's file lives, what it records, and crash-safe writing.

A run writes ``<name>.partial.jsonl`` as it goes (a header line, then one line per finished episode,
flushed and fsynced), so a killed run resumes from its last finished episode. The final
``<name>.json`` is written atomically (temporary file + rename) and the partial file removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = ("selfparam-bench", "torch", "transformers", "peft", "numpy", "accelerate", "tokenizers")


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def result_path(out: Path, identity: dict[str, Any], config: dict[str, Any]) -> Path:
    """``out/task/dataset/model/method__profile__seedS__HASH.json``: one file per distinct run."""
    folder = out / safe_name(identity["task"]) / safe_name(identity["dataset"]) / safe_name(identity["model"])
    stem = f"{identity['method']}__{identity['profile']}__seed{identity['seed']}__{config_hash(config)}"
    return folder / f"{safe_name(stem)}.json"


def partial_path(path: Path) -> Path:
    return path.with_suffix(".partial.jsonl")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """The commit of this checkout, with ``-dirty`` when it has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=5,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PartialLog:
    """Append-only record of finished episodes; tolerates a torn last line after ``kill -9``."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header

    def load(self) -> list[dict[str, Any]]:
        """Episodes finished by an earlier attempt of the same run (same config hash)."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        records = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # torn write at the moment of the kill: everything before it is good
            if i == 0:
                if record.get("config_hash") != self.header["config_hash"]:
                    return []  # another run's leftovers: start afresh
                continue
            records.append(record)
        return records

    def start(self, records: list[dict[str, Any]]) -> None:
        """Rewrite the log with the header and the surviving episodes (drops a torn tail)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", encoding="utf-8") as handle:
            for record in [self.header, *records]:
                handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
