"""The LM wrapper: a causal LM, its tokenizer, how prompts are written for it (``prompts``), its
precision, and batched generation."""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria

from benchmark.errors import BenchError
from benchmark.models.bf16_matmul import inference_products
from benchmark.models.prompts import first_answer_line, format_prompt
from benchmark.types import Prompt

# Tokens all prompts of a ``generate`` call must share before their keys and values are computed
# once for all: fewer leave too little to save for a pass of its own.
SHARED_PREFIX_MIN = 16


@dataclass
class LM:
    """A causal LM, its tokenizer and how prompts are written for it."""

    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer (untyped calls: __call__, decode, apply_chat_template)
    name: str
    device: torch.device
    precision: str = "fp32"
    prompt_format: str = "raw"
    fewshot: int = 0  # demonstrations prepended to raw prompts (see DEMONSTRATIONS)
    max_length: int = 2048
    info: dict[str, Any] = field(default_factory=dict)

    # ---- precision -----------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when asked for (fast matmuls on CPUs with AVX512-BF16/AMX)."""
        if self.precision == "bf16-autocast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """``autocast`` for passes without autograd that answer: where bf16 products run as fp32
        products (CPUs without bf16 instructions) it computes them from the function level
        (``InferenceProducts``), the same values for less time. Use it around a whole decoding loop:
        each weight is widened once per use."""
        with self.autocast(), inference_products():
            yield

    # ---- prompts -------------------------------------------------------------------------
    def format_prompt(self, prompt: Prompt) -> str:
        """The text given to the model for one question (the paper's format by default)."""
        return format_prompt(prompt, self.prompt_format, self.fewshot, self.apply_chat_template)

    def apply_chat_template(self, user_message: str) -> str:
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise BenchError(f"model {self.name!r} has no chat template; use prompt_format=raw")
        text: str = tok.apply_chat_template(
            [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
        )
        return text

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids, with BOS first when the tokenizer has one (the official code's layout)."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def check_fits(self, text: str, what: str, reserve: int = 0) -> int:
        """Raise a one-line error if ``text`` plus ``reserve`` tokens exceeds the model window."""
        n = len(self.encode(text))
        if n + reserve > self.max_length:
            raise BenchError(
                f"{what} is {n} tokens, longer than model {self.name!r} allows "
                f"({self.max_length} minus {reserve} for the answer)"
            )
        return n

    # ---- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int = 10,
        batch_size: int = 16,
        model: torch.nn.Module | None = None,
        stop_at_newline: bool = True,
        progress: str | None = None,
        sample_temperature: float | None = None,
        sample_top_k: int = 0,
    ) -> list[str]:
        """Greedy (or sampled) continuation of each prompt, batched with left padding. With
        ``sample_temperature`` it samples, from the ``sample_top_k`` likeliest tokens (0: from all).

        Greedy answers to prompts that all start with the same ``SHARED_PREFIX_MIN`` tokens or more
        (the run's demonstrations) continue one pass over that prefix, padded between it and the
        rest: a third less time answering the sequential demo's questions. The answers are those of
        passes over whole prompts up to float rounding, which moves a few greedy answers of a
        135M model in bf16 as batching them differently does (measured on 60 dev questions of the
        untouched model: 3 or 12 of 60 changed, with eager or sdpa attention, against 6 or 10
        between batches of 16 and of 1). Sampling keeps the plain path, so that its draws repeat
        those of earlier runs."""
        model = model if model is not None else self.model
        tok = self.tokenizer
        was_training = model.training
        model.eval()
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths batch
        outputs: list[str] = [""] * len(prompts)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        bar = tqdm(batches, desc=progress, disable=progress is None or len(batches) < 2, leave=False)
        encoded_all = [self.encode(p) for p in prompts]
        # Greedy answers after a prefix all prompts share (the run's demonstrations): its keys and
        # values are computed once and continued by every batch, instead of once per prompt.
        shared = shared_prefix(encoded_all) if sample_temperature is None else []
        prefix_cache = self._prefix_cache(model, shared) if shared else None
        cache_name = cache_kwarg(self.model)
        for batch in bar:
            encoded = [encoded_all[i][len(shared) :] for i in batch]
            width = len(shared) + max(len(e) for e in encoded)
            input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            input_ids[:, : len(shared)] = torch.tensor(shared, dtype=torch.long)
            attention[:, : len(shared)] = 1
            for row, ids in enumerate(encoded):  # padded between the prefix and the rest
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            kwargs: dict[str, Any] = dict(do_sample=False)
            if sample_temperature is not None:
                kwargs = dict(do_sample=True, temperature=sample_temperature, top_p=1.0, top_k=sample_top_k)
            if stop_at_newline and sample_temperature is None:
                # Greedy only: a sampled batch that stops early leaves the random stream elsewhere
                # for the next batch, and its samples would differ from those drawn before.
                kwargs["stopping_criteria"] = [AnswerLineDone(tok, width)]
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(batch))
                kwargs[cache_name] = cache
            with self.answering():
                # nn.Module's __getattr__ types generate as Tensor | Module; the model is a transformers one.
                generated = model.generate(  # type: ignore[operator]
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    **kwargs,
                )
            for row, i in enumerate(batch):
                text = tok.decode(generated[row, width:], skip_special_tokens=True)
                outputs[i] = first_answer_line(text) if stop_at_newline else text
        model.train(was_training)
        return outputs

    def _prefix_cache(self, model: torch.nn.Module, prefix: list[int]) -> Any:
        """The key/value cache of one pass over ``prefix``, for batches to continue."""
        ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
        with self.answering():
            out = model(input_ids=ids, use_cache=True)
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def clone_model(self) -> torch.nn.Module:
        """An independent copy of the weights, for methods that train."""
        return copy.deepcopy(self.model)

    def parameters_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name of a transformers model's key/value cache argument: ``cache`` in newer releases,
    ``past_key_values`` in older ones."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def shared_prefix(sequences: list[list[int]]) -> list[int]:
    """The tokens every sequence starts with, leaving each at least one of its own (the pass that
    generates needs one), or nothing when fewer than ``SHARED_PREFIX_MIN`` or only one sequence."""
    if len(sequences) < 2:
        return []
    first, n = sequences[0], min(len(s) for s in sequences) - 1
    for s in sequences[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return first[:n] if n >= SHARED_PREFIX_MIN else []


class AnswerLineDone(StoppingCriteria):
    """A generation stopping criterion: a row is done once its first answer line is complete (a
    newline ends a line that ``first_answer_line`` keeps), since later tokens cannot change what
    it returns. Answers take a few tokens of the ``max_new_tokens`` allowed, so a batch usually
    stops after half of them, with the same answers."""

    def __init__(self, tokenizer: Any, prompt_width: int) -> None:
        self.tokenizer, self.prompt_width = tokenizer, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = []
        for row in input_ids[:, self.prompt_width :].tolist():
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            done.append(bool(first_answer_line(text.rpartition("\n")[0])))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
