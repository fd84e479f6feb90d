"""PwC (Prompt-with-Context, from the ICAE paper): the SELF-PARAM paper's QA data.

Rows are ``{"input": context, "prompt": question, "answer": answer}``. As in the official code:
"<s>" markers removed, questions containing "above text" dropped (they ask for titles or summaries),
answers longer than 5 tokens dropped, rows grouped by context, the first N contexts in order.
Read from JSON lines (``--set data_path=FILE_OR_FOLDER``, else the shared copies
``pwc/PWC_eval_data.jsonl`` then ``pwc/icae_dev_v2.jsonl``, else ``sggetao/PwC`` test then train
splits through ``datasets``).

``pwc`` keeps every question as a probe (the paper's protocol): parametric methods need generated
target sentences (``--set targets=local`` or ``openai``), because most PwC contexts keep a single
short-answer question. ``pwc-split`` alternates each context's questions between probes and training
QA and drops contexts with fewer than two.

Contexts are taken in file order by default (``sample=first``, the paper's first N). PwC has no
articles: each context is its own group, so the dev split holds out a fifth of the contexts (by a
hash of their text), and the test split is the paper's order with those left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from benchmark.errors import BenchError
from benchmark.registry import register_dataset
from benchmark.types import QA, Document
from tasks.data.base import QADataset, read_jsonl, require_text
from tasks.data.public import load_hub, local_files, make_documents, short_answers

LOCAL: list[tuple[str, ...]] = [("pwc", "PWC_eval_data.jsonl"), ("pwc", "icae_dev_v2.jsonl")]
HUB = "sggetao/PwC"
HUB_SPLITS = ["test", "train"]  # the official code chains them in this order


def _clean(text: str) -> str:
    return text.replace("<s>", "").strip()


def group_rows(rows: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, str, list[QA], str]]:
    """(id, source, context, questions, group) per distinct context, in order of first appearance.

    PwC contexts are separate documents: none has a group, so each goes to dev or test on its own.

    ``rows`` are (where, record) pairs; every record is checked, kept or not, so a malformed line is
    reported even when a filter would have dropped it.
    """
    contexts: dict[str, tuple[str, str, dict[str, QA]]] = {}
    for where, record in rows:
        context = _clean(require_text(record, "input", where))
        question = _clean(require_text(record, "prompt", where))
        answer = _clean(require_text(record, "answer", where))
        if not context:
            raise BenchError(f"{where}: field 'input' is empty")
        if context not in contexts:
            contexts[context] = (f"pwc-{len(contexts):05d}", where, {})
        if "above text" in question.lower():
            continue
        short = short_answers([answer])
        if not short or not question:
            continue
        questions = contexts[context][2]
        known = questions.get(question)  # the same question twice: one probe, all its answers
        answers = known.answers + tuple(a for a in short if a not in known.answers) if known else short
        questions[question] = QA(question, answers)
    return [(doc_id, where, context, list(qs.values()), "") for context, (doc_id, where, qs) in contexts.items()]


def _jsonl_rows(files: list[Path]) -> Iterable[tuple[str, dict[str, Any]]]:
    for path in files:
        for number, record in read_jsonl(path):
            yield f"{path}:{number}", record


@register_dataset("pwc")
class PwC(QADataset):
    description = "PwC contexts, every short-answer question a probe (the paper's data; needs --set targets=local)"
    split: ClassVar[bool] = False  # every question a probe (pwc-split halves them)
    default_sample = "first"  # the paper takes the first N contexts in order

    def documents(self, limit: int | None = None) -> list[Document]:
        files = local_files(self.path, LOCAL, ".jsonl")
        rows = _jsonl_rows(files) if files else load_hub(HUB, HUB_SPLITS, self.name, LOCAL)
        return make_documents(group_rows(rows), self.split, limit)


@register_dataset("pwc-split")
class PwCSplit(PwC):
    description = "PwC, questions alternately probes and training QA (contexts with >= 2 questions)"
    split = True
