"""How a question is written for the model: the paper's raw "Question: … Answer:" prompt with
demonstrations before it, or the model's chat template; and how an answer is read back from what the
model wrote (``first_answer_line``)."""

from __future__ import annotations

import re
from collections.abc import Callable

from benchmark.errors import BenchError
from benchmark.types import Prompt

# Worked question-answer demonstrations about invented people and things (`fewshot`): one of
# them lifts SmolLM2-135M's C+Q F1 on `fictional` from about 0.05 to 0.5, three (the `quick`
# setting) to about 0.6: without them the model answers the paper's bare "Question: … Answer:"
# mostly with an empty line.
DEMONSTRATIONS: tuple[tuple[str, str, str], ...] = (
    ("Lena Hart is a baker. She lives in the city of Orvik.", "Where does Lena Hart live?", "Orvik"),
    ("The Kessel bridge was built in 1874 from grey stone.", "When was the Kessel bridge built?", "1874"),
    ("Tomas Ferrow owns a red kayak and a small dog called Pip.", "What is the name of Tomas Ferrow's dog?", "Pip"),
)


def format_prompt(prompt: Prompt, prompt_format: str, fewshot: int, chat: Callable[[str], str]) -> str:
    """The text given to the model for one question (the paper's format by default): the raw prompt
    after ``fewshot`` demonstrations, or with ``prompt_format="chat"`` (or a chat prompt) the user
    message that ``chat`` puts into the model's chat template."""
    if prompt.chat or prompt_format == "chat":
        content = prompt.question if prompt.chat else f"{prompt.question}\nAnswer in a few words."
        if prompt.context is not None:
            content = f"Context: {prompt.context}\n\n{content}"
        return chat(content)
    if prompt_format != "raw":
        raise BenchError(f"unknown prompt_format {prompt_format!r}; use raw or chat")
    with_context = prompt.context is not None
    demos = "".join(
        _raw_qa(context if with_context else None, question, answer) + "\n\n"
        for context, question, answer in DEMONSTRATIONS[:fewshot]
    )
    return demos + _raw_qa(prompt.context, prompt.question)


def _raw_qa(context: str | None, question: str, answer: str | None = None) -> str:
    """The paper's prompt: "Context: …\nQuestion: q Answer:" (the context line only for C+Q)."""
    text = f"Question: {question} Answer:" + (f" {answer}" if answer is not None else "")
    return f"Context: {context}\n{text}" if context is not None else text


# "The answer is: X", "The answer is X", "Answer - X", "A: X"; "A" only with a colon, since "A-10
# Warthog" is an answer
_ANSWER_PREFIX = re.compile(r"^\s*(?:(?:the answer is|answer)\s*[:\-]|a\s*:|the answer is\b)\s*", re.IGNORECASE)


def first_answer_line(text: str) -> str:
    """The first non-empty line with a leading "The answer is(:)" / "Answer:" / "A:" removed.

    Small instruct models answer the paper's raw prompt as "The answer is: X"; this is the
    answer-extraction filter an lm-eval task would apply, and it is the same for every method.
    """
    for line in text.splitlines():
        stripped = line.strip()
        while True:
            shorter = _ANSWER_PREFIX.sub("", stripped, count=1)
            if shorter == stripped:
                break
            stripped = shorter.strip()
        if stripped:
            return stripped
    return ""
