"""The interfaces every method, task and data set implements, and the metadata they declare.

A ``Method`` turns the base model plus injected contexts into something that answers prompts; a
``Task`` owns data, episodes and scoring; a ``Dataset`` is where a task's data comes from. They live
here, below ``methods/`` and ``tasks/``, so that a task can take a method (and the runner both)
without either package importing the other, and the registries (``benchmark.registry``) accept
subclasses of them only. What a method or task declares for tables and the leaderboard is described
in ``benchmark.method_info`` and ``benchmark.task_info``. This module imports neither torch nor any
method or task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from benchmark.method_info import DEFAULT_TABLE_ORDER, ROLES, STORAGE_CLASSES
from benchmark.task_info import MetricInfo, TaskInfo, problems
from benchmark.types import Answer, Context, Footprint, Prompt

if TYPE_CHECKING:
    import torch

    from benchmark.checkpoint import StreamCheckpoints
    from benchmark.config import RunParams
    from benchmark.models import LM


@dataclass
class NoParams:
    """For methods and tasks without settings of their own."""


# ---- methods -------------------------------------------------------------------------------------

# Method metadata that a subclass does not inherit (see ``Method``), with its defaults.
_METHOD_OWN_METADATA: dict[str, Any] = {
    "display_name": "",
    "table_order": DEFAULT_TABLE_ORDER,
    "role": "",
    "paper_rows": (),
    "stand_in": "",
}


class Method(ABC):
    """Turns the base model plus injected contexts into something that answers prompts.

    A fresh instance serves one episode: the runner builds a new one for every batch or sequence,
    so nothing leaks between episodes. Subclasses that train must work on their own copy of the
    weights (``lm.clone_model()``), never on ``lm.model``, which is shared and stays the original.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    uses_targets: ClassVar[bool] = False  # needs generated target sentences in its contexts
    sees_gold_context: ClassVar[bool] = False  # only the C+Q oracle

    # What tables and the leaderboard show of the method (benchmark/method_info.py); the runner
    # writes these into every result file. family and storage_class are inherited; display_name,
    # table_order, role, paper_rows and stand_in belong to one registered method, so a subclass that sets none
    # gets the defaults, not its parent's row name, place, role, published scores or stand-in note.
    display_name: ClassVar[str] = ""  # the row name ("SELF-PARAM"); "" shows the registered name
    family: ClassVar[str] = ""  # reference, fine-tuning, parametric, memory, long-context, retrieval
    storage_class: ClassVar[str] = ""  # "O(1)" or "O(n)" in the number of injected contexts; "" shows "—"
    table_order: ClassVar[int] = DEFAULT_TABLE_ORDER  # row position; the default follows the built-ins
    role: ClassVar[str] = ""  # "floor" (gains are measured against it), "ceiling" or ""
    # the paper's row labels for it, as printed ("SELF-PARAM, Q" in Table 1, "SELF-PARAM" in Table 2)
    paper_rows: ClassVar[tuple[str, ...]] = ()
    # non-empty when the row is not the published method itself but a stand-in for it (e.g. a small
    # version trained here): what it is, shown beside its row name in every table
    stand_in: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr, default in _METHOD_OWN_METADATA.items():
            if attr not in vars(cls):
                setattr(cls, attr, default)
        if cls.storage_class not in ("", *STORAGE_CLASSES):
            raise TypeError(
                f"{cls.__name__}.storage_class is {cls.storage_class!r}; "
                f"use one of {', '.join(STORAGE_CLASSES)} (or leave it empty)"
            )
        if cls.role not in ("", *ROLES):
            raise TypeError(f"{cls.__name__}.role is {cls.role!r}; use one of {', '.join(ROLES)} (or leave it empty)")
        if not isinstance(cls.paper_rows, tuple) or not all(isinstance(row, str) for row in cls.paper_rows):
            raise TypeError(f"{cls.__name__}.paper_rows is {cls.paper_rows!r}; use a tuple of row labels")

    def __init__(self, lm: LM, params: Any, run: RunParams, seed: int = 0) -> None:
        self.lm = lm
        self.params = params
        self.run = run
        self.seed = seed
        self.model: torch.nn.Module = lm.model
        self.stats: dict[str, float] = {"train_tokens": 0, "train_s": 0.0}
        # Set by the runner when checkpoints are on; methods that train save into it.
        self.checkpoints: StreamCheckpoints | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this method cannot run on this machine (missing package, checkpoint, GPU), or None."""
        return None

    @classmethod
    def params_problem(cls, params: Any) -> str | None:
        """Why a run with these settings must not start (judged before anything loads), or None."""
        return None

    # A no-op default on purpose, not an abstract method: the Base rows keep nothing.
    def inject(self, contexts: list[Context]) -> None:  # noqa: B027
        """Absorb the contexts: train, index or remember. Called once per batch or sequence step."""

    def generate(self, prompts: list[Prompt]) -> list[str]:
        """Answers, in order. The default asks ``self.model`` with the run's prompt format.

        Prompts are grouped by their generation settings (answer length, one line or many).
        """
        answers: list[str] = [""] * len(prompts)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault((p.max_new_tokens or self.run.max_new_tokens, p.multiline), []).append(i)
        for (max_new_tokens, multiline), indices in groups.items():
            outputs = self.lm.generate(
                [self.lm.format_prompt(prompts[i]) for i in indices],
                max_new_tokens=max_new_tokens,
                batch_size=self.run.eval_batch_size,
                model=self.model,
                stop_at_newline=not multiline,
                progress="answering",
            )
            for i, output in zip(indices, outputs):
                answers[i] = output
        return answers

    def answer(self, prompts: list[Prompt]) -> list[Answer]:
        """What the runner asks: the answers with what a method declares beside them. The default
        is ``generate``'s text alone; retrieval methods override it to declare what they retrieved."""
        return [Answer(text) for text in self.generate(prompts)]

    def footprint(self) -> Footprint:
        """Extra state kept beyond the base model; Base methods keep none."""
        return Footprint()

    def provenance(self) -> dict[str, Any]:
        """What this method's answers depend on beyond the code, the base model and its settings,
        e.g. a mechanism trained beforehand and kept in a cache: which file (its SHA-256) and how it
        was trained. The runner writes it into each episode record and, once per distinct value, at
        the top of the result file (``method_provenance``); empty for methods that load nothing."""
        return {}


