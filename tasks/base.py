"""The Task interface: a task owns data, episodes and scoring; the runner owns the rest."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from benchmark.config import RunParams
from benchmark.models import LM
from methods.base import Method

# make_method(stream=None): a fresh method seeded by its episode (or by the named random stream).
MethodFactory = Callable[..., Method]


@dataclass
class NoParams:
    pass


class Task(ABC):
    """Yields episodes, runs a fresh method through each, and scores the answers."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    default_dataset: ClassVar[str] = "fictional"
    dataset_kind: ClassVar[str] = "qa"

    def __init__(self, params: Any, run: RunParams, dataset: str, data_path: str, seed: int) -> None:
        self.params = params
        self.run = run
        self.dataset = dataset
        self.data_path = data_path
        self.seed = seed

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    @abstractmethod
    def prepare(self, lm: LM) -> None:
        """Load and check the data against the model; every input error surfaces here, early."""

    @abstractmethod
    def episodes(self) -> list[str]:
        """Episode ids in run order; each is run with a fresh method and saved on completion."""

    @abstractmethod
    def run_episode(self, episode: str, make_method: MethodFactory) -> dict[str, Any]:
        """Run one episode; the returned record must be JSON-serialisable."""

    @abstractmethod
    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Scores over all episodes (means with bootstrap 95% intervals)."""

    @classmethod
    @abstractmethod
    def summary(cls, scores: dict[str, Any]) -> str:
        """A short human-readable table of the scores."""
