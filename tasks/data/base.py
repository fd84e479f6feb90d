"""The data-set interface and the checks every QA loader shares."""

from __future__ import annotations

import hashlib
import json
import random
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from benchmark.api import Dataset
from benchmark.errors import BenchError
from benchmark.types import QA, Document

# Which contexts a run uses: ``split`` says which part of the data set (``test`` for scored runs,
# ``dev`` for tuning, ``all`` for a finite set taken whole), ``sample`` in which order they are taken
# (``first``: the data set's own order; ``spread``: a seeded order that takes one context of each
# group, e.g. SQuAD article, in turn).
SPLITS = ("test", "dev", "all")
SAMPLES = ("first", "spread")


class QADataset(Dataset):
    """A source of ``Document``s: contexts with probe questions (and optional training QA)."""

    kind: ClassVar[str] = "qa"
    # The order a run takes contexts in unless told otherwise (``sample=default``).
    default_sample: ClassVar[str] = "first"
    # The share of groups (contexts without a group) that a finite data set holds out as ``dev``.
    dev_fraction: ClassVar[float] = 0.2

    @abstractmethod
    def documents(self, limit: int | None = None) -> list[Document]:
        """The first ``limit`` documents, in a fixed order (all when ``limit`` is None)."""

    def select(self, split: str, sample: str, limit: int | None) -> list[Document]:
        """The first ``limit`` contexts of ``split`` in ``sample`` order (all when ``limit`` is None).

        Finite data sets split by a stable hash of each context's group (of its text when it has
        none), so a group is wholly in dev or wholly in test, whatever the file's order or size.
        """
        documents = self.documents()
        if split != "all":
            documents = [doc for doc in documents if split_of(doc, self.dev_fraction) == split]
        if sample == "spread":
            documents = spread(documents, self.seed)
        return documents if limit is None else documents[:limit]


def split_of(doc: Document, dev_fraction: float) -> str:
    """ "dev" or "test": where the hash of the context's group (else its text) falls."""
    key = (doc.group or doc.text).encode("utf-8")
    position = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return "dev" if position < dev_fraction else "test"


def spread(documents: list[Document], seed: int) -> list[Document]:
    """A seeded reordering that visits the groups in turn: one context of every group (in a shuffled
    group order, each group's contexts shuffled), then a second of every group that has one, and so
    on. Any prefix covers as many groups as it can; contexts without a group are each their own, so
    for them this is a seeded shuffle."""
    rng = random.Random(f"spread-{seed}")
    groups: dict[tuple[str, str], list[Document]] = {}
    for doc in documents:
        groups.setdefault((doc.group, "") if doc.group else ("", doc.id), []).append(doc)
    ordered = list(groups.values())
    rng.shuffle(ordered)
    for members in ordered:
        rng.shuffle(members)
    depth = max((len(members) for members in ordered), default=0)
    return [members[i] for i in range(depth) for members in ordered if i < len(members)]


def not_utf8(path: Path | str, data: bytes | None = None) -> BenchError:
    """The one-line error for a data file that is not UTF-8, naming the line of its first bad byte.

    Text is decoded in chunks, so where a ``UnicodeDecodeError`` surfaces says little about where
    the bad byte is; the file's bytes (``data``, else read again) say exactly.
    """
    if data is None:
        data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return BenchError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8")
    return BenchError(f"{path}: not UTF-8 text; save the file as UTF-8")


def read_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) for each non-blank line; a bad line names the file and line."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise BenchError(f"cannot read data file {path}: {exc.strerror}") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BenchError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise not_utf8(path) from None


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


def optional_text(record: dict[str, Any], key: str, where: str) -> str:
    """The string field ``key`` of ``record``, or "" when it is absent."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BenchError(f"{where}: field {key!r} is not a string")
    return value.strip()


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
