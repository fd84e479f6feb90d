"""Loading the language model and talking to it.

The parts: ``lm`` (the ``LM`` wrapper: model, tokenizer, precision, batched generation), ``prompts``
(how a question is written for the model, the demonstrations, reading an answer back) and ``loading``
(``load_lm``: a Hugging Face id or local path, or the built-in ``smollm2-135m-instruct`` and
``tiny-random-llama``). Their names are importable from here.
"""

from __future__ import annotations

from benchmark.models.lm import LM, cache_kwarg
from benchmark.models.loading import DEFAULT_MODEL, SMOLLM2_PACKAGE, TINY_MODEL, load_lm
from benchmark.models.prompts import DEMONSTRATIONS, first_answer_line, format_prompt

__all__ = [
    "DEFAULT_MODEL",
    "DEMONSTRATIONS",
    "SMOLLM2_PACKAGE",
    "TINY_MODEL",
    "LM",
    "cache_kwarg",
    "first_answer_line",
    "format_prompt",
    "load_lm",
]
