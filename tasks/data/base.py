"""The data-set interface and the checks every QA loader shares."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterator

from benchmark.errors import BenchError
from benchmark.types import QA, Document


class QADataset(ABC):
    """A source of ``Document``s: contexts with probe questions (and optional training QA)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "qa"

    def __init__(self, path: str = "", seed: int = 0) -> None:
        self.path = path
        self.seed = seed

    @abstractmethod
    def documents(self, limit: int | None = None) -> list[Document]:
        """The first ``limit`` documents, in a fixed order (all when ``limit`` is None)."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this data set cannot be loaded here, or None."""
        return None


def read_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) for each non-blank line; a bad line names the file and line."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise BenchError(f"cannot read data file {path}: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchError(f"{path}:{number}: malformed JSON ({exc.msg})") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per line, for files with one JSON object a line."""
    for number, record in read_json_lines(path):
        if not isinstance(record, dict):
            raise BenchError(f"{path}:{number}: expected a JSON object per line")
        yield number, record


def require_text(record: dict[str, Any], key: str, where: str) -> str:
    """The string field ``key`` of ``record``, which must be present and non-empty."""
    value = record.get(key)
    if not isinstance(value, str):
        raise BenchError(f"{where}: field {key!r} is missing or not a string")
    if not value.strip():
        raise BenchError(f"{where}: field {key!r} is empty")
    return value


def check_documents(documents: list[Document]) -> None:
    """Reject empty contexts, probe-less contexts and duplicate ids, naming the culprit."""
    seen: set[str] = set()
    for doc in documents:
        where = doc.source or f"context {doc.id!r}"
        if not doc.text.strip():
            raise BenchError(f"{where}: context {doc.id!r} is empty")
        if not doc.probes:
            raise BenchError(f"{where}: context {doc.id!r} has no probe questions")
        if doc.id in seen:
            raise BenchError(f"{where}: duplicate context id {doc.id!r}")
        seen.add(doc.id)


def parse_qa_list(value: Any, where: str, key: str) -> tuple[QA, ...]:
    """``[{"question": …, "answers": [...] | "answer": …}, …]`` -> QA tuple."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BenchError(f"{where}: field {key!r} must be a list")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BenchError(f"{where}: {key}[{i}] must be an object")
        question = require_text(item, "question", f"{where}: {key}[{i}]")
        answers = item.get("answers", [item.get("answer")])
        if isinstance(answers, str):
            answers = [answers]
        answers = [a for a in answers if isinstance(a, str) and a.strip()]
        if not answers:
            raise BenchError(f"{where}: {key}[{i}] has no answer")
        items.append(QA(question, tuple(answers)))
    return tuple(items)
