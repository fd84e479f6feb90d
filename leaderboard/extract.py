"""Pulling numbers out of result files, defensively.

Each task writes its own score keys (batch: ``qa_f1``/``acc``; sequential: per-step scores and a
retention matrix; recommendation: Recall@1 under the filters r1..r4). These helpers accept the
spellings those tasks use and return ``None`` for anything absent, so a renderer shows "—" instead
of failing or inventing a number. Per-unit scores (``units``) are what paired differences and
seed pooling resample.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable

from benchmark.metrics import cluster_summary, paired_difference

Summary = dict[str, Any]  # {"mean", "ci_low", "ci_high", "n"}
Units = dict[tuple[str, ...], float]  # (seed, episode, context or test point[, gold item]) -> value

# Keys under which a sequential result may keep its per-step mean QA-F1 and its retention matrix.
STEP_KEYS = ("per_step", "per_step_qa_f1", "qa_f1_per_step", "step_qa_f1", "steps", "step_f1", "curve")
MATRIX_KEYS = ("retention_matrix", "matrix", "qa_f1_matrix", "step_context_f1")
RULES = ("r1", "r2", "r3", "r4")


def number(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric and NaN values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def is_summary(value: Any) -> bool:
    return isinstance(value, dict) and number(value.get("mean")) is not None


def as_summary(value: Any) -> Summary | None:
    """A summary dict from a summary dict or a bare number (then without interval)."""
    if is_summary(value):
        return value
    if number(value) is not None:
        return {"mean": number(value), "ci_low": None, "ci_high": None, "n": None}
    return None


def scores(result: dict[str, Any]) -> dict[str, Any]:
    value = result.get("scores")
    return value if isinstance(value, dict) else {}


def metric(result: dict[str, Any], *names: str) -> Summary | None:
    """The first of ``names`` that the result's scores hold as a summary (or a number).

    A dotted name reaches into a nested score: ``efficacy.qa_f1`` is ``scores["efficacy"]["qa_f1"]``.
    """
    for name in names:
        value: Any = scores(result)
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        summary = as_summary(value)
        if summary is not None:
            return summary
    return None


def summary_metrics(result: dict[str, Any]) -> dict[str, Summary]:
    """Every top-level score that is a mean (with or without interval), in the file's order."""
    return {k: v for k, v in scores(result).items() if is_summary(v)}


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
        last = int(steps[-1])
        by_step = {int(k): _mean_of(value[k]) for k in steps}
        return [by_step.get(i) for i in range(last + 1)]
    return None


def step_curve(result: dict[str, Any]) -> list[float | None] | None:
    """Mean QA-F1 after each step 0..L of a sequential run, or None when it has none."""
    found = scores(result)
    for container in (found, found.get("qa_f1"), found.get("sequential")):
        if not isinstance(container, dict):
            continue
        for key in STEP_KEYS:
            series = _series(container.get(key))
            if series and any(v is not None for v in series):
                return series
    series = _series(found.get("qa_f1"))  # qa_f1 itself given per step
    if series and any(v is not None for v in series):
        return series
    matrix = retention_matrix(result)
    if matrix:
        rows = [[v for v in row if v is not None] for row in matrix]
        return [sum(r) / len(r) if r else None for r in rows]
    return None


def retention_matrix(result: dict[str, Any]) -> list[list[float | None]] | None:
    """Step × context mean QA-F1 of a sequential run, or None."""
    found = scores(result)
    for container in (found, found.get("qa_f1"), found.get("sequential")):
        if not isinstance(container, dict):
            continue
        for key in MATRIX_KEYS:
            value = container.get(key)
            if isinstance(value, dict):  # {"mean": matrix} or {"qa_f1": matrix, "acc": matrix}
                value = value.get("mean", value.get("qa_f1"))
            if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
                return [[_mean_of(v) for v in row] for row in value]
    return None


def recall(result: dict[str, Any], rule: str, k: int = 1) -> Summary | None:
    """Recall@k under filter ``rule`` (r1..r4) of a recommendation run, or None."""
    found = scores(result)
    flat = (
        rule, f"recall@{k}_{rule}", f"{rule}_recall@{k}", f"r@{k}_{rule}", f"recall{k}_{rule}",
        f"{rule}@{k}", f"recall_at_{k}_{rule}", f"{rule}_recall_at_{k}",
    )
    for name in flat:
        value = found.get(name)
        if is_summary(value) and (name != rule or k == 1):
            return value
        if isinstance(value, dict):  # e.g. {"r1": {"recall@1": {...}, "recall@5": {...}}}
            for inner in (f"recall@{k}", f"@{k}", str(k), f"r@{k}"):
                if is_summary(value.get(inner)):
                    return value[inner]
    for outer in (f"recall@{k}", f"recall_at_{k}", f"r@{k}", "recall"):
        value = found.get(outer)
        if isinstance(value, dict):
            inner = value.get(rule)
            if isinstance(inner, dict) and not is_summary(inner):
                inner = inner.get(f"@{k}", inner.get(str(k)))
            summary = as_summary(inner)
            if summary is not None:
                return summary
    return None


