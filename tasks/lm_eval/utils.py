"""Functions the lm-eval task YAMLs name: data loading, per-question scoring and aggregation.

Scoring uses the harness's own functions (``benchmark.metrics``, ``first_answer_line``), and QA
scores are averaged per context first, then over contexts, as ``bench run`` does. Multi-gold F1 is
computed here in ``process_results`` (max over the accepted answers): an lm-eval metric function
with a list target would be binarised.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmark.metrics import exact_match, qa_acc, qa_f1
from benchmark.models import first_answer_line
from tasks.lm_eval.export import data_file, export_qa, read_export
from tasks.lm_eval.export_rec import export_recommendation, score_reply


def load(selfparam_dataset: str, selfparam_kind: str = "qa", data_dir: str | None = None, **_: Any) -> Any:
    """``custom_dataset``: the exported rows of one data set as a DatasetDict with a test split.

    ``data_dir`` comes from lm-eval metadata (``--metadata '{"data_dir": …}'`` or
    ``TaskManager(metadata=…)``); other metadata (model arguments, version) is ignored. A missing
    file is exported first with the harness's defaults.
    """
    import datasets

    path = ensure_export(selfparam_dataset, selfparam_kind, data_dir)
    rows = read_export(path)["rows"]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def ensure_export(dataset: str, kind: str, data_dir: str | Path | None = None) -> Path:
    """The data file of ``dataset``, exported with the defaults first if it is not there yet."""
    path = data_file(dataset, data_dir)
    if not path.exists():
        (export_qa if kind == "qa" else export_recommendation)(dataset, data_dir)
    return path


def process_qa(doc: dict[str, Any], results: list[str]) -> dict[str, tuple[str, float]]:
    """F1, acc and exact match of one answer, each tagged with its context for the per-context mean."""
    prediction = first_answer_line(results[0])
    golds = doc["answers"]
    context = doc["context_id"]
    return {
        "f1": (context, qa_f1(prediction, golds)),
        "acc": (context, qa_acc(prediction, golds)),
        "em": (context, exact_match(prediction, golds)),
    }


def context_mean(items: list[tuple[str, float]]) -> float:
    """Mean over contexts of each context's mean score (the paper's and the harness's averaging)."""
    by_context: dict[str, list[float]] = defaultdict(list)
    for context, value in items:
        by_context[context].append(float(value))
    if not by_context:
        return float("nan")
    return sum(sum(v) / len(v) for v in by_context.values()) / len(by_context)


def flat_mean(items: list[list[float]]) -> float:
    """Mean over every element of every document's list (Recall@1 counts once per gold item)."""
    values = [float(v) for item in items for v in item]
    return sum(values) / len(values) if values else float("nan")


def process_recommendation(doc: dict[str, Any], results: list[str]) -> dict[str, list[int]]:
    """Recall@1 hits per gold item under the filters r1..r4, with the harness's CRS scorer."""
    return score_reply(doc, results[0])
