"""The result file's contract, schema 2: its typed shape, and the one conversion from schema 1.

A result file (``Result``) holds the run's identity, what tables show of the method and the task
(``method_info``, ``task_info``: see ``benchmark.method_info`` and ``benchmark.task_info``), the
config and environment, and the scores in two parts:

- ``scores`` is flat: score name -> summary ``{"mean", "ci_low", "ci_high", "n"}``. A score nested
  in another is named by its path (``efficacy.qa_f1`` is ``qa_f1`` inside ``efficacy``). Recall@k
  under filter r is ``recall@k_r``.
- ``details`` holds what is not a summary: ``curves`` (score -> its mean after each step 0..L, or
  None where a step has none), ``matrices`` (score -> step × context means), and the task's other
  top-level scores that are not summaries (counts, per-step rows, retention by distance, sections
  such as ``targets``) as the task's ``aggregate`` returned them.
- every episode carries ``per_unit``, one entry per probing step (the final one last; one entry
  when the task probes once): unit id -> score name -> the unit's value, or a list of values (one
  per gold item of a recommendation test point); and ``asked``: unit id -> what was asked of it
  (questions, or gold items) at the final step. These are what a paired comparison matches and a
  bootstrap resamples. An entry is None where the file has no per-unit scores for that step. The
  episode's own record, as the task wrote it, is kept beside them.

Schema 1 files held the nested dict each task's ``aggregate`` returns as ``scores`` and episodes as
each task records them. ``upgrade`` turns such a file (and the other spellings the leaderboard
accepted before tasks declared their metrics) into schema 2; the runner writes schema 2 through the
same functions (``split_scores``, ``with_units``), and ``nested_scores`` gives back what
``aggregate`` returned (what a task's ``summary`` reads) from a file of either schema.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NotRequired, Required, TypedDict, cast

SCHEMA_VERSION = 2


class Summary(TypedDict):
    """A mean with its bootstrap 95% interval over ``n`` units (no interval: None)."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    n: int | None


class Details(TypedDict, total=False):
    """What is not a summary. Besides these two keys it holds the aggregate's other non-summary
    top-level values under their own names (``steps``, ``retention``, ``num_sequences``, ...)."""

    curves: dict[str, list[float | None]]
    matrices: dict[str, list[list[float | None]]]


PerUnit = dict[str, dict[str, Any]]  # unit id -> score name -> value (or one value per gold item)


class EpisodeRecord(TypedDict, total=False):
    """What every episode record holds; the task's own fields (``steps``, ``per_context``,
    ``predictions``, ``context_ids``, ...) come beside these."""

    episode: Required[str]
    per_unit: list[PerUnit | None]
    # scores a task averages within the episode before over episodes (sequential: efficacy, mean
    # retention, interference), one value each: what a bootstrap over episodes draws for them
    per_episode: dict[str, float]
    asked: dict[str, list[str]]
    num_contexts: int
    num_targets: int
    # seconds (inject_s, eval_s, score_s, wall_s) and the method's counters, each an uninterrupted
    # run's; only where a run resumed: resume_overhead_s (setting up again a shared method that an
    # earlier episode records, replaying an injection up to its checkpoint) and resumed_train_s (the
    # killed attempt's training seconds up to the checkpoint, included in the seconds above)
    cost: dict[str, Any]
    footprint: dict[str, Any]
    provenance: dict[str, Any]  # only for a method that loads something from outside the repository


