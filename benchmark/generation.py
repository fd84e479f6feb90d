"""Target-sentence generators that write new QA pairs from a context: ``local`` and ``openai``.

Both follow the official SELF-PARAM prompt style (a system message asking for related questions
"as comprehensively as possible with bullet points and answers", with a one-shot example) and parse
"Question: … Answer: …" pairs from the reply. ``local`` samples from the run's own (instruct)
model, the paper's "instruct" ablation (temperature ``SELFPARAM_BENCH_LOCAL_TEMPERATURE``, default
1); ``openai`` asks any OpenAI-compatible chat endpoint (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``,
model ``SELFPARAM_BENCH_OPENAI_MODEL``, default gpt-4o-mini) at temperature 1.

With ``+grounded`` (``targets=local+grounded``) only pairs whose answer occurs in the context count,
and each context is asked up to ``GROUNDED_ROUNDS`` times instead of ``MAX_ROUNDS``; a context
still short of the count after that keeps what it has, with a warning.

Generated sets are cached under ``cache_dir()/targets/`` keyed by (context hash, generator and
its filter, count, seed), so a rerun neither pays for nor changes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark.errors import BenchError
from benchmark.grounding import GROUNDED, grounding, wants_grounded
from benchmark.paths import cache_dir
from benchmark.types import Document

log = logging.getLogger(__name__)

DEFAULT_COUNT = 10  # sentences per context when the run asks for "all" (the official 10 per epoch)
MAX_ROUNDS = 6  # replies asked for per context before settling for fewer sentences
GROUNDED_ROUNDS = 12  # the same with the grounding filter, which drops most of a small model's pairs

SYSTEM_PROMPT = (
    "Given a context, please generate related questions as comprehensively as possible with "
    "bullet points and answers.\n"
    "This is an example:\n"
    "Context: The Mirren lighthouse stands on a cliff north of Port Ansel. It was lit for the first "
    "time in 1862 and its keeper, Ada Fenwick, kept a diary of every ship she saw.\n\n"
    "Question: Where does the Mirren lighthouse stand? Answer: On a cliff north of Port Ansel.\n"
    "Question: When was the Mirren lighthouse first lit? Answer: In 1862.\n"
    "Question: Who was the keeper of the Mirren lighthouse? Answer: Ada Fenwick.\n"
    "Question: What did Ada Fenwick record in her diary? Answer: Every ship she saw.\n"
    "Question: Near which port is the Mirren lighthouse? Answer: Port Ansel.\n"
)
USER_PROMPT = "Now, please generate related questions based on the following context:\n{context}"

_QUESTION = r"question\s*\d*\s*:"
_PAIR = re.compile(
    rf"{_QUESTION}\s*(?P<q>(?:(?!{_QUESTION}).)+?)\s*answer\s*\d*\s*:\s*(?P<a>.+?)\s*(?={_QUESTION}|$)",
    re.IGNORECASE | re.DOTALL,
)


def parse_qa_pairs(reply: str) -> list[str]:
    """ "Question: … Answer: …" sentences found in a model's reply, in order, without duplicates.

    Accepts bullets, numbering, markdown bold and pairs split over lines or run together on one
    line; an answer ends at the end of its line.
    """
    text = reply.replace("**", "").replace("__", "")
    result: list[str] = []
    seen: set[str] = set()
    for match in _PAIR.finditer(text):
        question = " ".join(match.group("q").split())
        answer_lines = [line.strip() for line in match.group("a").splitlines() if line.strip()]
        answer = answer_lines[0].strip(" -*•") if answer_lines else ""  # never strip "1526."'s digits
        if len(question) < 3 or not answer:
            continue
        sentence = f"Question: {question} Answer: {answer}"
        key = sentence.lower()
        if key not in seen:
            seen.add(key)
            result.append(sentence)
    return result


# ---- the disk cache -------------------------------------------------------------------------------


def context_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_path(generator_id: str, text: str, count: int, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", generator_id)
    return cache_dir() / "targets" / slug / f"{context_hash(text)[:24]}-n{count}-s{seed}.json"


def cache_id(generator_id: str, grounded: bool) -> str:
    """The generator's cache name with its filter: ``local-M`` or ``local-M+grounded``."""
    return f"{generator_id}+{GROUNDED}" if grounded else generator_id


