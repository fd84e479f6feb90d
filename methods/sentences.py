"""How target sentences are framed for training, and which of them an epoch takes, shared by the
methods that train on them (SELF-PARAM, FT(S), Cartridges, PRAG, DCD).

A target sentence is "Question: … Answer: …", or a statement (an ``implications`` self-edit: any
sentence without "Answer:"), which is plain text in the place where a question would stand, every
token of it scored whatever ``sentence_loss`` says. The official code trains a sentence right after
BOS (and, for SELF-PARAM's teacher, the context). ``prompt_style=run`` instead frames it as the run's own
evaluation prompt does, demonstrations included, so the student learns the answer in the exact
position where it is later asked; ``end_answer`` also trains the line break that closes an answer
in that format, so the student learns where an answer stops instead of running on.

``prompt_style=chat`` asks the question as a chat prompt is asked (recommendation): the question as
the user message of the model's chat template (the teacher's with "Context: …" before it, as the
C+Q chat prompt), the answer as the assistant's reply, closed by the end-of-turn token with
``end_answer``; a model trained in the raw "Question: … Answer:" frame learns to continue the
quoted dialog instead of replying.

Token parity: a framed sentence's ids are exactly the ids of the evaluation prompt that asks its
question followed by the ids of its answer. The prompt text is tokenised as one string, as
generation does: tokenised on its own, a prefix ending in a blank line gives one "\\n\\n" token that
the evaluation prompt (where "Question" follows) never contains.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from benchmark.errors import BenchError
from benchmark.types import Context, Prompt
from methods.training import TrainParams

T = TypeVar("T")

PROMPT_STYLES = ("raw", "run", "run-teacher", "chat")
ANSWER_MARK = "Answer:"
QUESTION_MARK = "Question:"


@dataclass(frozen=True)
class ChatFrame:
    """The chat template's text around a user message: the question goes between the two."""

    before: str
    after: str


# What comes before a sentence: prompt text tokenised together with it (``run``), token ids
# prepended as they are (``raw``: the official code's BOS + context ids + sentence ids), or the
# chat template around the question (``chat``).
Prefix = str | list[int] | ChatFrame


@dataclass
class SentenceParams(TrainParams):
    # "raw": BOS + sentence (the teacher also reads the context first), the official layout;
    # "run": after the run's prompt prefix with / without the context (its demonstrations and
    # "Context: …" line); "run-teacher": the teacher as in "run", the student as in "raw".
    # "chat": the question as the user message of the chat template (the teacher's with the
    # "Context: …" line), the answer as the reply: how the recommendation task asks its probes.
    prompt_style: str = "raw"
    end_answer: bool = False  # append the newline that ends an answer in the run's prompt format
    # Which tokens of a sentence carry the loss: "all" (the official code: question and answer) or
    # "answer" (the tokens after "Answer:"). A long question, such as the dialog turns of a
    # recommendation target, otherwise teaches the student to write dialog rather than answer.
    # "content": the answer's tokens after a leading list marker ("1.", "-"): a numbered reply's
    # opening is the format the prompt asks for, not knowledge, and a small model reading a
    # conversation picks it badly (README, recommendation). Without a marker it is "answer".
    # A statement has no answer part: all of its tokens carry the loss either way.
    sentence_loss: str = "all"
    # Target sentences per context and epoch, taken in turn; 0 = all of them every epoch. The
    # official code trains a fresh slice of 10 per epoch (``paper``): rivals trained on the same
    # sentences take the same slices, so every method sees each sentence as often.
    targets_per_epoch: int = 0

    RANGES: ClassVar[dict[str, str]] = {"targets_per_epoch": ">= 0"}


SENTENCE_LOSSES = ("all", "answer", "content")
LIST_MARKER = re.compile(r"\s*(?:\d+[.)]|[-*•])(?=\s)")


def targets_in_turn(count: int, epoch: int, per_epoch: int) -> list[int]:
    """Indices of the ``count`` target sentences of a context that epoch ``epoch`` trains on: all of
    them when ``per_epoch`` is 0, else ``per_epoch`` taken in turn, wrapping round when fewer."""
    n = min(count, per_epoch) if per_epoch else count
    return [(epoch * n + i) % count for i in range(n)]


def epoch_share(groups: Sequence[Sequence[T]], epoch: int, per_epoch: int) -> list[T]:
    """One epoch's share of examples grouped by context, one per target sentence: each context's
    ``targets_in_turn``, in context order."""
    return [group[j] for group in groups for j in targets_in_turn(len(group), epoch, per_epoch)]


@dataclass(frozen=True)
class Framed:
    """A sentence's training ids (BOS first when the tokenizer has one) and where its loss starts.

    ``start`` is the index of the first scored token: the sentence's first token, or with
    ``sentence_loss=answer`` the answer's; ``first`` the position whose prediction is the first
    scored token (``Example.first`` / ``TeacherSpec.first``). ``marker``: how many tokens right
    before ``start`` are the answer's list marker, left unscored by ``sentence_loss=content``.
    """

    ids: list[int]
    start: int
    marker: int = 0

    @property
    def first(self) -> int:
        return max(0, self.start - 1)

    @property
    def sentence(self) -> list[int]:
        """The scored tokens."""
        return self.ids[self.start :]