class Result(TypedDict):
    """A result file as the runner writes it."""

    schema_version: int
    task: str
    method: str
    dataset: str
    model: str
    profile: str
    seed: int
    method_info: dict[str, Any]
    task_info: dict[str, Any]
    config: dict[str, Any]
    overrides: dict[str, str]
    profile_entries: dict[str, list[str]]
    model_info: dict[str, Any]
    versions: dict[str, str]
    threads: dict[str, Any]
    device: NotRequired[dict[str, Any]]  # CPU instruction set, or GPU name, CUDA version, peak memory
    git_commit: str | None  # the checkout when the run started
    git_commit_at_end: NotRequired[str | None]  # only when the checkout changed during the run
    method_provenance: NotRequired[list[dict[str, Any]]]  # the episodes' distinct ``provenance``
    started_at: str
    finished_at: str
    scores: dict[str, Summary]
    details: Details
    cost: dict[str, Any]  # the episodes' costs summed (resume_overhead_s apart), rates, memory, storage
    episodes: list[EpisodeRecord]


# Details keys the conversion fills itself: an aggregate's own value under these names is not kept.
RESERVED_DETAILS = ("curves", "matrices")

# Spellings of schema 1 and earlier hand-made files. Per-step mean QA-F1 (a list, or {step: value})
# under any of these keys, at the top of the scores or inside "qa_f1":
_STEP_KEYS = ("per_step", "per_step_qa_f1", "qa_f1_per_step", "step_qa_f1", "steps", "step_f1", "curve")
# a step × context QA-F1 matrix (a list of rows, or {"mean": rows} / {"qa_f1": rows}):
_MATRIX_KEYS = ("retention_matrix", "matrix", "qa_f1_matrix", "step_context_f1")
# Recall@k under filter rN, as a flat score path (after flattening nested ones with "."); groups
# name the filter ("rule") and k (absent: k = 1).
_RECALL_SPELLINGS = tuple(
    re.compile(p)
    for p in (
        r"^(?:recall@|r@|recall|recall_at_)(?P<k>\d+)_(?P<rule>r\d+)$",  # recall@5_r1, r@5_r1, recall5_r1
        r"^(?P<rule>r\d+)(?:_recall@|@|_recall_at_)(?P<k>\d+)$",  # r1_recall@5, r1@5, r1_recall_at_5
        r"^(?P<rule>r\d+)$",  # r1: Recall@1
        r"^(?P<rule>r\d+)\.(?:recall@|@|r@)?(?P<k>\d+)$",  # {"r1": {"recall@5": ...}}
        r"^(?:recall@|recall_at_|r@)(?P<k>\d+)\.(?P<rule>r\d+)$",  # {"recall@5": {"r1": ...}}
        r"^recall\.(?P<rule>r\d+)(?:\.@?(?P<k>\d+))?$",  # {"recall": {"r1": {"@5": ...}}}
    )
)


