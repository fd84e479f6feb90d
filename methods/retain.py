"""Unrelated "retain" texts for SELF-PARAM: general text the student must keep predicting like the base.

The official code takes the first 256 tokens of SlimPajama-6B documents. Here the sources are, by
preference: the local C4 sample or WikiText-2 under the shared data folder (``text/``), text sampled
from the base model itself, or SlimPajama streamed through ``datasets`` when asked for (needs network).
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.models import LM
from benchmark.paths import shared_data
from benchmark.registry import open_dataset

SOURCES = ("auto", "c4", "wikitext", "model", "slimpajama")
SLIMPAJAMA = "DKYoon/SlimPajama-6B"


def resolve_source(source: str) -> str:
    """``auto`` -> the first local file present, else sampling from the model."""
    if source not in SOURCES:
        raise BenchError(f"unknown retain_source {source!r}; use one of {', '.join(SOURCES)}")
    if source != "auto":
        return source
    if shared_data("text", "c4_sample.jsonl"):
        return "c4"
    if shared_data("text", "wikitext2_valid.txt"):
        return "wikitext"
    return "model"


class RetainStream:
    """Retain texts as token ids (without BOS), each ``tokens`` long, handed out in a seeded order.

    File sources cycle when exhausted; the model source samples new text as needed.
    """

    def __init__(self, lm: LM, source: str, tokens: int, seed: int) -> None:
        self.lm = lm
        self.source = resolve_source(source)
        self.tokens = tokens
        self.seed = seed
        self.pool: list[list[int]] | None = None
        self.position = 0

    def take(self, n: int) -> list[list[int]]:
        if n <= 0:
            return []
        if self.source == "model":
            return sample_from_model(self.lm, n, self.tokens, self.seed + self.position, self._advance(n))
        if self.pool is None:
            self.pool = self._load()
            random.Random(self.seed).shuffle(self.pool)
        start = self._advance(n)
        return [self.pool[(start + i) % len(self.pool)] for i in range(n)]

    def _advance(self, n: int) -> int:
        start = self.position
        self.position += n
        return start

    def _load(self) -> list[list[int]]:
        if self.source == "c4":
            path = shared_data("text", "c4_sample.jsonl")
            if path is None:
                raise BenchError("retain_source=c4 needs text/c4_sample.jsonl in the shared data folder")
            texts = _c4_texts(str(path))
        elif self.source == "wikitext":
            path = shared_data("text", "wikitext2_valid.txt")
            if path is None:
                raise BenchError("retain_source=wikitext needs text/wikitext2_valid.txt in the shared data folder")
            texts = _wikitext_paragraphs(str(path))
        else:
            texts = _slimpajama_texts(2000)
        pool = windows(self.lm, texts, self.tokens)
        if not pool:
            raise BenchError(f"no retain text of at least {self.tokens // 2} tokens in source {self.source!r}")
        return pool


def windows(lm: LM, texts: list[str], tokens: int) -> list[list[int]]:
    """The first ``tokens`` tokens of each text (texts shorter than half of that are skipped)."""
    result = []
    for text in texts:
        ids = lm.tokenizer(text[: tokens * 12], add_special_tokens=False)["input_ids"][:tokens]
        if len(ids) >= max(2, tokens // 2):
            result.append(ids)
    return result


@lru_cache(maxsize=4)
def _c4_texts(path: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                text = json.loads(line).get("text", "")
                if text.strip():
                    texts.append(text)
    return texts


@lru_cache(maxsize=4)
def _wikitext_paragraphs(path: str) -> list[str]:
    """Paragraphs of WikiText-2 with its tokenisation marks (`` @-@ `` etc.) undone."""
    paragraphs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for mark, char in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")):
            line = line.replace(mark, char)
        paragraphs.append(line)
    return paragraphs


def _slimpajama_texts(limit: int) -> list[str]:
    try:
        from datasets import load_dataset

        stream = load_dataset(SLIMPAJAMA, split="train", streaming=True)
        texts = []
        for row in stream:
            texts.append(row["text"])
            if len(texts) >= limit:
                break
        return texts
    except Exception as exc:  # no network, no such data set, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"retain_source=slimpajama needs the Hugging Face hub ({SLIMPAJAMA}): {first}") from None


def sample_from_model(lm: LM, n: int, tokens: int, seed: int, offset: int = 0) -> list[list[int]]:
    """``n`` texts sampled from the base model (temperature 1) starting from BOS alone."""
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed * 1_000_003 + offset)
    try:
        texts = lm.generate(
            [""] * n,
            max_new_tokens=tokens,
            stop_at_newline=False,
            sample_temperature=1.0,
            progress="sampling retain text",
        )
    finally:
        torch.random.set_rng_state(state)
    result = []
    for text in texts:
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
        result.append(ids or [lm.tokenizer.eos_token_id])
    return result


class RetainQuestions:
    """Unrelated question-answer sentences, "Question: … Answer: …", handed out in a seeded order.

    They are about invented entities of the ``fictional`` generator drawn under a seed that no
    data set uses, so no scored context contains them. Trained against the teacher WITHOUT the
    context, they tell the student that questions about other things keep their current answers;
    the official code has no such term (``retain_qa_per_target``, off by default).
    """

    SEED_OFFSET = 10**12  # far from every seed a data set is built with
    DOCUMENTS = 200

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.pool: list[str] | None = None
        self.position = 0
        self.read_pool: list[tuple[str, str]] | None = None
        self.read_position = 0

    def take(self, n: int) -> list[str]:
        if n <= 0:
            return []
        if self.pool is None:
            self.pool = [sentence for _, sentence in self._pairs()]
            random.Random(self.seed).shuffle(self.pool)
        start, self.position = self.position, self.position + n
        return [self.pool[(start + i) % len(self.pool)] for i in range(n)]

    def readings(self, n: int) -> list[tuple[str, str]]:
        """``n`` (document text, sentence about it) pairs, in their own seeded order: for the
        student to read an unrelated document in context as the untouched model does."""
        if n <= 0:
            return []
        if self.read_pool is None:
            self.read_pool = self._pairs()
            random.Random(self.seed + 1).shuffle(self.read_pool)
        start, self.read_position = self.read_position, self.read_position + n
        return [self.read_pool[(start + i) % len(self.read_pool)] for i in range(n)]

    def _pairs(self) -> list[tuple[str, str]]:
        documents = open_dataset("fictional", "qa", seed=self.SEED_OFFSET + self.seed).documents(self.DOCUMENTS)
        return [
            (doc.text, f"Question: {qa.question} Answer: {qa.answers[0]}")
            for doc in documents
            for qa in doc.probes + doc.train_qa
        ]


class RetainChats:
    """Unrelated chat exchanges: a user message in the model's chat template and the base model's
    own greedy reply, as token ids with the index of the position that predicts the reply.

    The messages are passages of the retain source (``RetainStream``), so they say nothing about
    any injected context. Trained against the retain teacher reading exactly what the student
    reads, they tell the student to keep answering a chat message the way the model did before
    injection; without them, training on dialog transcripts teaches a small model to continue the
    dialog instead of replying (``retain_chat_per_target``; not in the official code, off by
    default). The pool is made once per method, at first use.
    """

    SEED_OFFSET = 7919  # another order of the retain source than the retain texts'

    def __init__(self, lm: LM, source: str, message_tokens: int, reply_tokens: int, pool: int, seed: int) -> None:
        self.lm = lm
        self.source, self.message_tokens, self.reply_tokens = source, message_tokens, reply_tokens
        self.size = max(1, pool)
        self.seed = seed
        self.pool: list[tuple[list[int], int]] | None = None
        self.position = 0

    def take(self, n: int) -> list[tuple[list[int], int]]:
        if n <= 0:
            return []
        if self.pool is None:
            self.pool = self._make()
        start, self.position = self.position, self.position + n
        return [self.pool[(start + i) % len(self.pool)] for i in range(n)]

    def _make(self) -> list[tuple[list[int], int]]:
        lm = self.lm
        stream = RetainStream(lm, self.source, self.message_tokens, self.seed + self.SEED_OFFSET)
        messages = [lm.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in stream.take(self.size)]
        prompts = [lm.apply_chat_template(m) for m in messages]
        replies = lm.generate(prompts, max_new_tokens=self.reply_tokens, stop_at_newline=False, progress="retain chats")
        pool = []
        for prompt, reply in zip(prompts, replies):
            head = lm.encode(prompt)
            tail = lm.encode(reply, add_bos=False) or [lm.tokenizer.eos_token_id]
            pool.append((head + tail, len(head) - 1))
        return pool
