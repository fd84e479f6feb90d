"""How target sentences are framed for training, shared by SELF-PARAM and FT(S).

A target sentence is "Question: … Answer: …". The official code trains it right after BOS (and,
for SELF-PARAM's teacher, the context). ``prompt_style=run`` instead frames it as the run's own
evaluation prompt does, demonstrations included, so the student learns the answer in the exact
position where it is later asked; ``end_answer`` also trains the line break that closes an answer
in that format, so the student learns where an answer stops instead of running on.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.errors import BenchError
from benchmark.types import Context, Prompt
from methods.training import TrainParams

PROMPT_STYLES = ("raw", "run", "run-teacher")


@dataclass
class SentenceParams(TrainParams):
    # "raw": BOS + sentence (the teacher also reads the context first), the official layout;
    # "run": after the run's prompt prefix with / without the context (its demonstrations and
    # "Context: …" line); "run-teacher": the teacher as in "run", the student as in "raw".
    prompt_style: str = "raw"
    end_answer: bool = False  # append the newline that ends an answer in the run's prompt format


def sentence_prefixes(lm, contexts: list[Context], style: str) -> tuple[list[list[int]], list[int]]:
    """Token ids before a target sentence: one teacher prefix per context, and the student's prefix.

    ``raw``: the context itself / nothing (the official code). ``run``: what the run's raw prompt
    format puts before "Question:" with and without the context (demonstrations, "Context: …").
    ``run-teacher``: the teacher's as in ``run``, the student's as in ``raw``.
    """
    if style not in PROMPT_STYLES:
        raise BenchError(f"unknown prompt_style {style!r}; use {', '.join(PROMPT_STYLES)}")
    if style == "raw" or lm.prompt_format != "raw":
        return [lm.encode(c.text, add_bos=False) for c in contexts], []
    marker = "\x00question\x00"

    def before_question(context: str | None) -> list[int]:
        text = lm.format_prompt(Prompt("prefix", marker, context))
        return lm.encode(text[: text.index(f"Question: {marker}")], add_bos=False)

    student = before_question(None) if style == "run" else []
    return [before_question(c.text) for c in contexts], student


def sentence_ids(lm, sentence: str, p: SentenceParams) -> list[int]:
    """The sentence's token ids (no BOS), closed by a newline when ``end_answer`` asks for it."""
    return lm.encode(sentence.rstrip() + "\n" if p.end_answer else sentence, add_bos=False)
