"""Target sentences: the lines a parametric method trains on, "Question: … Answer: …" pairs or,
from ``implications``, statements about the context.

The generators (``dataset`` and ``cloze`` here; ``local``, ``openai`` and ``implications`` in
``benchmark.generation``) only ever see a context's text (``dataset``: the training QA the data set
ships beside it); the leakage check below makes sure no probe question slipped into them.

``run.targets`` names a generator, optionally followed by ``+grounded`` (``local+grounded``): then
only grounded sentences are kept (``benchmark.grounding``: a QA pair's answer occurs in its
context, a statement's content words mostly do), and the generators that sample (``local``,
``openai``, ``implications``) ask again until they have the requested count of grounded sentences
or have asked a bounded number of times. The QA tasks record the grounding rate of the target
sentences a run trains on (``grounding_counts``, see ``tasks.qa``).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable
from typing import Any

from benchmark.errors import BenchError
from benchmark.generation import implications_targets, local_targets, openai_settings, openai_targets
from benchmark.grounding import GROUNDED, grounding, keep_grounded, split_generator, wants_grounded
from benchmark.metrics import normalize_answer
from benchmark.types import Document

log = logging.getLogger(__name__)

_QUESTION = re.compile(r"Question:\s*(.*?)\s*Answer:", re.DOTALL)


# ---- dataset: the training QA a data set ships ------------------------------------------------------


def dataset_targets(documents: list[Document], count: int, seed: int, grounded: bool = False) -> dict[str, list[str]]:
    """The data set's own training QA pairs (``count`` of them per context, 0 = all); with
    ``grounded``, drawn from the grounded ones only."""
    result: dict[str, list[str]] = {}
    for doc in documents:
        if not doc.train_qa:
            raise BenchError(
                f"context {doc.id!r} has no training QA in the data set; "
                "use --set targets=cloze (or local, openai) to make target sentences"
            )
        sentences = [qa.sentence() for qa in doc.train_qa]
        if grounded:
            sentences = keep_grounded(doc.text, sentences)
        if count and count < len(sentences):
            sentences = random.Random(f"{seed}-{doc.id}").sample(sentences, count)
        result[doc.id] = sentences
    return result


# ---- cloze: the context's own sentences with a salient span blanked --------------------------------

_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_YEAR = r"\d{3,4}"
# A capitalised word: "Ansel", "O'Neil", an initial "J.", "U.S.".
_WORD = r"(?:(?:[A-ZÀ-ÖØ-Þ]\.)+(?![\w'’-])|[A-ZÀ-ÖØ-Þ][\w'’-]*)"
# Salient spans, in order of preference where they overlap: dates, numbers, capitalised phrases.
_SPANS = (
    re.compile(
        rf"\b(?:\d{{1,2}}\s+{_MONTH}(?:,?\s+{_YEAR})?|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+{_YEAR})?"
        rf"|{_MONTH}\s+{_YEAR})\b"
    ),
    re.compile(r"(?<![\w.,])[$£€]?\d(?:[\d,]*\d)?(?:\.\d+)?(?:\s?%|\s(?:percent|million|billion|thousand)\b)?"),
    re.compile(rf"\b{_WORD}(?:(?:\s+(?:of|de|da|del|der|di|du|van|von|la|le|the|&))*\s+{_WORD})*"),
)
# Capitalised only because they start a sentence, or too common to ask about.
_COMMON = frozenset(
    """
a an the in on at of to by for from with as after before during since until when while where which
who what why how if although though because but and or nor so yet however also then there here this
that these those it its he she they we i you his her their our my your him them us one some many
most more several each every all both another other such no not yes mr mrs ms dr st much few any
only even still thus therefore moreover furthermore meanwhile instead later early today despite unlike
like under over about around between among through throughout within without following according
due upon once now again often usually although whereas besides indeed likewise similarly
additionally finally first second third last next
""".split()
)
_ABBREVIATIONS = frozenset(
    """
