"""SQuAD v1.1: each paragraph is a context, its questions are the probes.

Read from the official JSON format (``--set data_path=FILE``, else the shared copy
``squad/dev-v1.1.part_a.json``, else ``rajpurkar/squad`` validation split through ``datasets``).
Questions whose answers are all longer than 5 tokens are dropped, like the paper's PwC filter.
Each paragraph's group is its article (title): an article is wholly in the dev or the test split,
and the default ``spread`` sampling takes one paragraph of each article in turn.

``squad`` splits each paragraph's questions in two (alternating): one half are the probes, the other
half the training QA that the default ``dataset`` target-sentence generator hands to parametric
methods, so every method runs on it offline with no generator. ``squad-all`` keeps every question
as a probe (the paper's protocol) and needs generated target sentences (``--set targets=local``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from benchmark.errors import BenchError
from benchmark.registry import register_dataset
from benchmark.types import QA, Document
from tasks.data.base import QADataset, not_utf8
from tasks.data.public import load_hub, local_files, make_documents, short_answers

LOCAL: list[tuple[str, ...]] = [("squad", "dev-v1.1.part_a.json")]
HUB = "rajpurkar/squad"

# (id, source, context, questions, article title) per paragraph
Group = tuple[str, str, str, list[QA], str]


def _field(record: Any, key: str, kind: type, where: str) -> Any:
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, kind):
        raise BenchError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    return value


def read_squad_json(path: Path, prefix: str = "squad") -> list[Group]:
    """Paragraphs of an official SQuAD JSON file; a malformed one is named by file and position."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BenchError(f"cannot read data file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None
    groups: list[Group] = []
    for a, article in enumerate(_field(data, "data", list, f"{path}")):
        where_a = f"{path}: data[{a}]"
        title = article.get("title") if isinstance(article, dict) else None
        title = title.strip() if isinstance(title, str) and title.strip() else f"{prefix}-{a:03d}"
        for p, paragraph in enumerate(_field(article, "paragraphs", list, where_a)):
            where = f"{where_a}.paragraphs[{p}]"
            context = _field(paragraph, "context", str, where)
            if not context.strip():
                raise BenchError(f"{where}: field 'context' is empty")
            qas = []
            for q, item in enumerate(_field(paragraph, "qas", list, where)):
                where_q = f"{where}.qas[{q}]"
                question = _field(item, "question", str, where_q)
                answers = [
                    _field(ans, "text", str, f"{where_q}.answers[{i}]")
                    for i, ans in enumerate(_field(item, "answers", list, where_q))
                ]
                qas.append((question, answers))
            groups.append((f"{prefix}-{a:03d}-{p:03d}", where, context, _short(qas), title))
    return groups


def hub_groups(rows: list[tuple[str, Any]]) -> list[Group]:
    """The hub's one-row-per-question layout, regrouped into paragraphs (rows come in order)."""
    paragraphs: list[tuple[str, str, str, list[tuple[str, list[str]]], str]] = []
    article, paragraph, last = -1, -1, (None, None)
    for where, row in rows:
        title, context = row["title"], row["context"]
        if (title, context) != last:
            if title != last[0]:
                article, paragraph = article + 1, -1
            paragraph += 1
            paragraphs.append((f"squad-{article:03d}-{paragraph:03d}", where, context, [], title))
            last = (title, context)
        paragraphs[-1][3].append((row["question"], list(row["answers"]["text"])))
    return [(doc_id, where, context, _short(raw), title) for doc_id, where, context, raw, title in paragraphs]


def _short(qas: list[tuple[str, list[str]]]) -> list[QA]:
    """Questions with at least one short answer, keeping only their short answers."""
    kept = []
    for question, answers in qas:
        short = short_answers(answers)
        if short and question.strip():
            kept.append(QA(question.strip(), short))
    return kept


@register_dataset("squad")
class Squad(QADataset):
    description = "SQuAD v1.1 paragraphs; half the questions probe, half train (offline: shared copy)"
    split: ClassVar[bool] = True  # each paragraph's questions halved into probes and training QA
    default_sample = "spread"  # the file's first paragraphs are all of one article

    def documents(self, limit: int | None = None) -> list[Document]:
        files = local_files(self.path, LOCAL, ".json")
        if files:
            several = len(files) > 1  # ids stay unique across the files of a folder
            groups = [g for path in files for g in read_squad_json(path, f"squad-{path.stem}" if several else "squad")]
        else:
            groups = hub_groups(load_hub(HUB, ["validation"], self.name, LOCAL))
        return make_documents(groups, self.split, limit)


@register_dataset("squad-all")
class SquadAll(Squad):
    description = "SQuAD v1.1, every question a probe (the paper's protocol; needs --set targets=local)"
    split = False
