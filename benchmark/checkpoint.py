"""Checkpoints inside an injection, so that a killed run loses at most a minute of training.

A batch injection is one episode: without these, a kill during its training (minutes here, hours
at the paper's scale) loses all of it. A trained method saves its trainable tensors, optimizer,
progress counters, torch random state and its position in the data order every ``every_s``
seconds, atomically, into a folder beside the partial log. A rerun replays the data order up to
that position (drawing the same batches, so every random stream advances as it did) without
training, loads the saved state and goes on: the result equals an uninterrupted run's.

Its cost too: the checkpoint also keeps the injection's training seconds up to it, which the
rerun credits, and the rerun's replay is resume overhead (see the two keys below).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmark.results import safe_name

# Cost keys of a resumed run, in a method's ``stats`` and an episode's cost, so that its seconds are
# an uninterrupted run's (``benchmark.runner.episode_cost`` applies them to ``inject_s`` and ``wall_s``):
# - seconds a resumed run spends that an uninterrupted one would not (replaying an injection's data
#   order up to its checkpoint, setting up again a shared method an earlier episode recorded): kept
#   apart, outside the method's costs (``train_s``, ``inject_s``, ``wall_s``);
RESUME_OVERHEAD = "resume_overhead_s"
# - training seconds a killed attempt spent up to its checkpoint, which the resumed run takes over
#   instead of spending them again: included in ``train_s``, ``inject_s`` and ``wall_s``, which would
#   otherwise lose them.
RESUMED_TRAIN = "resumed_train_s"


class InjectionCheckpoint:
    """The checkpoint of one injection (one call of a method's ``inject``)."""

    def __init__(self, path: Path, tag: dict[str, Any], every_s: float) -> None:
        self.path, self.tag, self.every_s = path, tag, every_s
        self.last_save = time.monotonic()

    def load(self, total_steps: int) -> dict[str, Any] | None:
        """The saved state if it belongs to this run, injection and data order, else None."""
        if not self.path.exists():
            return None
        try:
            state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a file cut short by a full disk: start the injection over
            print(f"ignoring unreadable checkpoint {self.path.name}: {error}", file=sys.stderr)
            return None
        if state.get("tag") != {**self.tag, "total_steps": total_steps}:
            return None
        return state

    def due(self) -> bool:
        return time.monotonic() - self.last_save >= self.every_s

    def save(self, state: dict[str, Any], total_steps: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({**state, "tag": {**self.tag, "total_steps": total_steps}}, tmp)
        os.replace(tmp, self.path)
        self.last_save = time.monotonic()


class StreamCheckpoints:
    """Hands one method instance a checkpoint per injection, numbered in call order."""

    def __init__(self, folder: Path, stream: str, config_hash: str, every_s: float) -> None:
        self.folder, self.stream, self.config_hash, self.every_s = folder, stream, config_hash, every_s
        self.injections = 0

    def next_injection(self) -> InjectionCheckpoint:
        index = self.injections
        self.injections += 1
        name = f"{safe_name(self.stream)}@{index}.pt"
        tag = {"config_hash": self.config_hash, "stream": self.stream, "injection": index}
        return InjectionCheckpoint(self.folder / name, tag, self.every_s)


class Checkpoints:
    """The checkpoint folder of one result file; ``every_s=None`` turns checkpoints off."""

    def __init__(self, folder: Path, config_hash: str, every_s: float | None) -> None:
        self.folder, self.config_hash, self.every_s = folder, config_hash, every_s

    def for_stream(self, stream: str) -> StreamCheckpoints | None:
        if self.every_s is None:
            return None
        return StreamCheckpoints(self.folder, stream, self.config_hash, self.every_s)

    def remove_stream(self, stream: str) -> None:
        """Drop a finished episode's checkpoints (its record is in the partial log now)."""
        for path in self.folder.glob(f"{safe_name(stream)}@*.pt"):
            path.unlink(missing_ok=True)

    def remove_all(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def checkpoint_folder(result: Path) -> Path:
    return result.with_suffix(".checkpoints")
