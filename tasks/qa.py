"""What the QA tasks (batch, sequential) share: loading documents, targets, probing and scoring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypedDict, cast

from benchmark.api import Method, Step, Task
from benchmark.errors import BenchError
from benchmark.grounding import grounding_counts
from benchmark.metrics import qa_acc, qa_f1, summarize
from benchmark.models import LM
from benchmark.registry import open_dataset
from benchmark.report import fmt_ci
from benchmark.targets import check_no_leakage, make_targets
from benchmark.types import QA, Answer, Context, Document, Prompt
from tasks.data.base import SAMPLES, SPLITS, QADataset

# Scored when the method declares what it retrieved (``Answer.retrieved``): was the gold context first / in the top k?
RETRIEVAL_METRICS = ("retrieval_recall@1", "retrieval_recall@k")


def load_documents(
    dataset: str,
    data_path: str,
    limit: int | None,
    seed: int,
    strict: bool = True,
    split: str = "test",
    sample: str = "default",
    kind: str = "qa",
) -> list[Document]:
    """The first ``limit`` contexts of ``split`` (test, dev or all) of a registered QA data set, or
    of a JSON-lines file given as the data set, in ``sample`` order (first, spread, or the data
    set's default); ``seed`` seeds the data set (its generator, its spread order). The data set must
    hold ``kind`` data (``qa`` unless a task says otherwise through its ``dataset_kind``).

    ``strict`` makes a split with fewer than ``limit`` contexts an error; without it the caller
    gets what there is and decides.
    """
    label = dataset  # what the user named: the registered name or the file
    if dataset.endswith(".jsonl") or Path(dataset).is_file():
        dataset, data_path = "qa-jsonl", dataset
    data = cast(QADataset, open_dataset(dataset, kind, data_path, seed))  # what load_documents reads: QA data
    if split not in SPLITS:
        raise BenchError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if sample == "default":
        sample = data.default_sample
    if sample not in SAMPLES:
        raise BenchError(f"sample must be one of {', '.join(SAMPLES)} or default, not {sample!r}")
    documents = data.select(split, sample, limit)
    if strict and limit is not None and len(documents) < limit:
        raise BenchError(
            f"dataset {label!r} split {split!r} has {len(documents)} contexts, fewer than the {limit} asked for"
        )
    return documents


@dataclass
class ContextParams:
    """Which contexts of the data set a QA task uses."""

    # "test" for scored runs, "dev" (disjoint from test) to tune on, "all" for a finite data set
    # taken whole.
    split: str = "test"
    # In which order: "first" (the data set's order), "spread" (seeded, one context of each article
    # in turn) or "default" (the data set's own choice: spread for SQuAD, first for the others).
    sample: str = "default"
    first_context: int = 0  # contexts of the split's order skipped before the ones used

    RANGES: ClassVar[dict[str, str]] = {"first_context": ">= 0"}


class Selection(TypedDict):
    """Which contexts a QA task loads (``load_documents``'s ``split`` and ``sample``)."""

    split: str
    sample: str


class QATask(Task):
    """Base of the QA tasks: documents, their target sentences and context-free probing."""

    params: ContextParams
    documents: list[Document]

    def load_documents(self) -> list[Document]:
        """The documents this run uses; a task may override how shortages are handled."""
        return self.skip(
            load_documents(
                self.dataset, self.data_path, self.needed_documents(), 0, kind=self.dataset_kind, **self.selection()
            )
        )

    def selection(self) -> Selection:
        """Which contexts: the ``split`` and ``sample`` task parameters."""
        return {"split": self.params.split, "sample": self.params.sample}

    def needed_documents(self) -> int:
        """Contexts to load: the run's, after the ``first_context`` ones it skips."""
        return self.params.first_context + self.contexts_used()

    def contexts_used(self) -> int:
        raise NotImplementedError

    def skip(self, documents: list[Document]) -> list[Document]:
        first = self.params.first_context
        if first < 0:
            raise BenchError(f"first_context must be >= 0, not {first}")
        return documents[first:]

    def prepare(self, lm: LM) -> None:
        self.lm = lm
        self.documents = self.load_documents()
        self.by_id = {doc.id: doc for doc in self.documents}
        for doc in self.documents:
            probe = max(doc.probes, key=lambda qa: len(qa.question))
            prompt = lm.format_prompt(Prompt(doc.id, probe.question, doc.text))
            lm.check_fits(prompt, f"context {doc.id!r} ({doc.source or self.dataset})", self.run.max_new_tokens)
        self._targets: dict[str, list[str]] | None = None
        self.grounding: dict[str, dict[str, int]] = {}  # per document: target sentences, grounded ones

    def targets(self) -> dict[str, list[str]]:
        """Target sentences for every document, made once per run and checked for leakage; how
        many of each document's are grounded (``benchmark.grounding``) goes to ``grounding``."""
        if self._targets is None:
            self._targets = make_targets(self.documents, self.run, self.lm, self.seed)
            check_no_leakage(self.documents, self._targets)
            self.grounding = {
                doc.id: grounding_counts(doc.text, self._targets.get(doc.id, [])) for doc in self.documents
            }
        return self._targets

    def contexts(self, method: Method, doc_ids: list[str]) -> list[Context]:
        targets = self.targets() if method.uses_targets else {}
        return [Context(d, self.by_id[d].text, list(targets.get(d, []))) for d in doc_ids]

    def target_record(self, method: Method, doc_ids: list[str]) -> dict[str, Any]:
        """For an episode record: ``{"targets": {context id: {"sentences", "grounded"}}}`` when the
        method trains on target sentences, else nothing."""
        if not method.uses_targets:
            return {}
        self.targets()
        return {"targets": {d: dict(self.grounding[d]) for d in doc_ids}}

    def with_targets(self, scores: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
        """``scores`` plus a ``targets`` section when the episodes trained on target sentences: the
        generator, sentence counts and the grounding rate (the share of a context's sentences that
        are grounded: a QA pair's answer occurs in the context, a statement's content words mostly
        do) as a mean over contexts with its bootstrap interval.

        Counts come from each record's ``targets`` entry; a record without one (a task that does
        not write it) that used targets is counted from this run's targets.
        """
        counts: dict[str, dict[str, int]] = {}
        for record in records:
            if "targets" in record:
                counts.update(record["targets"])
            elif record.get("num_targets"):
                self.targets()
                counts.update({d: self.grounding[d] for d in record.get("context_ids", [])})
        if not counts:
            return scores
        rates = [c["grounded"] / c["sentences"] for c in counts.values() if c["sentences"]]
        section = {
            "generator": self.run.targets,
            "sentences": sum(c["sentences"] for c in counts.values()),
            "grounded": sum(c["grounded"] for c in counts.values()),
            "contexts": len(counts),
            "contexts_without_targets": sum(1 for c in counts.values() if not c["sentences"]),
            "grounding_rate": summarize(rates, seed=self.seed) if rates else None,
        }
        return {**scores, "targets": section}

    def probe_step(self, method: Method, doc_ids: list[str], inject: list[Context] | None = None, **info: Any) -> Step:
        """A step that injects ``inject`` (if any), then asks every probe of the given documents;
        the gold context goes into the prompt only for the method that is meant to see it."""
        prompts: list[Prompt] = []
        expected: list[QA] = []
        for doc_id in doc_ids:
            doc = self.by_id[doc_id]
            context = doc.text if method.sees_gold_context else None
            for qa in doc.probes:
                prompts.append(Prompt(doc_id, qa.question, context))
                expected.append(qa)
        return Step(prompts, inject or [], expected, info)

    def score(self, step: Step, answers: list[Answer]) -> dict[str, Any]:
        """One scored record per question, and the means per context."""
        predictions = []
        for prompt, qa, answer in zip(step.prompts, step.expected, answers):
            record: dict[str, Any] = {
                "context_id": prompt.id,
                "question": qa.question,
                "answers": list(qa.answers),
                "prediction": answer.text,
                "f1": qa_f1(answer.text, qa.answers),
                "acc": qa_acc(answer.text, qa.answers),
            }
            if answer.retrieved is not None:  # context ids, best first
                record["retrieved"] = list(answer.retrieved)
                record["retrieval_recall@1"] = float(answer.retrieved[:1] == (prompt.id,))
                record["retrieval_recall@k"] = float(prompt.id in answer.retrieved)
            predictions.append(record)
        return {"per_context": per_context(predictions), "predictions": predictions}


def per_context(predictions: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean F1 and acc of each context's questions (the paper averages per context first)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        grouped.setdefault(p["context_id"], []).append(p)
    scores = {
        cid: {
            "qa_f1": sum(p["f1"] for p in rows) / len(rows),
            "acc": sum(p["acc"] for p in rows) / len(rows),
        }
        for cid, rows in grouped.items()
    }
    for cid, rows in grouped.items():
        for key in RETRIEVAL_METRICS:
            if all(key in p for p in rows):
                scores[cid][key] = sum(p[key] for p in rows) / len(rows)
    return scores


def targets_line(scores: dict[str, Any]) -> str:
    """One line on the run's target sentences for a task's summary ("" when it had none)."""
    section = scores.get("targets")
    if not isinstance(section, dict):
        return ""
    rate = section.get("grounding_rate")
    share = f"grounding rate {fmt_ci(rate, 2)}" if rate else "no sentences"
    return (
        f"targets: {section['generator']}, {section['sentences']} sentences for "
        f"{section['contexts']} contexts, {share} (grounded in the context)"
    )


def summarize_contexts(contexts: list[dict[str, float]], seed: int) -> dict[str, Any]:
    """Means over contexts with bootstrap 95% intervals."""
    metrics = ("qa_f1", "acc") + tuple(k for k in RETRIEVAL_METRICS if contexts and all(k in c for c in contexts))
    return {metric: summarize([c[metric] for c in contexts], seed=seed) for metric in metrics}
