"""Pulling numbers out of result files, defensively.

Every function takes a result as ``load`` returns it or as a file holds it: ``upgrade`` brings both
to one shape (flat ``scores``, ``details``, per-unit scores per episode), so nothing here knows how a
task or an older file spelled its scores. What a task's scores are (labels, the primary one, which
have a curve, what a bootstrap resamples) is its metadata, read through ``leaderboard.meta``. Absent
values are ``None``, so a renderer shows "—" instead of failing or inventing a number. Per-unit
scores (``units``) are what paired differences and seed pooling resample.

Seeds change the methods' randomness, not the data (the data seed is fixed): every seed of a
configuration answers the same contexts. One context (a sequence, a test point) is therefore one
independent unit however many seeds answered it, and a bootstrap draws its answers under every seed
together (``cluster``); counting each seed's copy apart would shrink intervals by about sqrt(seeds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from benchmark.metrics import cluster_summary, paired_difference
from benchmark.schema import as_summary as as_summary  # re-exported for readers
from benchmark.schema import is_summary, upgrade
from benchmark.schema import number as number  # re-exported for readers
from benchmark.task_info import TaskInfo
from leaderboard import meta

Summary = dict[str, Any]  # {"mean", "ci_low", "ci_high", "n"}, and "interval": SEED_RANGE when it is one
Units = dict[tuple[str, ...], float]  # (seed, episode, context or test point[, gold item]) -> value
SCORED_SPLIT = "test"  # the split scored runs use; dev is for tuning (task setting ``split``)
SEED_RANGE = "seed range"  # an interval that is the lowest and highest seed mean, not a bootstrap


def scores(result: dict[str, Any]) -> dict[str, Summary]:
    """The result's flat scores: name -> summary."""
    value = upgrade(result).get("scores")
    return value if isinstance(value, dict) else {}


def metric(result: dict[str, Any], *names: str) -> Summary | None:
    """The first of ``names`` that the result holds as a summary (``efficacy.qa_f1``: ``qa_f1``
    inside ``efficacy``)."""
    found = scores(result)
    for name in names:
        if is_summary(found.get(name)):
            return found[name]
    return None


def step_curve(result: dict[str, Any], name: str) -> list[float | None] | None:
    """The mean of score ``name`` after each step 0..L, or None when the result has no such curve."""
    details = upgrade(result).get("details")
    curves = details.get("curves") if isinstance(details, dict) else None
    curve = curves.get(name) if isinstance(curves, dict) else None
    return curve if isinstance(curve, list) and curve else None


def params(result: dict[str, Any], scope: str) -> dict[str, Any]:
    value = result.get("config", {}).get("params", {}).get(scope, {})
    return value if isinstance(value, dict) else {}


def split(result: dict[str, Any]) -> str:
    """The split a run's contexts came from (task setting ``split``); a file or task without the
    setting ran on the scored split, the only one there was."""
    value = params(result, "task").get("split")
    return value if isinstance(value, str) and value else SCORED_SPLIT


def on_scored_split(result: dict[str, Any]) -> bool:
    return split(result) == SCORED_SPLIT


def num_contexts(result: dict[str, Any]) -> int | None:
    """Contexts injected per batch (batch task), from the recorded task parameters."""
    value = params(result, "task").get("num_contexts")
    return value if isinstance(value, int) else None


def cost(result: dict[str, Any], key: str) -> float | None:
    value = result.get("cost")
    return number(value.get(key)) if isinstance(value, dict) else None


def device(result: dict[str, Any]) -> str | None:
    """The device a run's costs were measured on: a GPU's name, a CPU's model and instruction set
    ("+bf16" where it multiplies bf16 natively); None for a file that recorded none."""
    record = result.get("device")
    if not isinstance(record, dict) or not record.get("type"):
        return None
    if record["type"] == "cuda":
        return str(record.get("name") or "cuda")
    parts = [str(record[k]) for k in ("cpu_model", "cpu_capability") if record.get(k)]
    return (" ".join(parts) or str(record["type"])) + ("+bf16" if record.get("bf16_instructions") else "")


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


