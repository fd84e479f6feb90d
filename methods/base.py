"""The Method interface and the two reference rows: Base, C+Q (the ceiling) and Base, Q (the floor)."""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from benchmark.checkpoint import StreamCheckpoints
from benchmark.config import RunParams
from benchmark.method_info import DEFAULT_TABLE_ORDER, ROLES, STORAGE_CLASSES
from benchmark.models import LM
from benchmark.registry import register_method
from benchmark.types import Context, Footprint, Prompt


@dataclass
class NoParams:
    """For methods without settings of their own."""


# Method metadata that a subclass does not inherit (see ``Method``), with its defaults.
_OWN_METADATA: dict[str, Any] = {"display_name": "", "table_order": DEFAULT_TABLE_ORDER, "role": ""}


class Method(ABC):
    """Turns the base model plus injected contexts into something that answers prompts.

    A fresh instance serves one episode: the runner builds a new one for every batch or sequence,
    so nothing leaks between episodes. Subclasses that train must work on their own copy of the
    weights (``lm.clone_model()``), never on ``lm.model``, which is shared and stays the original.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    uses_targets: ClassVar[bool] = False  # needs generated target sentences in its contexts
    sees_gold_context: ClassVar[bool] = False  # only the C+Q oracle

    # What tables and the leaderboard show of the method (benchmark/method_info.py); the runner
    # writes these into every result file. family and storage_class are inherited; display_name,
    # table_order and role belong to one registered method, so a subclass that sets none gets the
    # defaults, not its parent's row name, place or role.
    display_name: ClassVar[str] = ""  # the row name ("SELF-PARAM"); "" shows the registered name
    family: ClassVar[str] = ""  # reference, fine-tuning, parametric, memory, long-context, retrieval
    storage_class: ClassVar[str] = ""  # "O(1)" or "O(n)" in the number of injected contexts; "" shows "—"
    table_order: ClassVar[int] = DEFAULT_TABLE_ORDER  # row position; the default follows the built-ins
    role: ClassVar[str] = ""  # "floor" (gains are measured against it), "ceiling" or ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr, default in _OWN_METADATA.items():
            if attr not in vars(cls):
                setattr(cls, attr, default)
        if cls.storage_class not in ("", *STORAGE_CLASSES):
            raise TypeError(f"{cls.__name__}.storage_class is {cls.storage_class!r}; "
                            f"use one of {', '.join(STORAGE_CLASSES)} (or leave it empty)")
        if cls.role not in ("", *ROLES):
            raise TypeError(f"{cls.__name__}.role is {cls.role!r}; use one of {', '.join(ROLES)} (or leave it empty)")

    def __init__(self, lm: LM, params: Any, run: RunParams, seed: int = 0) -> None:
        self.lm = lm
        self.params = params
        self.run = run
        self.seed = seed
        self.model: torch.nn.Module = lm.model
        self.stats: dict[str, float] = {"train_tokens": 0, "train_s": 0.0}
        # Set by the runner when checkpoints are on; methods that train save into it.
        self.checkpoints: StreamCheckpoints | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this method cannot run on this machine (missing package, checkpoint, GPU), or None."""
        return None

    @classmethod
    def params_problem(cls, params: Any) -> str | None:
        """Why a run with these settings must not start (judged before anything loads), or None."""
        return None

    def inject(self, contexts: list[Context]) -> None:
        """Absorb the contexts: train, index or remember. Called once per batch or sequence step."""

    def generate(self, prompts: list[Prompt]) -> list[str]:
        """Answers, in order. The default asks ``self.model`` with the run's prompt format.

        Prompts are grouped by their generation settings (answer length, one line or many).
        """
        answers: list[str] = [""] * len(prompts)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault((p.max_new_tokens or self.run.max_new_tokens, p.multiline), []).append(i)
        for (max_new_tokens, multiline), indices in groups.items():
            outputs = self.lm.generate(
                [self.lm.format_prompt(prompts[i]) for i in indices],
                max_new_tokens=max_new_tokens,
                batch_size=self.run.eval_batch_size,
                model=self.model,
                stop_at_newline=not multiline,
                progress="answering",
            )
            for i, output in zip(indices, outputs):
                answers[i] = output
        return answers

    def footprint(self) -> Footprint:
        """Extra state kept beyond the base model; Base methods keep none."""
        return Footprint()


@register_method("base_q")
class BaseQ(Method):
    description = "Base, Q: the untouched model answers without the context (the floor)"
    display_name = "Base, Q"
    family = "reference"
    storage_class = "O(1)"
    table_order = 20
    role = "floor"


@register_method("base_cq")
class BaseCQ(Method):
    description = "Base, C+Q: the gold context in the prompt (the ceiling)"
    sees_gold_context = True
    display_name = "Base, C+Q"
    family = "reference"
    storage_class = "O(n)"
    table_order = 10
    role = "ceiling"