def params(result: dict[str, Any], scope: str) -> dict[str, Any]:
    value = result.get("config", {}).get("params", {}).get(scope, {})
    return value if isinstance(value, dict) else {}


def num_contexts(result: dict[str, Any]) -> int | None:
    """Contexts injected per batch (batch task), from the recorded task parameters."""
    value = params(result, "task").get("num_contexts")
    return value if isinstance(value, int) else None


def cost(result: dict[str, Any], key: str) -> float | None:
    value = result.get("cost")
    return number(value.get(key)) if isinstance(value, dict) else None


def train_rate(result: dict[str, Any]) -> float | None:
    """Training tokens per second, counting every example's whole sequence.

    With ``share_prefix`` a shared prefix is computed once per batch; counting it once per example
    it serves puts runs with and without sharing on the same work. Older files lack the count.
    """
    example_tokens, seconds = cost(result, "train_example_tokens"), cost(result, "train_s")
    if example_tokens and seconds:
        return example_tokens / seconds
    return cost(result, "train_tokens_per_s")


def rate_counts_computed_tokens_only(result: dict[str, Any]) -> bool:
    """True for a run that shared prefixes but whose file predates the per-example token count."""
    shared = number(params(result, "method").get("share_prefix"))
    return bool(shared) and cost(result, "train_example_tokens") is None and bool(cost(result, "train_tokens"))


def num_targets(result: dict[str, Any]) -> int:
    """Target sentences handed to the method over all episodes (0 for methods that use none)."""
    total = 0
    for episode in result.get("episodes") or []:
        if isinstance(episode, dict) and number(episode.get("num_targets")) is not None:
            total += int(episode["num_targets"])
    return total


def generator_label(result: dict[str, Any]) -> str:
    """Which target-sentence generator a run used: ``targets`` plus any generator-model setting."""
    run = params(result, "run")
    label = str(run.get("targets", "—"))
    extras = []
    for scope in ("run", "method"):
        for key, value in sorted(params(result, scope).items()):
            if "generator" in key and value not in (None, "", 0):
                extras.append(f"{key}={value}")
    return f"{label} ({', '.join(extras)})" if extras else label


def config_without_seed(result: dict[str, Any]) -> str:
    """The settings of a run apart from its seed, to tell apart runs that differ only in seed."""
    import json

    config = dict(result.get("config") or {})
    config.pop("seed", None)
    return json.dumps(config, sort_keys=True, default=str)


def pooled(results: Iterable[dict[str, Any]], value: Callable[[dict[str, Any]], Summary | None],
           units_of: Callable[[list[dict[str, Any]]], Units | None] | None = None) -> Summary | None:
    """One cell from several runs: the latest configuration's seeds, pooled (see ``seeds_summary``);
    several seeds add ``seeds`` to the summary."""
    runs = [r for r in results if value(r) is not None]
    if not runs:
        return None
    latest = max(runs, key=lambda r: (str(r.get("finished_at")), str(r.get("_path"))))
    chosen = [r for r in runs if config_without_seed(r) == config_without_seed(latest)]
    summary = seeds_summary(chosen, value, units_of)
    return summary if len(chosen) == 1 or summary is None else {**summary, "seeds": len(chosen)}


def seeds_summary(runs: list[dict[str, Any]], value: Callable[[dict[str, Any]], Summary | None],
                  units_of: Callable[[list[dict[str, Any]]], Units | None] | None = None) -> Summary | None:
    """One score of runs that differ only by seed.

    A single run keeps its own interval. Several seeds pool their units (contexts × seeds) into one
    bootstrap when every file holds them; older files without per-unit scores fall back to the mean
    of the seed means with the lowest and highest of them as the interval (``n`` = seeds).
    """
    present = [r for r in runs if value(r) is not None]
    if len(present) <= 1:
        return value(present[0]) if present else None
    found = units_of(present) if units_of else None
    if found:
        return cluster_summary(found, cluster(str(present[0].get("task"))))
    means = [value(r)["mean"] for r in present]  # type: ignore[index]
    return {"mean": sum(means) / len(means), "ci_low": min(means), "ci_high": max(means), "n": len(means)}


