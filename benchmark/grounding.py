"""Grounding: whether a target sentence's answer occurs in its context, and the ``+grounded`` filter.

``run.targets`` names a generator, optionally followed by ``+grounded`` (``local+grounded``): then
only QA pairs whose answer occurs in their context are kept (see ``grounding``). The generators
(``benchmark.targets``, ``benchmark.generation``) and the QA tasks, which record the grounding rate
of the target sentences a run trains on (``grounding_counts``), share what is here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from benchmark.errors import BenchError
from benchmark.metrics import normalize_answer

GROUNDED = "grounded"  # the filter named after a "+": "local+grounded"

_ANSWER = re.compile(r"Question:.*?Answer:\s*(.*?)\s*$", re.DOTALL)


def split_generator(name: str) -> tuple[str, bool]:
    """``"local+grounded"`` -> ``("local", True)``; ``"local"`` -> ``("local", False)``."""
    base, plus, option = name.partition("+")
    if plus and option != GROUNDED:
        raise BenchError(
            f"unknown target-sentence filter {option!r} in targets={name!r}; the one filter is +{GROUNDED}"
        )
    return base, bool(plus)


def wants_grounded(run: Any) -> bool:
    """Whether the run's ``targets`` setting asks for the grounding filter."""
    return run is not None and split_generator(str(getattr(run, "targets", "")))[1]


def target_answer(sentence: str) -> str:
    """The answer of a "Question: … Answer: …" sentence ("" when it has none)."""
    match = _ANSWER.search(sentence)
    return match.group(1) if match else ""


def grounding(context: str) -> Callable[[str], bool]:
    """A test of target sentences against ``context``: does the sentence's answer occur in it?

    Both sides are normalised as for QA-F1 (``normalize_answer``: lowercase, no punctuation or
    articles, single spaces) and the answer must occur as whole words: "1526" is in "founded in
    1526", "1" and "Lin" are not. An answer that normalises to nothing is not grounded.
    """
    haystack = f" {normalize_answer(context)} "

    def test(sentence: str) -> bool:
        answer = normalize_answer(target_answer(sentence))
        return bool(answer) and f" {answer} " in haystack

    return test


def is_grounded(sentence: str, context: str) -> bool:
    return grounding(context)(sentence)


def keep_grounded(context: str, sentences: list[str]) -> list[str]:
    """The sentences whose answer occurs in ``context``, in order."""
    test = grounding(context)
    return [s for s in sentences if test(s)]


def grounding_counts(context: str, sentences: list[str]) -> dict[str, int]:
    """``{"sentences": n, "grounded": k}``: how many of a context's target sentences are grounded."""
    test = grounding(context)
    return {"sentences": len(sentences), "grounded": sum(1 for s in sentences if test(s))}
