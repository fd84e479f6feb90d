"""Target sentences: the "Question: … Answer: …" lines a parametric method trains on.

The generators (``dataset`` here; ``local`` and ``openai`` in ``benchmark.generation``) only ever see
a context's text; the leakage check below makes sure no probe question slipped into them.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable

from benchmark.errors import BenchError
from benchmark.metrics import normalize_answer
from benchmark.types import Document

# A generator maps (documents, sentences per context, seed, LM, run params) to sentences per context id.
Generator = Callable[..., dict[str, list[str]]]
GENERATORS: dict[str, Generator] = {}

_QUESTION = re.compile(r"Question:\s*(.*?)\s*Answer:", re.DOTALL)


def dataset_targets(documents: list[Document], count: int, seed: int) -> dict[str, list[str]]:
    """The data set's own training QA pairs (``count`` of them per context, 0 = all)."""
    result: dict[str, list[str]] = {}
    for doc in documents:
        if not doc.train_qa:
            raise BenchError(
                f"context {doc.id!r} has no training QA in the data set; "
                "use --set targets=local (or openai) to generate target sentences"
            )
        sentences = [qa.sentence() for qa in doc.train_qa]
        if count and count < len(sentences):
            sentences = random.Random(f"{seed}-{doc.id}").sample(sentences, count)
        result[doc.id] = sentences
    return result


GENERATORS["dataset"] = lambda documents, count, seed, lm, run: dataset_targets(documents, count, seed)


def make_targets(documents: list[Document], run: Any, lm: Any, seed: int) -> dict[str, list[str]]:
    """Target sentences for each document from the generator the run names."""
    import benchmark.generation  # noqa: F401  (registers the local and openai generators)

    if run.targets not in GENERATORS:
        known = ", ".join(sorted(GENERATORS))
        raise BenchError(f"unknown target-sentence generator {run.targets!r}; known: {known}")
    return GENERATORS[run.targets](documents, run.num_targets, seed, lm, run)


def check_no_leakage(documents: list[Document], targets: dict[str, list[str]]) -> None:
    """Fail loudly if a probe question of any context appears among the target sentences."""
    probes = {normalize_answer(p.question): (doc.id, p.question) for doc in documents for p in doc.probes}
    for doc_id, sentences in targets.items():
        for sentence in sentences:
            match = _QUESTION.search(sentence)
            asked = normalize_answer(match.group(1) if match else sentence)
            if asked in probes:
                owner, question = probes[asked]
                raise BenchError(
                    f"leakage: target sentence of context {doc_id!r} asks probe question "
                    f"{question!r} of context {owner!r}"
                )