def cached(
    documents: list[Document],
    generator_id: str,
    count: int,
    seed: int,
    make: Callable[[list[Document]], dict[str, list[str]]],
    allow_empty: bool = False,
) -> dict[str, list[str]]:
    """Sentences per document id, from the cache where present; the rest made and stored.

    A context for which ``make`` found nothing is an error unless ``allow_empty`` (a filter may
    leave nothing; that is stored too, so a rerun does not ask again).
    """
    result: dict[str, list[str]] = {}
    missing: list[Document] = []
    for doc in documents:
        path = cache_path(generator_id, doc.text, count, seed)
        if path.exists():
            try:
                result[doc.id] = list(json.loads(path.read_text(encoding="utf-8"))["sentences"])
                continue
            except (ValueError, KeyError):
                pass  # a damaged entry is made again
        missing.append(doc)
    if missing:
        made = make(missing)
        for doc in missing:
            sentences = made.get(doc.id, [])
            if not sentences and not allow_empty:
                raise BenchError(f"generator {generator_id!r} produced no usable QA pair for context {doc.id!r}")
            path = cache_path(generator_id, doc.text, count, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "generator": generator_id,
                        "context_sha256": context_hash(doc.text),
                        "count": count,
                        "seed": seed,
                        "sentences": sentences,
                    },
                    indent=1,
                ),
                encoding="utf-8",
            )
            tmp.replace(path)
            result[doc.id] = sentences
    return result


def collect(
    documents: list[Document],
    count: int,
    ask: Callable[[list[Document], int], list[str]],
    grounded: bool = False,
    label: str = "generator",
) -> dict[str, list[str]]:
    """Ask for replies round after round until every context has ``count`` distinct pairs (with
    ``grounded``: pairs whose answer occurs in the context), or the rounds run out."""
    rounds = GROUNDED_ROUNDS if grounded else MAX_ROUNDS
    tests = {doc.id: grounding(doc.text) for doc in documents} if grounded else {}
    pairs: dict[str, list[str]] = {doc.id: [] for doc in documents}
    for round_ in range(rounds):
        pending = [doc for doc in documents if len(pairs[doc.id]) < count]
        if not pending:
            break
        for doc, reply in zip(pending, ask(pending, round_)):
            have = {s.lower() for s in pairs[doc.id]}
            for sentence in parse_qa_pairs(reply):
                if sentence.lower() not in have and (not grounded or tests[doc.id](sentence)):
                    pairs[doc.id].append(sentence)
                    have.add(sentence.lower())
    short = {doc.id: len(pairs[doc.id]) for doc in documents if len(pairs[doc.id]) < count}
    if short:
        log.warning(
            "%s: %d of %d contexts have fewer than the %d %sQA pairs asked for after %d rounds (fewest: %d, for %s)",
            label,
            len(short),
            len(documents),
            count,
            "grounded " if grounded else "",
            rounds,
            min(short.values()),
            min(short, key=short.__getitem__),
        )
    return {doc_id: sentences[:count] for doc_id, sentences in pairs.items()}


# ---- local: the run's own instruct model ---------------------------------------------------------------


def local_prompt(lm: Any, context: str) -> str:
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_PROMPT.format(context=context)},
    ]
    if getattr(lm.tokenizer, "chat_template", None):
        text: str = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text
    return f"{SYSTEM_PROMPT}\n{USER_PROMPT.format(context=context)}\n\nQuestion:"


def local_temperature() -> float:
    """Sampling temperature of the local generator: 1 (the official setting) unless
    ``SELFPARAM_BENCH_LOCAL_TEMPERATURE`` says otherwise (small models ramble at 1)."""
    raw = os.environ.get("SELFPARAM_BENCH_LOCAL_TEMPERATURE", "1")
    try:
        value = float(raw)
    except ValueError:
        raise BenchError(f"SELFPARAM_BENCH_LOCAL_TEMPERATURE={raw!r} is not a number") from None
    if value <= 0:
        raise BenchError("SELFPARAM_BENCH_LOCAL_TEMPERATURE must be > 0")
    return value


