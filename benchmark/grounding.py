"""Grounding: whether a target sentence is supported by its context, and the ``+grounded`` filter.

A QA pair ("Question: … Answer: …") is grounded when its answer occurs in its context; a statement
(any other target sentence, such as an ``implications`` self-edit) when at least
``STATEMENT_SHARE`` of its content words do (see ``grounding``). ``run.targets`` names a generator,
optionally followed by ``+grounded`` (``local+grounded``): then only grounded sentences are kept.
The generators (``benchmark.targets``, ``benchmark.generation``) and the QA tasks, which record the
grounding rate of the target sentences a run trains on (``grounding_counts``), share what is here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from benchmark.errors import BenchError
from benchmark.metrics import normalize_answer

GROUNDED = "grounded"  # the filter named after a "+": "local+grounded"

_ANSWER = re.compile(r"Question:.*?Answer:\s*(.*?)\s*$", re.DOTALL)
_QA = re.compile(r"\s*Question:")
_POSSESSIVE = re.compile(r"['’]s\b")

# A statement is grounded when at least this share of its distinct content words occur in the
# context: a restatement keeps the context's names, numbers and nouns; a hallucinated fact brings
# its own ("Douprur is the capital of Wales": 1 of 3).
STATEMENT_SHARE = 0.5
# Function words (after ``normalize_answer``, which already drops a / an / the): not content words.
STOP_WORDS = frozenset(
    """
about above after again against all also am and any are as at be because been before being below
between both but by can could did do does doing down during each even few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just may me
might more most must my myself no nor not now of off on once only or other our ours ourselves out
over own same shall she should so some such than that their theirs them themselves then there these
they this those through to too under until up upon very was we were what when where which while who
whom whose why will with within without would you your yours yourself yourselves
""".split()
)


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


def is_qa(sentence: str) -> bool:
    """Whether a target sentence is a QA pair (it starts with "Question:") rather than a statement."""
    return _QA.match(sentence) is not None


def content_words(text: str) -> set[str]:
    """The distinct words of ``text`` that carry content: normalised as for QA-F1, a possessive
    "'s" dropped ("Lintrim's" is "lintrim"), function words left out."""
    return {w for w in normalize_answer(_POSSESSIVE.sub("", text)).split() if w not in STOP_WORDS}


def statement_share(sentence: str, context_words: set[str]) -> float:
    """The share of a statement's content words that occur in the context (0 without any)."""
    words = content_words(sentence)
    return len(words & context_words) / len(words) if words else 0.0


def grounding(context: str) -> Callable[[str], bool]:
    """A test of target sentences against ``context``.

    A QA pair is grounded when its answer occurs in the context. Both sides are normalised as for
    QA-F1 (``normalize_answer``: lowercase, no punctuation or articles, single spaces) and the
    answer must occur as whole words: "1526" is in "founded in 1526", "1" and "Lin" are not. An
    answer that normalises to nothing, or a QA pair without an answer, is not grounded.

    A statement is grounded when at least ``STATEMENT_SHARE`` of its content words (``content_words``)
    occur in the context as whole words; one without content words is not. Words are compared as
    they are written (no stemming): "founding" does not match "founded", so a paraphrase counts
    less than a restatement.
    """
    haystack = f" {normalize_answer(context)} "
    words = content_words(context)

    def test(sentence: str) -> bool:
        if not is_qa(sentence):
            return statement_share(sentence, words) >= STATEMENT_SHARE
        answer = normalize_answer(target_answer(sentence))
        return bool(answer) and f" {answer} " in haystack

    return test


def is_grounded(sentence: str, context: str) -> bool:
    return grounding(context)(sentence)


def keep_grounded(context: str, sentences: list[str]) -> list[str]:
    """The grounded sentences (``grounding``), in order."""
    test = grounding(context)
    return [s for s in sentences if test(s)]


def grounding_counts(context: str, sentences: list[str]) -> dict[str, int]:
    """``{"sentences": n, "grounded": k}``: how many of a context's target sentences are grounded."""
    test = grounding(context)
    return {"sentences": len(sentences), "grounded": sum(1 for s in sentences if test(s))}
