"""The Task interface: a task owns data, episodes and scoring; the runner owns the rest."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from benchmark.config import RunParams
from benchmark.models import LM
from benchmark.task_info import MetricInfo, TaskInfo, problems
from methods.base import Method

# make_method(stream=None): a fresh method seeded by its episode (or by the named random stream).
MethodFactory = Callable[..., Method]


@dataclass
class NoParams:
    pass


# Task metadata that a subclass does not inherit (see ``Task``), with its defaults.
_OWN_METADATA: dict[str, Any] = {"display_name": "", "paper_table": "", "paper_metrics": ()}


class Task(ABC):
    """Yields episodes, runs a fresh method through each, and scores the answers."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    default_dataset: ClassVar[str] = "fictional"
    dataset_kind: ClassVar[str] = "qa"

    # What tables and the leaderboard know of the task's scores (benchmark/task_info.py); the runner
    # writes these into every result file. display_name, paper_table and paper_metrics belong to one
    # registered task, so a subclass that sets none gets the defaults, not its parent's name or
    # place in the paper's tables; the rest is inherited.
    display_name: ClassVar[str] = ""  # how tables name the task ("batch injection"); "" shows the registered name
    version: ClassVar[int] = 1  # raise it when the scores change meaning
    metrics: ClassVar[tuple[MetricInfo, ...]] = ()  # every score a table may show; one is primary
    compared: ClassVar[tuple[str, ...]] = ()  # the scores `bench compare` pairs; () pairs the primary one
    paired_unit: ClassVar[str] = "contexts"  # what one paired unit is (plural, for messages)
    resampled_unit: ClassVar[str] = "contexts"  # what a bootstrap draws (plural, for messages)
    resample_episodes: ClassVar[bool] = False  # whole episodes are the independent units
    curves: ClassVar[tuple[str, ...]] = ()  # scores with a value after each step (the retention plot)
    paper_table: ClassVar[str] = ""  # the paper's table ("1" to "3") its results fill; "" for none
    paper_metrics: ClassVar[tuple[str, ...]] = ()  # the scores shown there; () shows the primary one

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr, default in _OWN_METADATA.items():
            if attr not in vars(cls):
                setattr(cls, attr, default)
        found = problems(TaskInfo.of_class(cls))
        if found:
            raise TypeError(f"{cls.__name__}: " + "; ".join(found))

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
