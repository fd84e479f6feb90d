"""Sequential injection with retention (the paper's sequential table and retention matrix).

Each episode is one sequence of L contexts, run on a fresh method: step 0 probes every context of
the sequence before anything is injected, then each step injects one context and probes ALL the
sequence's contexts again. The result holds the matrix step x position (mean over sequences), the
per-step mean QA-F1, efficacy (the context injected at this step) and retention by distance (the
context injected k steps earlier).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from benchmark.api import EpisodePlan, Method
from benchmark.errors import BenchError
from benchmark.metrics import qa_acc, summarize
from benchmark.registry import register_task
from benchmark.report import fmt_ci
from benchmark.task_info import MetricInfo
from benchmark.types import Document
from tasks.qa import RETRIEVAL_METRICS, ContextParams, QATask, load_documents

log = logging.getLogger(__name__)


@dataclass
class SequentialParams(ContextParams):
    """``quick`` (the defaults) is 4 sequences of 3 contexts on ``fictional``: intervals resample
    sequences, so four give a usable interval (two do not), at 12 injections of selfparam's quick
    sequential training (about 20 s each on 2 CPU cores with bf16 instructions, the first one
    longer: it compiles)."""

    num_sequences: int = 4  # independent sequences over consecutive, disjoint slices of the data
    sequence_length: int = 3  # contexts injected one per step in each sequence (L)

    RANGES: ClassVar[dict[str, str]] = {"num_sequences": ">= 1", "sequence_length": ">= 1"}


@register_task("sequential")
class SequentialTask(QATask):
    description = "sequential injection: one context per step, all of the sequence probed after each step"
    Params = SequentialParams
    params: SequentialParams
    profiles = {
        "smoke": {"num_sequences": 2, "sequence_length": 3},
        "quick": {},
        "paper": {"num_sequences": 50, "sequence_length": 20},  # the first 1000 contexts
    }
    display_name = "sequential injection"
    metrics = (
        MetricInfo("qa_f1", "QA-F1 after the last step", short="QA-F1", primary=True),
        MetricInfo("efficacy.qa_f1", "efficacy QA-F1"),  # the context injected at that step
        MetricInfo("retention_mean.qa_f1", "retention QA-F1 (mean over distances ≥ 1)"),
        MetricInfo("interference", "interference", higher_is_better=False),
        MetricInfo("before.qa_f1", "QA-F1 before injection"),
        MetricInfo("acc", "acc"),
        MetricInfo("efficacy.acc", "efficacy acc", board=False),
        MetricInfo("retention_mean.acc", "retention acc (mean over distances ≥ 1)", board=False),
        MetricInfo("before.acc", "acc before injection", board=False),
        MetricInfo("efficacy_gain.qa_f1", "efficacy QA-F1 minus step 0", board=False),
        MetricInfo("efficacy_gain.acc", "efficacy acc minus step 0", board=False),
        *(MetricInfo(name, board=False) for name in RETRIEVAL_METRICS),  # retrieval methods only
    )
    resampled_unit = "sequences"
    resample_episodes = True  # the contexts of a sequence share one model
    curves = ("qa_f1",)  # scores["steps"]: the mean over the sequence's contexts after each step
    paper_table = "3"

    def contexts_used(self) -> int:
        return self.params.num_sequences * self.params.sequence_length

    def load_documents(self) -> list[Document]:
        """Use what the data set has: fewer whole sequences, or one shorter one, with a warning."""
        asked_n, asked_l = self.params.num_sequences, self.params.sequence_length
        if asked_n < 1 or asked_l < 1:
            raise BenchError("num_sequences and sequence_length must be at least 1")
        documents = self.skip(
            load_documents(self.dataset, self.data_path, self.needed_documents(), 0, strict=False, **self.selection())
        )
        if not documents:
            raise BenchError(f"dataset {self.dataset!r} has no contexts")
        length = min(asked_l, len(documents))
        count = min(asked_n, len(documents) // length)
        if (count, length) != (asked_n, asked_l):
            log.warning(
                "dataset %r has %d contexts, fewer than the %d x %d asked for: running %d sequence(s) of %d",
                self.dataset,
                len(documents),
                asked_n,
                asked_l,
                count,
                length,
            )
        self.num_sequences, self.sequence_length = count, length
        return documents[: count * length]

    def episodes(self) -> list[str]:
        return [f"seq-{i}" for i in range(self.num_sequences)]

    def _doc_ids(self, episode: str) -> list[str]:
        index = int(episode.rsplit("-", 1)[1])
        n = self.sequence_length
        return [doc.id for doc in self.documents[index * n : (index + 1) * n]]

    def plan(self, episode: str, method: Method) -> EpisodePlan:
        """Step 0 asks every probe of the sequence before any injection; step s injects the s-th
        context and asks them all again."""
        doc_ids = self._doc_ids(episode)
        contexts = self.contexts(method, doc_ids)
        steps = [self.probe_step(method, doc_ids, step=0, injected=None)]
        for step, context in enumerate(contexts, start=1):
            steps.append(self.probe_step(method, doc_ids, [context], step=step, injected=context.id))
        return EpisodePlan(steps=steps, record={"context_ids": doc_ids})

    def episode_record(self, plan: EpisodePlan, steps: list[dict[str, Any]]) -> dict[str, Any]:
        doc_ids = plan.record["context_ids"]
        record = {
            **plan.record,
            "matrix": {m: episode_matrix(steps, doc_ids, m) for m in metrics_of(steps)},
            "steps": steps,
        }
        return {**record, "per_episode": sequence_scores(record)}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return self.with_targets(aggregate_sequences(records, self.seed), records)

    @classmethod
    def summary(cls, scores: dict[str, Any]) -> str:
        return sequential_summary(scores)


def metrics_of(steps: list[dict[str, Any]]) -> list[str]:
    """The metrics every context has at every step (qa_f1, acc, and retrieval ones when present)."""
    keys = [set(scores) for step in steps for scores in step["per_context"].values()]
    common = set.intersection(*keys) if keys else set()
    return [m for m in ("qa_f1", "acc") if m in common] + sorted(common - {"qa_f1", "acc"})


def episode_matrix(steps: list[dict[str, Any]], doc_ids: list[str], metric: str) -> list[list[float]]:
    """Rows are steps 0..L, columns are the contexts in injection order."""
    return [[step["per_context"][d][metric] for d in doc_ids] for step in steps]


def cells_at_distance(num_steps: int, k: int) -> tuple[list[int], list[int]]:
    """(steps, positions) of the cells that probe a context k steps after the step that injected it
    (k = 0: efficacy), in a matrix of steps 0..L by contexts in injection order."""
    cells = [(s, s - 1 - k) for s in range(k + 1, num_steps)]
    return [s for s, _ in cells], [j for _, j in cells]


def sequence_scores(record: dict[str, Any]) -> dict[str, float]:
    """The scores averaged within a sequence before over sequences (efficacy, mean retention,
    interference), for this one sequence: the per-unit values a bootstrap over the sequences of
    several seeds draws (the file's summaries alone could not be pooled)."""
    scores: dict[str, float] = {}
    for m, rows in record["matrix"].items():
        matrix = np.asarray(rows, dtype=float)
        by_distance = [float(matrix[cells_at_distance(len(matrix), k)].mean()) for k in range(matrix.shape[1])]
        scores[f"efficacy.{m}"] = by_distance[0]
        if len(by_distance) > 1:
            scores[f"retention_mean.{m}"] = float(np.mean(by_distance[1:]))
    share = interference(record)
    if share is not None:
        scores["interference"] = share
    return scores


def aggregate_sequences(records: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Per-step means, the mean matrix, efficacy, retention by distance and interference.

    Every interval resamples whole sequences: the contexts of one sequence share one model, so the
    sequence is the independent unit. Each statistic is first averaged within a sequence; with the
    same number of cells per sequence the mean over sequences equals the mean over all cells. The
    headline ``qa_f1`` / ``acc`` are the final step's: all contexts, after the whole sequence.
    """
    metrics = [m for m in records[0]["matrix"] if all(m in r["matrix"] for r in records)]
    cubes = {m: np.asarray([r["matrix"][m] for r in records], dtype=float) for m in metrics}  # seq x step x pos
    n_seq, n_steps, length = cubes[metrics[0]].shape

    def over_sequences(per_sequence: np.ndarray) -> dict[str, float]:
        return summarize(per_sequence.tolist(), seed=seed)

    steps = []
    for s in range(n_steps):
        row: dict[str, Any] = {"step": s, "injected": s}
        row.update({m: over_sequences(cube[:, s, :].mean(axis=1)) for m, cube in cubes.items()})
        steps.append(row)
    retention = []
    for k in range(length):  # context injected at step s - k, seen at step s (k = 0: efficacy)
        row = {"distance": k, "gain": {}}
        steps_at, positions = cells_at_distance(n_steps, k)
        for m, cube in cubes.items():
            seen = cube[:, steps_at, positions]  # seq x cell
            row[m] = over_sequences(seen.mean(axis=1))
            # minus the same contexts' step-0 score: what injection added, whatever their difficulty
            row["gain"][m] = over_sequences((seen - cube[:, 0, positions]).mean(axis=1))
        retention.append(row)
    final = {m: steps[-1][m] for m in metrics}
    scores: dict[str, Any] = {
        **final,
        "num_sequences": n_seq,
        "sequence_length": length,
        "steps": steps,
        "matrix": {m: cube.mean(axis=0).round(6).tolist() for m, cube in cubes.items()},
        "efficacy": {m: retention[0][m] for m in metrics},
        "efficacy_gain": dict(retention[0]["gain"]),
        "retention": retention,
        "before": {m: steps[0][m] for m in metrics},
    }
    per_sequence = [sequence_scores(r) for r in records]
    if length > 1:  # the mean over distances 1..L-1 of each distance's mean, per sequence
        scores["retention_mean"] = {
            m: over_sequences(np.asarray([s[f"retention_mean.{m}"] for s in per_sequence])) for m in metrics
        }
    if all("interference" in s for s in per_sequence):
        scores["interference"] = summarize([s["interference"] for s in per_sequence], seed=seed)
    return scores


def interference(record: dict[str, Any]) -> float | None:
    """Share of answers to other contexts' questions that give a fact of the context just injected.

    Over steps 1..L: an answer to a question of any context but the one injected at that step
    counts when it contains a gold answer of the injected context's questions (the ``acc`` match)
    and none of its own context's: two contexts can share an answer ("orange"), and a context's own
    fact given to the wrong one of its questions is a mix-up within it, not the injected context's
    doing. None when the sequence has a single context.
    """
    hits = total = 0
    for step in record["steps"][1:]:
        facts: dict[str, set[str]] = {}
        for p in step["predictions"]:
            facts.setdefault(p["context_id"], set()).update(p["answers"])
        injected = facts.get(step["injected"], set())
        for p in step["predictions"]:
            if p["context_id"] == step["injected"]:
                continue
            total += 1
            hits += bool(qa_acc(p["prediction"], injected)) and not qa_acc(p["prediction"], facts[p["context_id"]])
    return hits / total if total else None


MATRIX_MAX_LENGTH = 10  # longer sequences print without the matrix (it stays in the result file)


def sequential_summary(scores: dict[str, Any]) -> str:
    """The per-step table, retention by distance, efficacy and (short sequences) the matrix."""
    from tabulate import tabulate

    metrics = [m for m in ("qa_f1", "acc") if m in scores["efficacy"]]
    n_seq, length = scores["num_sequences"], scores["sequence_length"]
    parts = [f"{n_seq} sequence(s) of {length} contexts; means over sequences x contexts, 95% CI resampling sequences"]
    rows = [[row["step"]] + [fmt_ci(row[m]) for m in metrics] for row in scores["steps"]]
    parts.append(tabulate(rows, headers=["step (injected)"] + metrics, tablefmt="github"))
    first = metrics[0]
    rows = [
        [row["distance"]] + [fmt_ci(row[m]) for m in metrics] + [fmt_ci(row["gain"][first]), row[first]["n"]]
        for row in scores["retention"]
    ]
    parts.append(
        "retention: score of the context injected k steps before the probe (k = 0: efficacy); "
        f"gain: minus the same contexts' {first} at step 0"
    )
    parts.append(tabulate(rows, headers=["k"] + metrics + [f"gain {first}", "n"], tablefmt="github"))
    parts.append(
        "efficacy "
        + ", ".join(f"{m} {fmt_ci(scores['efficacy'][m])}" for m in metrics)
        + "; before injection "
        + ", ".join(f"{m} {fmt_ci(scores['before'][m])}" for m in metrics)
    )
    if "retention_mean" in scores:
        parts.append(
            f"mean retention over distances 1..{length - 1}: "
            + ", ".join(f"{m} {fmt_ci(scores['retention_mean'][m])}" for m in metrics)
        )
    if "interference" in scores:
        parts.append(
            f"interference {fmt_ci(scores['interference'])}: share of answers to other contexts' "
            "questions that give a fact of the context injected at that step"
        )
    if length <= MATRIX_MAX_LENGTH:
        matrix = scores["matrix"][metrics[0]]
        rows = [[s] + [f"{v:.2f}" for v in row] for s, row in enumerate(matrix)]
        parts.append(f"{metrics[0]} matrix (rows: step, columns: context in injection order)")
        parts.append(tabulate(rows, headers=["step"] + [str(i + 1) for i in range(length)], tablefmt="github"))
    return "\n\n".join(parts)