def variant(result: dict[str, Any]) -> dict[str, Any]:
    """The run's ``--set`` values outside its task's settings (e.g. ``targets=implications``): they
    make it a variant of the method rather than the method at its profile. Task settings such as
    ``num_contexts`` are left out: every method of a board or table cell shares them."""
    task = params(result, "task")
    overrides = result.get("overrides")
    if not isinstance(overrides, dict):
        return {}
    return {key: value for key, value in sorted(overrides.items()) if key not in task}


def variant_label(result: dict[str, Any]) -> str:
    """``variant`` as ``key=value, ...`` (empty for a run at its profile's settings)."""
    return ", ".join(f"{key}={value}" for key, value in variant(result).items())


def config_without_seed(result: dict[str, Any]) -> str:
    """The settings of a run apart from its seed, to tell apart runs that differ only in seed."""
    import json

    config = dict(result.get("config") or {})
    config.pop("seed", None)
    return json.dumps(config, sort_keys=True, default=str)


def settings(result: dict[str, Any]) -> dict[str, str]:
    """The run's configuration apart from its seed, flat (``key`` -> value as text): what a note
    names when it says which of several configurations a cell shows."""
    config = result.get("config") or {}
    flat = {str(k): str(v) for k, v in sorted(config.items()) if k not in ("seed", "params")}
    for scope in ("run", "task", "method"):
        flat.update({str(k): str(v) for k, v in sorted(params(result, scope).items())})
    return flat


def chosen(
    results: Iterable[dict[str, Any]], value: Callable[[dict[str, Any]], Any]
) -> tuple[list[dict[str, Any]], str]:
    """The runs one cell shows, and a note saying which configuration they are when there was a choice.

    The runs are the seeds of the latest configuration that has a value. Runs at the method's
    profile settings (no ``variant``) come before variants such as ``targets=implications``, which a
    paper table's cell would otherwise show as the method's score just because they ran last;
    variants count only when nothing else has a value. The note is empty when those candidates share
    one configuration; else it names the settings that differ among them, at the chosen runs'
    values (``key=value, ...``), and how many configurations there were."""
    runs = [r for r in results if value(r) is not None]
    runs = [r for r in runs if not variant(r)] or runs
    if not runs:
        return [], ""
    latest = max(runs, key=lambda r: (str(r.get("finished_at")), str(r.get("_path"))))
    shown = [r for r in runs if config_without_seed(r) == config_without_seed(latest)]
    configs = {config_without_seed(r) for r in runs}
    if len(configs) < 2:
        return shown, ""
    at = settings(latest)
    every = [settings(r) for r in runs]
    keys = sorted({k for s in every for k in s if any(o.get(k) != s.get(k) for o in every)})
    label = ", ".join(f"{k}={at.get(k, '—')}" for k in keys)
    return shown, f"the latest of {len(configs)} configurations, {label}"


def pooled(
    runs: list[dict[str, Any]],
    value: Callable[[dict[str, Any]], Summary | None],
    units_of: Callable[[list[dict[str, Any]]], Units | None] | None = None,
) -> Summary | None:
    """One cell from the runs it shows (``chosen``): their seeds, pooled (see ``seeds_summary``);
    several seeds add ``seeds`` to the summary."""
    summary = seeds_summary(runs, value, units_of)
    return summary if len(runs) == 1 or summary is None else {**summary, "seeds": len(runs)}


def seeds_summary(
    runs: list[dict[str, Any]],
    value: Callable[[dict[str, Any]], Summary | None],
    units_of: Callable[[list[dict[str, Any]]], Units | None] | None = None,
) -> Summary | None:
    """One score of runs that differ only by seed.

    A single run keeps its own interval. Several seeds pool their units into one bootstrap when
    every file holds them (per unit or per episode, see ``units``): a context's answers under every
    seed are drawn together, as the seeds share the contexts (see ``cluster``). Files without
    per-unit scores give the mean of the seed means with the lowest and highest of them as the
    interval, marked ``"interval": SEED_RANGE`` so it is never printed as a 95% interval (``n`` = seeds).
    """
    present = [r for r in runs if value(r) is not None]
    if len(present) <= 1:
        return value(present[0]) if present else None
    found = units_of(present) if units_of else None
    if found:
        return cluster_summary(found, cluster(meta.task_of(present[0])))
    return seed_range([value(r)["mean"] for r in present])  # type: ignore[index]


