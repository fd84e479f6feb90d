"""Batch injection: N contexts injected at once, then every probe answered (the paper's Table 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from benchmark.api import MethodFactory
from benchmark.registry import register_task
from benchmark.report import score_table
from benchmark.task_info import MetricInfo
from tasks.qa import (
    RETRIEVAL_METRICS,
    ContextParams,
    QATask,
    Stopwatch,
    per_context,
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

    def run_episode(self, episode: str, make_method: MethodFactory) -> dict[str, Any]:
        doc_ids = self._doc_ids(episode)
        method = make_method()
        watch = Stopwatch()
        contexts = self.contexts(method, doc_ids)
        with watch("inject_s"):
            method.inject(contexts)
        with watch("eval_s"):
            predictions = self.probe(method, doc_ids)
        footprint = method.footprint()
        return {
            "episode": episode,
            "context_ids": doc_ids,
            "num_targets": sum(len(c.targets) for c in contexts),
            **self.target_record(method, doc_ids),
            "predictions": predictions,
            "per_context": per_context(predictions),
            "cost": {**watch.seconds, **method.stats},
            "footprint": {
                "extra_bytes": footprint.extra_bytes,
                "changed_params": footprint.changed_params,
                **footprint.detail,
            },
        }

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        contexts = [scores for r in records for scores in r["per_context"].values()]
        return self.with_targets(summarize_contexts(contexts, self.seed), records)

    @classmethod
    def summary(cls, scores: dict[str, Any]) -> str:
        line = targets_line(scores)
        return score_table(scores) + (f"\n{line}" if line else "")
