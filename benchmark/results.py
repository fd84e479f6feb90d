"""Result files: where a run's file lives, what it records, and crash-safe writing.

A run writes ``<name>.partial.jsonl`` as it goes (a header line, then one line per finished episode,
flushed and fsynced), so a killed run resumes from its last finished episode. The final
``<name>.json`` is written atomically (temporary file + rename) and the partial file removed. While
a run computes a file it holds ``<name>.lock`` (see ``RunLock``). A write that fails (read-only
folder, full disk) stops the run with a one-line ``BenchError`` and leaves every earlier file as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError

log = logging.getLogger(__name__)

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


def lock_path(path: Path) -> Path:
    return path.with_suffix(".lock")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


# What a run executes: the packages pyproject lists (methods/ and tasks/ are discovered and
# imported, so a new file there changes what a run does) and pyproject itself. The leaderboard's
# page and plots are outputs written beside its code, and documentation changes no result.
CODE_FOLDERS = ("benchmark", "methods", "tasks", "leaderboard")
# The same paths as git pathspecs (``is_code`` in git's terms), for the last commit that changed code.
CODE_PATHSPEC = ("benchmark/", "methods/", "tasks/", ":(glob)leaderboard/**/*.py", "pyproject.toml")


def is_code(path: str) -> bool:
    """Whether a repository path (as git prints it) is part of the code a run executes."""
    if path == "pyproject.toml":
        return True
    folder, _, rest = path.partition("/")
    if folder == "leaderboard":
        return rest.endswith(".py")
    return folder in CODE_FOLDERS and bool(rest)


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """The code's commit: the last commit of this checkout's history that changed code (``is_code``),
    with ``-dirty`` when the checkout's code differs from it (a modified, staged or untracked, not
    ignored, file that ``is_code``). A commit or change of the README, the tests, the leaderboard
    page, results or a sweep spec leaves it as it was (a spec's settings are in each result), so
    results of one version of the code keep one stamp however much is committed beside them."""
    try:
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%H", "HEAD", "--", *CODE_PATHSPEC],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode != 0 or not commit.stdout.strip():  # no commit yet, or none with code
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "-z", "--untracked-files=all"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if status.returncode != 0:
            return None
        return commit.stdout.strip() + ("-dirty" if _dirty(status.stdout) else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _dirty(porcelain_z: str) -> bool:
    """Whether ``git status --porcelain -z`` lists a change to code (a rename or copy names its
    source path in the entry after it)."""
    entries = iter(porcelain_z.split("\0"))
    for entry in entries:
        if not entry:
            continue
        paths = [entry[3:]]
        if entry[0] in "RC" or entry[1] in "RC":
            paths.append(next(entries, ""))
        if any(is_code(path) for path in paths):
            return True
    return False


def short_commit(commit: str | None) -> str:
    """``0123abc`` or ``0123abc-dirty`` for messages; ``unknown`` where none was recorded."""
    if not commit:
        return "unknown"
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def recorded_commit(path: Path) -> str | None:
    """The ``git_commit`` a result file records, read from its top level without parsing its
    episodes where the file is laid out as the runner writes it (one top-level key per line,
    ``git_commit`` before ``scores``); any other layout is parsed whole."""
    prefix = ' "git_commit": '
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(prefix):
                    value = json.loads(line[len(prefix) :].strip().rstrip(","))
                    return value if isinstance(value, str) else None
                if line.startswith((' "scores": ', ' "episodes": ')):
                    return None  # the runner writes git_commit before these: this file has none
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("git_commit") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write (read-only folder, full disk) into a one-line error naming the file."""
    try:
        yield
    except OSError as exc:
        raise BenchError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside ``path``, fsync it, then rename it over ``path``: a reader (or a
    crash, or a full disk) sees the old file or the new one, never a torn one."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False, default=str) + "\n")


class PartialLog:
    """Append-only record of finished episodes; tolerates a torn last line after ``kill -9``.

    Its header names the run (``config_hash``) and the code that computed the episodes
    (``git_commit``, as ``git_commit()`` gives it): episodes computed by other code are not mixed
    into this code's result. ``other_commit`` is the header's commit after a ``load`` that refused
    a log written at another commit (``unknown`` for a header from before commits were recorded).
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.other_commit: str | None = None

    def load(self) -> list[dict[str, Any]]:
        """Episodes finished by an earlier attempt of the same run (same config hash) at the same commit."""
        self.other_commit = None
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
                if "git_commit" in self.header and (
                    "git_commit" not in record or record["git_commit"] != self.header["git_commit"]
                ):
                    self.other_commit = short_commit(record.get("git_commit"))
                    return []  # computed by other code: start afresh (the caller says so)
                continue
            records.append(record)
        return records

    def start(self, records: list[dict[str, Any]]) -> None:
        """Rewrite the log with the header and the surviving episodes (drops a torn tail); atomic,
        so a failed rewrite keeps the earlier attempt's episodes."""
        write_text_atomic(self.path, "".join(json.dumps(r, default=str) + "\n" for r in [self.header, *records]))

    def append(self, record: dict[str, Any]) -> None:
        """Add a finished episode; a write cut short leaves a torn last line, which ``load`` drops."""
        with writing(self.path), self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class RunLock:
    """Held while one process computes a result file, so two identical runs never share its partial log.

    ``fcntl.flock`` on ``<name>.lock`` rather than a PID file created with O_CREAT|O_EXCL: the kernel
    drops a flock when its holder ends in any way, ``kill -9`` included, so a dead run's lock is taken
    over at once with no guess about staleness from a PID (which the system may have handed to an
    unrelated process since, and which means nothing to a run on another host of a shared folder).
    The holder's PID and host are written into the file only to name it in the refusal.
    """

    def __init__(self, path: Path, result: Path) -> None:
        self.path = path
        self.result = result
        self.fd: int | None = None
        self.created: list[Path] = []  # folders made for the lock, removed with it if still empty

    def acquire(self) -> None:
        """Take the lock, or raise a one-line ``BenchError`` naming the process that holds it."""
        with writing(self.path):
            self.created = [d for d in [self.path.parent, *self.path.parent.parents] if not d.exists()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while self.fd is None:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                except FileNotFoundError:  # a run beside us, stopped by bad input, removed the folder
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                    os.close(fd)
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):  # not "held by another"
                        raise
                    pid, host = (holder + ["?", "?"])[:2]  # "?" while the holder is still writing it
                    raise BenchError(
                        f"another bench run (pid {pid} on {host}) is computing {self.result}; "
                        "wait for it to finish or stop it (the same command then resumes its work)"
                    ) from None
                if not self._same_file(fd):  # the holder before us removed it on release: retry
                    os.close(fd)
                    continue
                previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
                if previous:
                    log.info("taking over the lock %s left by a run that ended (%s)", self.path, previous)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
                self.fd = fd

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the file while still holding it (a waiting process then retries on a new one)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
        for folder in self.created:  # a run stopped by bad input leaves no empty result folders
            with contextlib.suppress(OSError):
                folder.rmdir()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