def local_targets(
    documents: list[Document], count: int, seed: int, lm: Any, run: Any = None, max_new_tokens: int = 320
) -> dict[str, list[str]]:
    """QA pairs sampled from the run's model with the official prompt style."""
    import torch

    if lm is None:
        raise BenchError("the local generator needs a loaded model")
    count = count or DEFAULT_COUNT
    grounded = wants_grounded(run)
    temperature = local_temperature()
    generator_id = f"local-{lm.name}" + ("" if temperature == 1.0 else f"-t{temperature:g}")

    def ask(pending: list[Document], round_: int) -> list[str]:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed * 7919 + round_)
        try:
            prompts = [local_prompt(lm, doc.text) for doc in pending]
            replies = lm.generate(
                prompts,
                max_new_tokens=max_new_tokens,
                stop_at_newline=False,
                sample_temperature=temperature,
                progress=f"writing QA pairs (round {round_ + 1})",
            )
        finally:
            torch.random.set_rng_state(state)
        # Without a chat template the prompt ends in "Question:", so the reply starts mid-pair.
        return replies if getattr(lm.tokenizer, "chat_template", None) else ["Question:" + r for r in replies]

    return cached(
        documents,
        cache_id(generator_id, grounded),
        count,
        seed,
        lambda docs: collect(docs, count, ask, grounded, generator_id),
        allow_empty=grounded,
    )


# ---- openai: any OpenAI-compatible chat endpoint ----------------------------------------------------------


def openai_settings() -> tuple[str, str, str | None]:
    """(base URL, model, key) from the environment."""
    base = (os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
    model = os.environ.get("SELFPARAM_BENCH_OPENAI_MODEL") or "gpt-4o-mini"
    key = os.environ.get("OPENAI_API_KEY") or None
    return base, model, key


def chat_completion(
    base: str,
    model: str,
    key: str | None,
    messages: list[dict[str, str]],
    seed: int | None = None,
    retries: int = 3,
    timeout: float = 120.0,
) -> str:
    """One reply at temperature 1; transient failures (network, 429, 5xx) are retried."""
    import requests

    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": 1.0}
    if seed is not None:
        body["seed"] = seed
    problem = ""
    for attempt in range(retries):
        try:
            response = requests.post(f"{base}/chat/completions", json=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            problem = f"cannot reach {base}: {type(exc).__name__}"
        else:
            if response.status_code == 200:
                try:
                    return str(response.json()["choices"][0]["message"]["content"] or "")
                except (ValueError, KeyError, IndexError, TypeError):
                    raise BenchError(f"{base} answered without choices[0].message.content") from None
            problem = f"{base} answered HTTP {response.status_code}: {response.text[:200].strip()}"
            if response.status_code < 500 and response.status_code != 429:
                break  # a client error does not go away by retrying
        if attempt + 1 < retries:
            time.sleep(min(2.0**attempt, 10.0))
    raise BenchError(f"openai generator: {problem}")


def openai_targets(
    documents: list[Document], count: int, seed: int, lm: Any = None, run: Any = None, workers: int = 8
) -> dict[str, list[str]]:
    base, model, key = openai_settings()
    if key is None and base == "https://api.openai.com/v1":
        raise BenchError("the openai generator needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
    count = count or DEFAULT_COUNT

    def ask(pending: list[Document], round_: int) -> list[str]:
        def one(doc: Document) -> str:
            messages = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": USER_PROMPT.format(context=doc.text)},
            ]
            return chat_completion(base, model, key, messages, seed=seed * 7919 + round_)

        with ThreadPoolExecutor(max_workers=min(workers, len(pending))) as pool:
            futures = [pool.submit(one, doc) for doc in pending]
            return [f.result() for f in tqdm(futures, desc=f"asking {model}", leave=False, disable=len(futures) < 4)]

    grounded = wants_grounded(run)
    return cached(
        documents,
        cache_id(f"openai-{model}", grounded),
        count,
        seed,
        lambda docs: collect(docs, count, ask, grounded, f"openai-{model}"),
        allow_empty=grounded,
    )