def number(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric and NaN values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def is_summary(value: Any) -> bool:
    return isinstance(value, dict) and number(value.get("mean")) is not None


def as_summary(value: Any) -> dict[str, Any] | None:
    """A summary dict from a summary dict or a bare number (then without interval)."""
    if isinstance(value, dict) and is_summary(value):
        return value
    if number(value) is not None:
        return {"mean": number(value), "ci_low": None, "ci_high": None, "n": None}
    return None


def upgrade(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` in the current shape; the file's dict is not changed. A result already in it
    passes through as it is."""
    if result.get("schema_version") == SCHEMA_VERSION:
        return result if isinstance(result, dict) else dict(result)
    raw = result.get("scores")
    scores, details = split_scores(raw if isinstance(raw, dict) else {})
    episodes = result.get("episodes")
    episodes = [with_units(e) for e in episodes if isinstance(e, dict)] if isinstance(episodes, list) else []
    return {**result, "schema_version": SCHEMA_VERSION, "scores": scores, "details": details, "episodes": episodes}


def upgrade_all(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [upgrade(r) for r in results]


def split_scores(raw: dict[str, Any]) -> tuple[dict[str, Summary], Details]:
    """Nested scores (what a task's ``aggregate`` returns, or a schema-1 file's ``scores``) as flat
    ``scores`` and ``details``."""
    scores = _flat(raw)
    for name, summary in list(scores.items()):  # a name the file holds itself wins over another spelling
        canonical = _recall_name(name)
        if canonical:
            scores.setdefault(canonical, summary)
    details: dict[str, Any] = {k: v for k, v in raw.items() if not is_summary(v)}
    matrix = _matrix(raw)
    curve = _curve(raw, matrix)
    details["curves"] = {**_row_curves(raw.get("steps")), **({"qa_f1": curve} if curve else {})}
    details["matrices"] = {"qa_f1": matrix} if matrix else {}
    return scores, cast(Details, details)


def nested_scores(result: Mapping[str, Any]) -> dict[str, Any]:
    """The scores as the task's ``aggregate`` returned them (what ``Task.summary`` reads), from a
    result of either schema: a schema-1 file holds them as they are; in schema 2 they are the
    top-level summaries and the details other than ``curves`` and ``matrices`` (which hold the
    summaries nested in them under their dotted names)."""
    raw = result.get("scores")
    scores: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if result.get("schema_version") != SCHEMA_VERSION:
        return dict(scores)
    found = result.get("details")
    details: dict[str, Any] = found if isinstance(found, dict) else {}
    spellings = {name: _recall_name(name) for name in scores}
    aliases = {alias for name, alias in spellings.items() if alias and scores.get(alias) == scores[name]}
    nested: dict[str, Any] = {}
    for name, summary in scores.items():
        if name in aliases or ("." in name and name.split(".", 1)[0] in details):
            continue  # another spelling of a score, or a summary inside a detail
        nested[name] = summary
    nested.update((k, v) for k, v in details.items() if k not in RESERVED_DETAILS)
    return nested


# ---- scores ---------------------------------------------------------------------------------------
def _flat(scores: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every summary among the scores, by its dotted path, in the file's order."""
    found: dict[str, Any] = {}
    for key, value in scores.items():
        name = f"{prefix}{key}"
        if is_summary(value):
            found[name] = value
        elif isinstance(value, dict):
            found.update(_flat(value, name + "."))
    return found


def _recall_name(name: str) -> str | None:
    """``recall@k_rule`` for another spelling of Recall@k under a filter, None for anything else."""
    for spelling in _RECALL_SPELLINGS:
        match = spelling.match(name)
        if match:
            canonical = f"recall@{match.groupdict().get('k') or 1}_{match.group('rule')}"
            return canonical if canonical != name else None
    return None


def _mean_of(value: Any) -> float | None:
    if isinstance(value, dict):
        for key in ("mean", "qa_f1", "f1"):
            inner = value.get(key)
            if isinstance(inner, dict):
                inner = inner.get("mean")
            if number(inner) is not None:
                return number(inner)
        return None
    return number(value)


def _series(value: Any) -> list[float | None] | None:
    """A list of per-step values from a list or a {step: value} mapping."""
    if isinstance(value, list) and value:
        return [_mean_of(v) for v in value]
    if isinstance(value, dict) and value and all(str(k).lstrip("-").isdigit() for k in value):
        steps = sorted(value, key=lambda k: int(k))
        by_step = {int(k): _mean_of(value[k]) for k in steps}
        return [by_step.get(i) for i in range(int(steps[-1]) + 1)]
    return None


def _row_curves(rows: Any) -> dict[str, list[float | None]]:
    """Every score's curve from per-step rows (``[{"step": 0, "qa_f1": {...}, "acc": {...}}, ...]``)."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return {}
    names = dict.fromkeys(k for r in rows for k, v in r.items() if is_summary(v))
    return {n: [number(r[n]["mean"]) if is_summary(r.get(n)) else None for r in rows] for n in names}


def _containers(scores: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in (scores, scores.get("qa_f1")) if isinstance(c, dict)]


def _curve(scores: dict[str, Any], matrix: list[list[float | None]] | None) -> list[float | None] | None:
    """Mean QA-F1 after each step 0..L: from per-step scores, else the matrix's row means."""
    for container in _containers(scores):
        for key in _STEP_KEYS:
            series = _series(container.get(key))
            if series and any(v is not None for v in series):
                return series
    series = _series(scores.get("qa_f1"))  # qa_f1 itself given per step
    if series and any(v is not None for v in series):
        return series
    if matrix:
        rows = [[v for v in row if v is not None] for row in matrix]
        return [sum(r) / len(r) if r else None for r in rows]
    return None


def _matrix(scores: dict[str, Any]) -> list[list[float | None]] | None:
    """Step × context mean QA-F1, or None."""
    for container in _containers(scores):
        for key in _MATRIX_KEYS:
            value = container.get(key)
            if isinstance(value, dict):  # {"mean": matrix} or {"qa_f1": matrix, "acc": matrix}
                value = value.get("mean", value.get("qa_f1"))
            if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
                return [[_mean_of(v) for v in row] for row in value]
    return None


# ---- per-unit scores --------------------------------------------------------------------------------
def with_units(episode: dict[str, Any]) -> dict[str, Any]:
    """The episode with ``per_unit`` and ``asked``, from whichever schema-1 record it is:

    - probed after every step (``steps``: each with ``per_context`` and ``predictions``); a
      context's ``before.<score>`` is its score at step 0;
    - probed once, per context (``per_context`` and ``predictions`` with ``context_id``, ``question``);
    - probed once, per test point (``predictions`` with ``probe_id``, ``gold`` and ``hits``:
      filter -> k -> hit or miss of each gold item).
    """
    if "per_unit" in episode:
        return episode
    steps = episode.get("steps")
    if isinstance(steps, list):
        per_unit = [_contexts(s.get("per_context")) if isinstance(s, dict) else None for s in steps]
        if per_unit and per_unit[0] is not None:
            before = {cid: {f"before.{m}": v for m, v in values.items()} for cid, values in per_unit[0].items()}
            per_unit = [
                None if entry is None else {cid: {**values, **before.get(cid, {})} for cid, values in entry.items()}
                for entry in per_unit
            ]
        last = steps[-1] if steps and isinstance(steps[-1], dict) else {}
        return {**episode, "per_unit": per_unit, "asked": _questions(last.get("predictions"))}
    if "per_context" in episode:
        return {
            **episode,
            "per_unit": [_contexts(episode["per_context"])],
            "asked": _questions(episode.get("predictions")),
        }
    predictions = episode.get("predictions")
    if isinstance(predictions, list) and any(isinstance(p, dict) and "hits" in p for p in predictions):
        return {**episode, "per_unit": [_hits(predictions)], "asked": _gold_items(predictions)}
    return episode


def _contexts(per_context: Any) -> PerUnit | None:
    if not isinstance(per_context, dict):
        return None
    return {str(cid): dict(values) if isinstance(values, dict) else {} for cid, values in per_context.items()}


def _questions(predictions: Any) -> dict[str, list[str]]:
    asked: dict[str, list[str]] = {}
    for p in predictions if isinstance(predictions, list) else []:
        if isinstance(p, dict):
            asked.setdefault(str(p.get("context_id")), []).append(str(p.get("question")))
    return asked


def _hits(predictions: list[Any]) -> PerUnit:
    """Test point -> ``recall@k_rule`` -> hit or miss of each gold item."""
    found: PerUnit = {}
    for p in predictions:
        if not isinstance(p, dict):
            continue
        values = found.setdefault(str(p.get("probe_id")), {})
        hits = p.get("hits")
        for rule, by_k in hits.items() if isinstance(hits, dict) else []:
            for k, each in by_k.items() if isinstance(by_k, dict) else []:
                if isinstance(each, list) and str(k).isdigit():
                    values[f"recall@{k}_{rule}"] = [float(h) for h in each]
    return found


def _gold_items(predictions: list[Any]) -> dict[str, list[str]]:
    asked: dict[str, list[str]] = {}
    for p in predictions:
        if isinstance(p, dict):
            asked.setdefault(str(p.get("probe_id")), []).extend(str(g) for g in p.get("gold") or [])
    return asked