def seed_range(means: list[float]) -> Summary:
    """The mean of the seed means, with their lowest and highest as a range (not a 95% interval)."""
    low, high = min(means), max(means)
    return {"mean": sum(means) / len(means), "ci_low": low, "ci_high": high, "n": len(means), "interval": SEED_RANGE}


# ---- per-unit scores: what a paired comparison matches and a bootstrap resamples ------------------
def units(result: dict[str, Any], metric: str, step: int = -1) -> Units | None:
    """Per-unit values of one score, keyed (seed, episode, unit[, gold item]), or None when the file
    does not hold them for every unit.

    Units are what the task probes once per step: contexts, or the gold items of test points;
    ``step`` picks a step of a task that probes after every step (the last by default). A score the
    task averages within each episode first (efficacy, mean retention, interference) has one value
    per episode (``episode_units``).
    """
    found = probed_units(result, metric, step)
    return episode_units(result, metric) if found is None and step == -1 else found


def episode_units(result: dict[str, Any], metric: str) -> Units | None:
    """One value per episode of a score the task averages within each episode first (its
    ``per_episode`` record), keyed (seed, episode, episode); None unless every episode has it."""
    view = upgrade(result)
    seed = str(view.get("seed"))
    found: Units = {}
    for episode in view.get("episodes") or []:
        per_episode = episode.get("per_episode")
        value = number(per_episode.get(metric)) if isinstance(per_episode, dict) else None
        if value is None:
            return None
        name = str(episode.get("episode"))
        found[(seed, name, name)] = value
    return found or None


def probed_units(result: dict[str, Any], metric: str, step: int = -1) -> Units | None:
    """The per-unit values the file stores for one score at one step (see ``units``)."""
    view = upgrade(result)
    seed = str(view.get("seed"))
    found: Units = {}
    for episode in view.get("episodes") or []:
        per_unit = episode.get("per_unit")
        if not isinstance(per_unit, list) or not -len(per_unit) <= step < len(per_unit):
            return None
        entry = per_unit[step]
        if not isinstance(entry, dict):
            return None
        name = str(episode.get("episode"))
        for unit, values in entry.items():
            value = values.get(metric) if isinstance(values, dict) else None
            items = {(str(i),): v for i, v in enumerate(value)} if isinstance(value, list) else {(): value}
            for key, each in items.items():
                finite = number(each)
                if finite is None:
                    return None
                found[(seed, name, str(unit), *key)] = finite
    return found or None


def pooled_units(runs: list[dict[str, Any]], metric: str, step: int = -1) -> Units | None:
    """The units of several runs together (keyed apart by seed; ``cluster`` draws a unit's seeds
    together); None if a run lacks them or two runs share a seed."""
    found: Units = {}
    for run in runs:
        more = units(run, metric, step)
        if more is None or found.keys() & more.keys():
            return None
        found.update(more)
    return found or None


def probes(result: dict[str, Any]) -> set[tuple[str, ...]]:
    """What a run was scored on: (seed, episode, unit, question) for every question answered (for
    recommendation: test point and gold item). Two runs pair only when these agree."""
    view = upgrade(result)
    seed = str(view.get("seed"))
    return {
        (seed, str(e.get("episode")), str(unit), str(item))
        for e in view.get("episodes") or []
        if isinstance(e.get("asked"), dict)
        for unit, items in e["asked"].items()
        for item in items
    }


def cluster(task: TaskInfo) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """The independent unit a bootstrap draws from (seed, episode, unit[, item]) keys: a whole
    episode where the task says its units are not independent (a sequence's contexts share one
    model), else a context or a test point (all its gold items together); in both, under every seed
    at once, since the seeds share the data (the seed is left out of the cluster)."""
    depth = 2 if task.resample_episodes else 3
    return lambda key: key[1:depth]


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], metric: str) -> Summary | None:
    """B minus A on one score over the same units (runs of the same seeds), with its paired
    bootstrap interval; None when the runs were not scored on the same questions."""
    asked_a = set().union(*(probes(r) for r in a))
    if not asked_a or asked_a != set().union(*(probes(r) for r in b)):
        return None
    units_a, units_b = pooled_units(a, metric), pooled_units(b, metric)
    if not units_a or not units_b or units_a.keys() != units_b.keys():
        return None
    return paired_difference(units_a, units_b, cluster(meta.task_of(a[0])))