mr mrs ms dr st jr sr prof gen col lt sgt capt rev vs etc inc ltd co corp no vol fig approx mt ft
jan feb mar apr jun jul aug sep sept oct nov dec
""".split()
)
_END = re.compile(r"([.!?]+[\"'”’)\]]*)\s+|\s*\n\s*")
_BLANK = "___"


def context_sentences(text: str) -> list[str]:
    """The sentences of a text: split after . ! ? before a capital, digit or quote (not after an
    abbreviation or an initial such as "Mr." or "J.") and at line breaks."""
    result: list[str] = []
    start = 0
    for match in _END.finditer(text):
        end_mark = match.group(1)
        if end_mark:
            following = text[match.end() : match.end() + 1]
            if not (following.isupper() or following.isdigit() or following in "\"'“‘("):
                continue
            before = re.search(r"(\S+)$", text[start : match.start()])
            token = before.group(1).lower().lstrip("(\"'“‘") if before else ""
            if end_mark.startswith(".") and (
                token in _ABBREVIATIONS or re.fullmatch(r"[a-z]|(?:[a-z]\.)+[a-z]", token)
            ):
                continue
            piece = text[start : match.start() + len(end_mark)]
        else:
            piece = text[start : match.start()]
        if piece.strip():
            result.append(piece.strip())
        start = match.end()
    if text[start:].strip():
        result.append(text[start:].strip())
    return result


def salient_spans(sentence: str) -> list[str]:
    """Dates, numbers and capitalised phrases of a sentence, without overlaps, in sentence order.

    A phrase at the start of the sentence loses its leading common words ("The", "In the", "He");
    a phrase of common words only is no span; a final "'s" is not part of a span.
    """
    first = len(sentence) - len(sentence.lstrip(" \"'“‘(["))
    taken: list[tuple[int, int]] = []
    for pattern in _SPANS:
        for match in pattern.finditer(sentence):
            start, end = match.span()
            if pattern is _SPANS[-1]:
                words = [(start + w.start(), start + w.end()) for w in re.finditer(r"\S+", match.group(0))]
                if start == first:
                    while words and sentence[words[0][0] : words[0][1]].lower() in _COMMON:
                        words.pop(0)
                for i in range(1, len(words)):  # "U.S. The": a new sentence the split did not see
                    word = sentence[words[i][0] : words[i][1]]
                    if word[0].isupper() and word.lower() in _COMMON:
                        words = words[:i]
                        break
                if not words or all(sentence[s:e].lower() in _COMMON for s, e in words):
                    continue
                start, end = words[0][0], words[-1][1]
                if sentence[end - 2 : end] in ("'s", "’s"):
                    end -= 2
                while end > start and sentence[end - 1] in "'’-":
                    end -= 1
            if end > start and not any(start < e and s < end for s, e in taken):
                taken.append((start, end))
    return [sentence[s:e] for s, e in sorted(taken)]


def fallback_span(sentence: str) -> str | None:
    """For a sentence without a date, number or name: its longest word of five letters or more
    that is not a common word (the last of equals), or None."""
    words = [w for w in re.findall(r"[^\W\d_][\w'’-]*[^\W_]", sentence) if len(w) >= 5 and w.lower() not in _COMMON]
    return max(reversed(words), key=len) if words else None


def cloze_question(sentence: str, span: str) -> str | None:
    """The sentence with every occurrence of ``span`` blanked, as a question; None when too little
    of the sentence is left to ask about."""
    blanked = re.sub(rf"(?<!\w){re.escape(span)}(?!\w)", _BLANK, sentence)
    if _BLANK not in blanked or len(blanked.replace(_BLANK, " ").split()) < 3:
        return None
    return f"{blanked.rstrip(' .!?;:')}, what fills the blank?"


def cloze_candidates(text: str) -> list[list[str]]:
    """Per sentence of ``text``, its grounded cloze target sentences (one per salient span)."""
    grounded = grounding(text)
    result: list[list[str]] = []
    for sentence in context_sentences(text):
        made: list[str] = []
        spans = salient_spans(sentence)
        if not spans:
            spans = [span for span in [fallback_span(sentence)] if span]
        for span in dict.fromkeys(spans):
            question = cloze_question(sentence, span)
            if question is None:
                continue
            target = f"Question: {question} Answer: {span}"
            if grounded(target) and target not in made:
                made.append(target)
        result.append(made)
    return result


def cloze_targets(documents: list[Document], count: int, seed: int) -> dict[str, list[str]]:
    """Target sentences made from each context's own sentences, without a model.

    Each sentence yields one "Question: <sentence with a date, number or capitalised phrase
    replaced by ___>, what fills the blank? Answer: <that span>" per salient span (a sentence with
    none: its longest uncommon word), so every answer is quoted from the context (grounding rate
    1). ``count`` per context (0 = every span) are taken round-robin over the sentences (one span
    of each sentence, then a second, ...), the order within each round and of each sentence's
    spans shuffled by ``seed`` and the context's text: the same (context, seed) always gives the
    same sentences.

    A cloze question ends in "what fills the blank?" and holds "___", so it cannot repeat a probe
    question; ``check_no_leakage`` still checks every run's targets.
    """
    result: dict[str, list[str]] = {}
    for doc in documents:
        rng = random.Random(f"cloze-{seed}-{hashlib.sha256(doc.text.encode('utf-8')).hexdigest()}")
        per_sentence = cloze_candidates(doc.text)
        for spans in per_sentence:
            rng.shuffle(spans)
        ordered: list[str] = []
        for round_ in range(max((len(s) for s in per_sentence), default=0)):
            batch = [spans[round_] for spans in per_sentence if len(spans) > round_]
            rng.shuffle(batch)
            ordered.extend(batch)
        result[doc.id] = ordered[:count] if count else ordered
    return result


# A generator maps (documents, sentences per context, seed, LM, run params) to sentences per context id.
Generator = Callable[..., dict[str, list[str]]]
GENERATORS: dict[str, Generator] = {
    "dataset": lambda documents, count, seed, lm, run: dataset_targets(documents, count, seed, wants_grounded(run)),
    "cloze": lambda documents, count, seed, lm, run: cloze_targets(documents, count, seed),
    "local": local_targets,
    "openai": openai_targets,
    "implications": implications_targets,
}
# The generators that sample from the run's own model (a command must load it for them).
NEEDS_MODEL = frozenset({"local", "implications"})
# One line each for ``bench list``.
GENERATOR_DESCRIPTIONS: dict[str, str] = {
    "dataset": "the data set's own training questions as Question/Answer sentences",
    "cloze": "cloze questions cut from the context's own sentences (no model)",
    "local": "QA pairs written by the run's own model (the paper's instruct ablation)",
    "openai": "QA pairs from an OpenAI-compatible chat endpoint (the paper's GPT-4o-mini)",
    "implications": "SEAL-style self-edits: statements implied by the passage, by the run's own model",
}


def generator_problem(name: str) -> str | None:
    """Why generator ``name`` cannot run here, or None (``bench list``)."""
    if name == "openai":
        base, _, key = openai_settings()
        if key is None and base == "https://api.openai.com/v1":
            return "needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)"
    return None


# ---- making and checking a run's targets -------------------------------------------------------------


def make_targets(documents: list[Document], run: Any, lm: Any, seed: int) -> dict[str, list[str]]:
    """Target sentences for each document from the generator the run names (and its filter)."""
    name, grounded = split_generator(run.targets)
    if name not in GENERATORS:
        known = ", ".join(sorted(GENERATORS))
        raise BenchError(
            f"unknown target-sentence generator {run.targets!r}; known: {known} (each optionally +{GROUNDED})"
        )
    targets = GENERATORS[name](documents, run.num_targets, seed, lm, run)
    if grounded:  # the generators filter already; this keeps any other one honest
        targets = {doc.id: keep_grounded(doc.text, targets.get(doc.id, [])) for doc in documents}
    empty = [doc.id for doc in documents if not targets.get(doc.id)]
    if empty:
        log.warning(
            "targets=%s: %d of %d contexts have no target sentence (%s)",
            run.targets,
            len(empty),
            len(documents),
            ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else ""),
        )
    return targets


def check_no_leakage(documents: list[Document], targets: dict[str, list[str]]) -> None:
    """Fail loudly if a probe question of any context appears among the target sentences (a QA
    pair's question, or a whole statement)."""
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