# ---- per-unit scores: what a paired comparison matches and a bootstrap resamples ------------------
_RECALL = re.compile(r"^(?:recall@(\d+)_)?(r\d+)$")  # r1 = Recall@1 under r1; recall@5_r1 = Recall@5


def _episodes(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in result.get("episodes") or [] if isinstance(e, dict)]


def _scored(result: dict[str, Any], step: int = -1) -> list[tuple[str, dict[str, Any]]] | None:
    """(episode, record with ``per_context`` and ``predictions``) of a QA run: a batch episode, or
    step ``step`` of a sequential episode; None when a sequence lacks that step."""
    found = []
    for episode in _episodes(result):
        record = episode
        if result.get("task") == "sequential":
            steps = episode.get("steps")
            if not isinstance(steps, list) or not -len(steps) <= step < len(steps):
                return None
            record = steps[step]
        found.append((str(episode.get("episode")), record))
    return found


def units(result: dict[str, Any], metric: str, step: int = -1) -> Units | None:
    """Per-unit values of one score, keyed (seed, episode, unit), or None when the file holds none.

    Batch: each context's mean over its questions; sequential: each context after step ``step``
    (the last by default; ``before.qa_f1`` is step 0); recommendation: each gold item of each test
    point, as hit or miss under Recall@k and a filter.
    """
    seed, found = str(result.get("seed")), {}
    if result.get("task") == "recommendation":
        match = _RECALL.match(metric)
        if not match:
            return None
        k, rule = match.group(1) or "1", match.group(2)
        for episode in _episodes(result):
            for p in episode.get("predictions") or []:
                hits = p.get("hits", {}).get(rule, {}).get(k) if isinstance(p, dict) else None
                if not isinstance(hits, list):
                    return None
                for i, hit in enumerate(hits):
                    found[(seed, str(episode.get("episode")), str(p.get("probe_id")), str(i))] = float(hit)
        return found or None
    if result.get("task") == "sequential" and metric.startswith("before."):
        metric, step = metric.removeprefix("before."), 0
    for episode, record in _scored(result, step) or []:
        per_context = record.get("per_context")
        if not isinstance(per_context, dict):
            return None
        for cid, values in per_context.items():
            value = number(values.get(metric)) if isinstance(values, dict) else None
            if value is None:
                return None
            found[(seed, episode, str(cid))] = value
    return found or None


def pooled_units(runs: list[dict[str, Any]], metric: str, step: int = -1) -> Units | None:
    """The units of several runs together (seeds keep them apart); None if a run lacks them or two
    runs share a seed."""
    found: Units = {}
    for run in runs:
        more = units(run, metric, step)
        if more is None or found.keys() & more.keys():
            return None
        found.update(more)
    return found or None


def probes(result: dict[str, Any]) -> set[tuple[str, ...]]:
    """What a run was scored on: (seed, episode, context, question) for every question answered
    (for recommendation: test point and gold item). Two runs pair only when these agree."""
    seed = str(result.get("seed"))
    if result.get("task") == "recommendation":
        return {(seed, str(e.get("episode")), str(p.get("probe_id")), str(gold))
                for e in _episodes(result) for p in e.get("predictions") or [] if isinstance(p, dict)
                for gold in p.get("gold") or []}
    return {(seed, episode, str(p.get("context_id")), str(p.get("question")))
            for episode, record in _scored(result) or [] for p in record.get("predictions") or []
            if isinstance(p, dict)}


def cluster(task: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """The independent unit a bootstrap draws: a whole sequence in sequential injection (its
    contexts share one model), else a context or a test point (all its gold items together)."""
    depth = 2 if task == "sequential" else 3
    return lambda key: key[:depth]


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], metric: str) -> Summary | None:
    """B minus A on one score over the same units (runs of the same seeds), with its paired
    bootstrap interval; None when the runs were not scored on the same questions."""
    asked_a = set().union(*(probes(r) for r in a))
    if not asked_a or asked_a != set().union(*(probes(r) for r in b)):
        return None
    units_a, units_b = pooled_units(a, metric), pooled_units(b, metric)
    if not units_a or not units_b or units_a.keys() != units_b.keys():
        return None
    return paired_difference(units_a, units_b, cluster(str(a[0].get("task"))))
