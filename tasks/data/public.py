"""What the loaders of public QA sets (SQuAD, PwC) share: finding the data, filtering, splitting.

The data comes from, in order: ``--set data_path=FILE_OR_FOLDER``, the local copy in the shared
data folder (``benchmark.paths.shared_data``), or the Hugging Face hub through ``datasets`` for
users with network access. The same parsing code reads all three.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.metrics import normalize_answer
from benchmark.paths import shared_data, shared_data_dir
from benchmark.types import QA, Document
from tasks.data.base import check_documents

# The paper keeps answers of at most 5 tokens (OpenLLaMA tokens in the official code). Counting
# words and punctuation marks instead keeps the selection independent of the model being tested.
MAX_ANSWER_TOKENS = 5
_PIECES = re.compile(r"\w+|[^\w\s]")


def answer_tokens(answer: str) -> int:
    """Words plus punctuation marks: a tokenizer-free stand-in for the paper's token count."""
    return len(_PIECES.findall(answer))


def short_answers(answers: list[str]) -> tuple[str, ...]:
    """The distinct answers of at most ``MAX_ANSWER_TOKENS`` tokens, in order, without those that
    normalise to nothing (SQuAD has "." as a gold answer, which an empty reply would match)."""
    kept: list[str] = []
    for answer in answers:
        answer = answer.strip()
        if normalize_answer(answer) and answer_tokens(answer) <= MAX_ANSWER_TOKENS and answer not in kept:
            kept.append(answer)
    return tuple(kept)


def split_questions(qas: list[QA]) -> tuple[tuple[QA, ...], tuple[QA, ...]]:
    """(probes, training QA): alternate questions, so both halves cover the whole paragraph."""
    return tuple(qas[0::2]), tuple(qas[1::2])


def local_files(path: str, default: list[tuple[str, ...]], suffix: str) -> list[Path]:
    """The files to read: ``path`` (a file, or a folder's ``*suffix`` files by name), else the
    shared copies in ``default`` that exist; an empty list means "use the hub"."""
    if path:
        given = Path(path)
        if given.is_dir():
            files = sorted(p for p in given.iterdir() if p.name.endswith(suffix))
            if not files:
                raise BenchError(f"data folder {given} holds no *{suffix} file")
            return files
        if not given.is_file():
            raise BenchError(f"data file {given} does not exist")
        return [given]
    return [p for p in (shared_data(*parts) for parts in default) if p is not None]


def load_hub(repo: str, splits: list[str], dataset: str, looked: list[tuple[str, ...]]) -> list[tuple[str, Any]]:
    """Rows of ``repo`` on the Hugging Face hub as ("hub-repo/split#index", row) pairs.

    Only reached when no local file exists; offline it fails with one line saying where it looked.
    """
    where = ", ".join(str(shared_data_dir().joinpath(*parts)) for parts in looked)
    try:
        import datasets
    except ImportError:
        raise BenchError(
            f"dataset {dataset!r}: no local copy ({where}) and the package `datasets` is not installed "
            f"to fetch {repo}; pass --set data_path=FILE"
        ) from None
    rows: list[tuple[str, Any]] = []
    for split in splits:
        try:
            data = hub_loader(datasets, repo, split)
        except Exception as exc:  # offline, missing repo, bad cache: all the same to the user
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BenchError(
                f"dataset {dataset!r}: no local copy ({where}) and {repo} could not be loaded from the "
                f"Hugging Face hub ({first}); pass --set data_path=FILE"
            ) from None
        rows.extend((f"{repo}/{split}#{i}", row) for i, row in enumerate(data))
    return rows


def _load_dataset(datasets: Any, repo: str, split: str) -> Any:
    return datasets.load_dataset(repo, split=split)


# Replaced in tests to simulate the hub without the network.
hub_loader: Callable[[Any, str, str], Any] = _load_dataset


def dedupe(qas: list[QA]) -> list[QA]:
    """One QA per question (compared after normalisation), merging the answers of repeats."""
    merged: dict[str, QA] = {}
    for qa in qas:
        key = normalize_answer(qa.question)
        known = merged.get(key)
        if known is None:
            merged[key] = qa
        else:
            extra = tuple(a for a in qa.answers if a not in known.answers)
            merged[key] = QA(known.question, known.answers + extra)
    return list(merged.values())


def make_documents(groups: list[tuple[str, str, str, list[QA], str]], split: bool, limit: int | None) -> list[Document]:
    """Documents from (id, source, context, short-answer questions, group) tuples, in order.

    A context left with no question is dropped; with ``split`` a context needs two questions
    (one probe, one for training), otherwise it is dropped too. A training question that is also a
    probe anywhere in the data set is dropped, so the run's leakage check always passes.
    """
    kept = []
    for doc_id, source, text, qas, group in groups:
        qas = dedupe(qas)
        if len(qas) < (2 if split else 1):
            continue
        probes, train = split_questions(qas) if split else (tuple(qas), ())
        kept.append((doc_id, source, text, probes, train, group))
    asked = {normalize_answer(qa.question) for _, _, _, probes, _, _ in kept for qa in probes}
    documents: list[Document] = []
    for doc_id, source, text, probes, train, group in kept:
        train = tuple(qa for qa in train if normalize_answer(qa.question) not in asked)
        if split and not train:
            continue
        documents.append(Document(doc_id, text, probes, train, source, group))
    check_documents(documents)
    return documents if limit is None else documents[:limit]
