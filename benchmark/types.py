"""The records that flow between data sets, tasks and methods."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QA:
    """A question with its accepted answers (the first is the canonical one)."""

    question: str
    answers: tuple[str, ...]

    def sentence(self) -> str:
        """The paper's target-sentence form: "Question: … Answer: …"."""
        return f"Question: {self.question} Answer: {self.answers[0]}"


@dataclass(frozen=True)
class Document:
    """One context of a QA data set: its text, the probes that score it and optional training QA.

    ``train_qa`` are question-answer pairs the data set itself provides for training (phrased
    differently from the probes); they feed the ``dataset`` target-sentence generator.
    """

    id: str
    text: str
    probes: tuple[QA, ...]
    train_qa: tuple[QA, ...] = ()
    source: str = ""  # "file:line" for error messages
    # What the context belongs to (a SQuAD article's title): a group goes to the dev or the test
    # split as a whole, and spread sampling takes contexts from as many groups as it can.
    group: str = ""


@dataclass
class Context:
    """What a method receives to inject: the text and its target sentences, never the probes."""

    id: str
    text: str
    targets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Prompt:
    """A question to answer.

    ``context`` is set by the task only for the C+Q oracle; retrieval methods set it to what they
    retrieved (``dataclasses.replace``). ``chat`` marks a complete user message for the chat
    template (recommendation); ``max_new_tokens`` and ``multiline`` let a task ask for long,
    multi-line answers instead of the run's short one-line default.
    """

    id: str
    question: str
    context: str | None = None
    chat: bool = False
    max_new_tokens: int | None = None
    multiline: bool = False


@dataclass(frozen=True)
class Answer:
    """A method's reply to one prompt.

    ``retrieved`` is declared by methods that put retrieved material in context: the ids of the
    contexts behind it, best first ([] when nothing was retrieved); None for methods that do not
    retrieve. Tasks score retrieval recall from it.
    """

    text: str
    retrieved: tuple[str, ...] | None = None


@dataclass
class Footprint:
    """The storage a method adds (the paper's column S), measured rather than asserted."""

    extra_bytes: int = 0
    changed_params: int = 0
    detail: dict[str, int] = field(default_factory=dict)
