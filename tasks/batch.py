"""Batch injection: N contexts injected at once, then every probe answered (the paper's Table 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from benchmark.api import EpisodePlan, Method
from benchmark.registry import register_task
from benchmark.report import score_table
from benchmark.task_info import MetricInfo
from tasks.qa import (
    RETRIEVAL_METRICS,
    ContextParams,
    QATask,
    summarize_contexts,
    targets_line,
)


@dataclass
class BatchParams(ContextParams):
    num_contexts: int = 20  # contexts injected together (the paper: 100 and 500)
    episodes: int = 1  # independent batches over consecutive, disjoint slices of the data

    RANGES: ClassVar[dict[str, str]] = {"num_contexts": ">= 1", "episodes": ">= 1"}


@register_task("batch")
class BatchTask(QATask):
    description = "batch injection: inject N contexts at once, then answer all their questions"
    Params = BatchParams
    params: BatchParams
    profiles = {"smoke": {"num_contexts": 3}, "quick": {}, "paper": {"num_contexts": 100}}
    display_name = "batch injection"
    metrics = (
        MetricInfo("qa_f1", "QA-F1", primary=True),  # SQuAD token F1, per context, then over contexts
        MetricInfo("acc", "acc"),  # the normalised gold answer is contained in the prediction
        *(MetricInfo(name, board=False) for name in RETRIEVAL_METRICS),  # retrieval methods only
    )
    paper_table = "1"

    def contexts_used(self) -> int:
        return self.params.num_contexts * self.params.episodes

    def episodes(self) -> list[str]:
        return [f"batch-{i}" for i in range(self.params.episodes)]

    def _doc_ids(self, episode: str) -> list[str]:
        index = int(episode.rsplit("-", 1)[1])
        n = self.params.num_contexts
        return [doc.id for doc in self.documents[index * n : (index + 1) * n]]

    def plan(self, episode: str, method: Method) -> EpisodePlan:
        """Inject the batch's contexts together, then ask every probe of them."""
        doc_ids = self._doc_ids(episode)
        return EpisodePlan(
            setup=self.contexts(method, doc_ids),
            steps=[self.probe_step(method, doc_ids)],
            record={"context_ids": doc_ids, **self.target_record(method, doc_ids)},
        )

    def episode_record(self, plan: EpisodePlan, steps: list[dict[str, Any]]) -> dict[str, Any]:
        return {**plan.record, **steps[0]}  # one step: its predictions are the episode's

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        contexts = [scores for r in records for scores in r["per_context"].values()]
        return self.with_targets(summarize_contexts(contexts, self.seed), records)

    @classmethod
    def summary(cls, scores: dict[str, Any]) -> str:
        line = targets_line(scores)
        return score_table(scores) + (f"\n{line}" if line else "")