def sentence_prefixes(lm, contexts: list[Context], style: str) -> tuple[list[Prefix], Prefix]:
    """What comes before a target sentence: one teacher prefix per context, and the student's.

    ``raw``: the context's ids / nothing (the official code). ``run``: the text the run's raw
    prompt format puts before "Question:" with and without the context (demonstrations,
    "Context: …"). ``run-teacher``: the teacher's as in ``run``, the student's as in ``raw``.
    ``chat``: the chat template around the user message, with and without "Context: …".
    """
    if style not in PROMPT_STYLES:
        raise BenchError(f"unknown prompt_style {style!r}; use {', '.join(PROMPT_STYLES)}")
    marker = "\x00question\x00"
    if style == "chat":

        def around_question(context: str | None) -> ChatFrame:
            text = lm.format_prompt(Prompt("prefix", marker, context, chat=True))
            before, after = text.split(marker)
            return ChatFrame(before, after)

        return [around_question(c.text) for c in contexts], around_question(None)
    if style == "raw" or lm.prompt_format != "raw":
        return [lm.encode(c.text, add_bos=False) for c in contexts], []

    def before_question(context: str | None) -> str:
        text = lm.format_prompt(Prompt("prefix", marker, context))
        return text[: text.index(f"Question: {marker}")]

    student: Prefix = before_question(None) if style == "run" else []
    return [before_question(c.text) for c in contexts], student


def frame(lm, prefix: Prefix, sentence: str, p: SentenceParams) -> Framed:
    """BOS + prefix + sentence as token ids: the evaluation prompt's ids, then the answer's.

    The part up to and including "Answer:" is tokenised together with a text prefix, exactly as
    ``lm.generate`` tokenises the prompt; the answer (and the closing newline with ``end_answer``)
    is tokenised on its own, as the model produces it after the prompt. A statement (no "Answer:")
    is tokenised with the prefix as a question would be, then the closing newline with
    ``end_answer``; all of its tokens are scored.
    """
    sentence = sentence.rstrip()
    cut = sentence.rfind(ANSWER_MARK)
    split = cut + len(ANSWER_MARK)
    question, answer = (sentence, "") if cut < 0 else (sentence[:split], sentence[split:])
    if p.sentence_loss not in SENTENCE_LOSSES:
        raise BenchError(f"unknown sentence_loss {p.sentence_loss!r}; use {' or '.join(SENTENCE_LOSSES)}")
    if isinstance(prefix, ChatFrame):
        return _frame_chat(lm, prefix, question, answer, p, has_answer=cut >= 0)
    answer += "\n" if p.end_answer else ""
    bos = lm.encode("")
    if isinstance(prefix, str):
        head = lm.encode(prefix + question, add_bos=False)
        start = len(bos) + _tokens_before(lm, prefix + question, len(prefix))
    else:
        head = list(prefix) + lm.encode(question, add_bos=False)
        start = len(bos) + len(prefix)
    marker = _marker_tokens(lm, answer, p) if cut >= 0 else 0
    if p.sentence_loss != "all" and cut >= 0:
        start = len(bos) + len(head) + marker
    return Framed(bos + head + lm.encode(answer, add_bos=False), start, marker)


def _frame_chat(lm, chat: ChatFrame, question: str, answer: str, p: SentenceParams, has_answer: bool) -> Framed:
    """The question as the user message, the answer as the assistant's reply (see the module)."""
    if has_answer:
        # exactly the text between "Question: " and " Answer:": a probe's prompt may end in a space
        asked = question.removeprefix(QUESTION_MARK).removesuffix(ANSWER_MARK)
        text = chat.before + asked.removeprefix(" ").removesuffix(" ") + chat.after
    else:  # a statement: the user's message alone, every token scored
        text = chat.before + question.strip()
    answer = answer.strip()
    head = lm.encode(text)  # BOS first unless the template starts with it: as generation encodes
    start = len(head) - len(lm.encode(text, add_bos=False)) + _tokens_before(lm, text, len(chat.before))
    marker = _marker_tokens(lm, answer, p) if has_answer else 0
    if p.sentence_loss != "all" and has_answer:
        start = len(head) + marker
    eos = lm.tokenizer.eos_token_id
    end = [eos] if p.end_answer and has_answer and eos is not None else []  # where generation stops
    return Framed(head + lm.encode(answer, add_bos=False) + end, start, marker)


def _marker_tokens(lm, answer: str, p: SentenceParams) -> int:
    """How many of the answer's first tokens are its list marker, left unscored by ``content``."""
    marker = LIST_MARKER.match(answer) if p.sentence_loss == "content" else None
    return _tokens_before(lm, answer, marker.end()) if marker else 0


def _tokens_before(lm, text: str, chars: int) -> int:
    """How many of ``text``'s tokens start before character ``chars``."""
    if not chars:
        return 0
    tok = lm.tokenizer
    if getattr(tok, "is_fast", False):
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return sum(1 for begin, _ in offsets if begin < chars)
    ids = lm.encode(text, add_bos=False)
    for n in range(len(ids) + 1):  # slow tokenizers: the shortest head that decodes past the prefix
        if len(tok.decode(ids[:n])) >= chars:
            return n
    return len(ids)
