"""What a task declares about its scores for tables and the leaderboard, and how result files carry it.

A task class declares (see ``benchmark.api.Task``):

- ``display_name``: how tables name the task ("batch injection"); empty means the registered name.
- ``version``: raised when the task's scores change meaning, so results of two versions can be told
  apart.
- ``metrics``: a ``MetricInfo`` for every score it writes that a table may show: its name (its key in
  the flat scores; ``efficacy.qa_f1`` is ``qa_f1`` inside ``efficacy``), label, a short label for
  compact headers, whether it is the primary score (the one the leaderboard ranks by and pairs
  against the floor), whether higher is better, its unit, and whether it is a leaderboard column.
- ``compared``: the scores ``bench compare`` pairs, in order (default: the primary one).
- ``paired_unit`` / ``resampled_unit``: what one paired unit is and what a bootstrap draws (plural
  nouns, for messages), and ``resample_episodes``: whether whole episodes are the independent units
  (a sequence's contexts share one model) rather than each context or test point.
- ``curves``: the scores that have a value after each step (the retention plot).
- ``paper_table`` and ``paper_metrics``: which of the paper's tables ("1" to "3") the task's results
  fill, and the scores it shows there (default: the primary one).

The runner writes these as ``task_info`` into each result file, so a table or the leaderboard shows a
task's scores correctly without importing it. This module knows the shape only; it imports no task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What a value is measured in: "fraction" for scores between 0 and 1 (F1, accuracy, recall, shares).
DEFAULT_UNIT = "fraction"
METRIC_FIELDS = ("name", "label", "short", "primary", "higher_is_better", "unit", "board")
FIELDS = (
    "display_name",
    "version",
    "metrics",
    "compared",
    "paired_unit",
    "resampled_unit",
    "resample_episodes",
    "curves",
    "paper_table",
    "paper_metrics",
)
PAPER_TABLES = ("1", "2", "3")
LOWER_IS_BETTER = " (lower is better)"


@dataclass(frozen=True)
class MetricInfo:
    """One score of a task. ``higher_is_better`` is None for a diagnostic with no better direction."""

    name: str
    label: str = ""  # "" shows the name
    short: str = ""  # for compact headers (the paper's tables, axis labels); "" shows the label
    primary: bool = False
    higher_is_better: bool | None = True
    unit: str = DEFAULT_UNIT
    board: bool = True  # a column of the leaderboard

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)
        if not self.short:
            object.__setattr__(self, "short", self.label)

    @property
    def heading(self) -> str:
        """The column heading: the label, saying so when lower is better."""
        return self.label + (LOWER_IS_BETTER if self.higher_is_better is False else "")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> MetricInfo | None:
        """From one entry of ``task_info.metrics``; None without a name, defaults for mistyped fields."""
        name = record.get("name")
        if not isinstance(name, str) or not name:
            return None
        better = record.get("higher_is_better", True)
        return cls(
            name=name,
            label=_text(record, "label"),
            short=_text(record, "short"),
            primary=record.get("primary") is True,
            higher_is_better=better if better is None or isinstance(better, bool) else True,
            unit=_text(record, "unit") or DEFAULT_UNIT,
            board=record.get("board") is not False,
        )

    def record(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in METRIC_FIELDS}


@dataclass(frozen=True)
class TaskInfo:
    """One task's table metadata; ``name`` is its registered name."""

    name: str
    display_name: str = ""
    version: int = 1
    metrics: tuple[MetricInfo, ...] = ()
    compared: tuple[str, ...] = ()
    paired_unit: str = "contexts"
    resampled_unit: str = "contexts"
    resample_episodes: bool = False
    curves: tuple[str, ...] = ()
    paper_table: str = ""
    paper_metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)

    @classmethod
    def of_class(cls, task_cls: type) -> TaskInfo:
        """What a (registered) task class declares; attributes it lacks take their defaults."""
        name = str(getattr(task_cls, "name", task_cls.__name__))
        values = {field: getattr(task_cls, field, None) for field in FIELDS}
        values["metrics"] = [m.record() if isinstance(m, MetricInfo) else m for m in values["metrics"] or ()]
        return cls.from_record(name, values)

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any]) -> TaskInfo:
        """From a result file's ``task_info``; a missing or mistyped field takes its default."""
        metrics = record.get("metrics")
        parsed = (
            [MetricInfo.from_record(m) for m in metrics if isinstance(m, Mapping)] if isinstance(metrics, list) else []
        )
        version = record.get("version")
        return cls(
            name=name,
            display_name=_text(record, "display_name"),
            version=version if isinstance(version, int) and not isinstance(version, bool) else 1,
            metrics=tuple(m for m in parsed if m is not None),
            compared=_names(record, "compared"),
            paired_unit=_text(record, "paired_unit") or "contexts",
            resampled_unit=_text(record, "resampled_unit") or "contexts",
            resample_episodes=record.get("resample_episodes") is True,
            curves=_names(record, "curves"),
            paper_table=_text(record, "paper_table"),
            paper_metrics=_names(record, "paper_metrics"),
        )

    def record(self) -> dict[str, Any]:
        """The ``task_info`` object of a result file."""
        found = {field: getattr(self, field) for field in FIELDS}
        found["metrics"] = [m.record() for m in self.metrics]
        for field in ("compared", "curves", "paper_metrics"):
            found[field] = list(found[field])
        return found

    def metric(self, name: str) -> MetricInfo:
        """The declared metric, or one labelled by its name for a score the task does not declare."""
        return next((m for m in self.metrics if m.name == name), MetricInfo(name))

    @property
    def primary(self) -> MetricInfo | None:
        """The metric marked primary, else the first one declared."""
        return next((m for m in self.metrics if m.primary), self.metrics[0] if self.metrics else None)

    @property
    def board_metrics(self) -> list[str]:
        """The leaderboard's score columns: the primary first, then the other board metrics in order."""
        primary = self.primary
        first = [primary.name] if primary else []
        return first + [m.name for m in self.metrics if m.board and m.name not in first]

    @property
    def compared_metrics(self) -> tuple[str, ...]:
        return self.compared or ((self.primary.name,) if self.primary else ())

    @property
    def paper_columns(self) -> tuple[str, ...]:
        return self.paper_metrics or ((self.primary.name,) if self.primary else ())


def problems(info: TaskInfo) -> list[str]:
    """What is inconsistent in a task's declaration (empty when nothing is)."""
    found = []
    names = [m.name for m in info.metrics]
    if len(set(names)) != len(names):
        found.append(f"metrics named twice: {sorted({n for n in names if names.count(n) > 1})}")
    if sum(m.primary for m in info.metrics) > 1:
        found.append("more than one primary metric")
    for field in ("compared", "curves", "paper_metrics"):
        unknown = [n for n in getattr(info, field) if n not in names]
        if unknown:
            found.append(f"{field} names undeclared metrics {unknown}")
    if info.paper_table not in ("", *PAPER_TABLES):
        found.append(f"paper_table is {info.paper_table!r}; use one of {', '.join(PAPER_TABLES)} (or leave it empty)")
    return found


def _text(record: Mapping[str, Any], field: str) -> str:
    value = record.get(field)
    return value if isinstance(value, str) else ""


def _names(record: Mapping[str, Any], field: str) -> tuple[str, ...]:
    value = record.get(field)
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, (list, tuple)) else ()