# ---- data sets -----------------------------------------------------------------------------------


class Dataset(ABC):
    """A source of a task's data, opened on a path (empty: its default location) with a seed.

    ``kind`` says what it holds, and a task reads the data sets of its ``dataset_kind`` only
    (``benchmark.registry.open_dataset``): ``qa`` for contexts with probe questions
    (``tasks.data.base.QADataset``), ``crs`` for recommendation conversations
    (``tasks.data.crs.CRSDataset``).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "qa"

    def __init__(self, path: str = "", seed: int = 0) -> None:
        self.path = path
        self.seed = seed

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this data set cannot be loaded here, or None."""
        return None


# ---- tasks ---------------------------------------------------------------------------------------


@dataclass
class Step:
    """One step of an episode's plan: inject ``inject`` (nothing: probe the model as it is), then
    answer ``prompts``. ``expected`` is what the task needs to score each prompt, in prompt order
    (gold answers, probe records); only the task reads it. ``info`` goes into the step's record."""

    prompts: list[Prompt]
    inject: list[Context] = field(default_factory=list)
    expected: list[Any] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpisodePlan:
    """What one episode does, as the task sees it; the runner carries it out (``benchmark.runner``).

    ``setup`` is injected when the episode's method is built, before the steps: once per method, so
    episodes that share a method (``Task.method_key``) inject it once. ``record`` holds the fields
    the episode's record carries beside its steps (which contexts, target-sentence counts).
    """

    steps: list[Step]
    setup: list[Context] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


# Task metadata that a subclass does not inherit (see ``Task``), with its defaults.
_TASK_OWN_METADATA: dict[str, Any] = {"display_name": "", "paper_table": "", "paper_metrics": ()}


class Task(ABC):
    """Owns the data, plans each episode (what to inject, what to ask) and scores the answers.

    The runner carries the plans out: it builds the method, injects, asks, times, checks and
    records (``benchmark.runner.run_episode``); a task never calls a method itself.
    """

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
        for attr, default in _TASK_OWN_METADATA.items():
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

    @classmethod
    def method_problem(cls, method_cls: type[Method]) -> str | None:
        """Why this task does not apply to the method (checked before anything loads), or None."""
        return None

    @abstractmethod
    def episodes(self) -> list[str]:
        """Episode ids in run order; each is carried out and saved on completion."""

    def method_key(self, episode: str) -> str:
        """Episodes with the same key share one method, built, seeded and set up once by the first
        of them (e.g. inject once, probe in shards); the default, the episode itself, gives each
        episode a fresh method."""
        return episode

    @abstractmethod
    def plan(self, episode: str, method: Method) -> EpisodePlan:
        """What the episode injects and asks; ``method`` tells which contexts it needs (target
        sentences, the gold context)."""

    @abstractmethod
    def score(self, step: Step, answers: list[Answer]) -> dict[str, Any]:
        """The step's record: scored predictions (JSON-serialisable)."""

    def episode_record(self, plan: EpisodePlan, steps: list[dict[str, Any]]) -> dict[str, Any]:
        """The episode's record from its plan and scored steps; the runner adds cost and footprint."""
        return {**plan.record, "steps": steps}

    @abstractmethod
    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Scores over all episodes (means with bootstrap 95% intervals)."""

    @classmethod
    @abstractmethod
    def summary(cls, scores: dict[str, Any]) -> str:
        """A short human-readable table of the scores."""
