"""Target-sentence generators that write new sentences from a context: ``local``, ``openai`` and
``implications``.

``local`` and ``openai`` follow the official SELF-PARAM prompt style (a system message asking for
related questions "as comprehensively as possible with bullet points and answers", with a one-shot
example) and parse "Question: … Answer: …" pairs from the reply. ``local`` samples from the run's
own (instruct) model, the paper's "instruct" ablation (temperature
``SELFPARAM_BENCH_LOCAL_TEMPERATURE``, default 1); ``openai`` asks any OpenAI-compatible chat
endpoint (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, model ``SELFPARAM_BENCH_OPENAI_MODEL``, default
gpt-4o-mini) at temperature 1.

``implications`` writes SEAL-style self-edits (Zweiger et al. 2025, "Self-Adapting Language
Models"): the run's own model, sampled like ``local``, is asked for a list of implications of the
passage (its facts restated, and what follows from them), and each line of the reply is one target
sentence: a statement, not a QA pair (a method that trains on target sentences reads it as plain
text, every token of it scored). This is SEAL's inner loop only: SEAL's outer loop, which rewards
the self-edits that improved the updated model's answers and trains the generator on them
(ReST-EM), is not done; the self-edits come from the untouched model. SEAL also trains on the
passage itself, which here is a method's choice (fine-tuning on the contexts), not the
generator's. Differences from SEAL's prompt: the wording is ours, with a one-shot example as
``local`` has, so that a small model keeps one statement per line.

With ``+grounded`` (``targets=local+grounded``) only grounded sentences count
(``benchmark.grounding``: a QA pair's answer occurs in the context; a statement has at least half
of its content words in it), and each context is asked up to ``GROUNDED_ROUNDS`` times instead of
``MAX_ROUNDS`` (``rounds_for``: both per ``DEFAULT_COUNT`` sentences asked for, so the paper's 500
fresh pairs per context get as many replies per sentence as its 10); a context still short of the
count after that keeps what it has, with a warning.

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


def rounds_for(count: int, grounded: bool) -> int:
    """Replies asked for per context before settling for fewer than ``count`` sentences: the rounds
    that suffice for ``DEFAULT_COUNT``, once per ``DEFAULT_COUNT`` sentences asked for."""
    per_ten = GROUNDED_ROUNDS if grounded else MAX_ROUNDS
    return per_ten * max(1, -(-count // DEFAULT_COUNT))


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


IMPLICATIONS_SYSTEM_PROMPT = (
    "Read the passage and list several implications derived from its content, directly or "
    "indirectly: its facts said in other words, and what follows from them. Write one implication "
    "per line, each a complete sentence that names what it is about, so that it can be understood "
    "without the passage.\n"
    "This is an example:\n"
    "Passage: The Mirren lighthouse stands on a cliff north of Port Ansel. It was lit for the first "
    "time in 1862 and its keeper, Ada Fenwick, kept a diary of every ship she saw.\n\n"
    "The Mirren lighthouse is on a cliff to the north of Port Ansel.\n"
    "The Mirren lighthouse has been shining since 1862.\n"
    "Ada Fenwick was the keeper of the Mirren lighthouse.\n"
    "Ada Fenwick's diary is a record of the ships seen from the Mirren lighthouse.\n"
    "Ships sailing near Port Ansel after 1862 could see the light of the Mirren lighthouse.\n"
)
IMPLICATIONS_USER_PROMPT = "Now, please list implications of the following passage:\nPassage: {context}"
MIN_STATEMENT_WORDS = 4  # shorter lines are headings or chatter ("Sure!", "Implications"), not statements
# Longer lines are a model rambling on without line breaks (often cut off by the token limit), not
# one implication; SEAL keeps every line, but its larger models rarely write such lines.
MAX_STATEMENT_WORDS = 60
# Lines a model writes around its list rather than in it.
_CHATTER = re.compile(
    r"^(?:sure|certainly|of course|here (?:are|is)|i hope|i can|i cannot|i can't|note|let me|these implications)\b",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^(?:[-*•·–—]+|\(?\d{1,3}[.):]|implication\s*\d*\s*[:.-])\s*", re.IGNORECASE)


def parse_statements(reply: str) -> list[str]:
    """The statements of a model's reply, one per line, in order, without duplicates.

    Bullets, numbering ("1.", "2)"), "Implication 3:" labels and markdown bold are removed; lines
    that end in a colon (headings such as "Here are some implications:"), that echo the prompt
    ("Passage: …"), that hold a "Question:" / "Answer:" pair, that are the model's chatter around
    the list ("Sure!", "I hope this helps") or that have fewer than ``MIN_STATEMENT_WORDS`` or more
    than ``MAX_STATEMENT_WORDS`` words are not statements.
    """
    result: list[str] = []
    seen: set[str] = set()
    for raw in reply.replace("**", "").replace("__", "").splitlines():
        line = raw.strip()
        while True:  # "1. - " and the like
            shorter = _BULLET.sub("", line, count=1).strip()
            if shorter == line:
                break
            line = shorter
        line = " ".join(line.split())
        lowered = line.lower()
        if (
            not MIN_STATEMENT_WORDS <= len(line.split()) <= MAX_STATEMENT_WORDS
            or line.endswith(":")
            or lowered.startswith(("passage:", "implications:", "context:"))
            or "question:" in lowered
            or "answer:" in lowered
            or _CHATTER.match(line)
        ):
            continue
        if lowered not in seen:
            seen.add(lowered)
            result.append(line)
    return result


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
    what: str = "QA pair",
) -> dict[str, list[str]]:
    """Sentences per document id, from the cache where present; the rest made and stored.

    A context for which ``make`` found nothing (no ``what``) is an error unless ``allow_empty`` (a
    filter may leave nothing; that is stored too, so a rerun does not ask again).
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
                raise BenchError(f"generator {generator_id!r} produced no usable {what} for context {doc.id!r}")
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
    parse: Callable[[str], list[str]] = parse_qa_pairs,
    what: str = "QA pairs",
) -> dict[str, list[str]]:
    """Ask for replies round after round until every context has ``count`` distinct sentences
    (``parse`` reads them from a reply; with ``grounded``: grounded ones), or the rounds run out."""
    rounds = rounds_for(count, grounded)
    tests = {doc.id: grounding(doc.text) for doc in documents} if grounded else {}
    pairs: dict[str, list[str]] = {doc.id: [] for doc in documents}
    for round_ in range(rounds):
        pending = [doc for doc in documents if len(pairs[doc.id]) < count]
        if not pending:
            break
        for doc, reply in zip(pending, ask(pending, round_)):
            have = {s.lower() for s in pairs[doc.id]}
            for sentence in parse(reply):
                if sentence.lower() not in have and (not grounded or tests[doc.id](sentence)):
                    pairs[doc.id].append(sentence)
                    have.add(sentence.lower())
    short = {doc.id: len(pairs[doc.id]) for doc in documents if len(pairs[doc.id]) < count}
    if short:
        log.warning(
            "%s: %d of %d contexts have fewer than the %d %s%s asked for after %d rounds (fewest: %d, for %s)",
            label,
            len(short),
            len(documents),
            count,
            "grounded " if grounded else "",
            what,
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
    if lm is None:
        raise BenchError("the local generator needs a loaded model")
    count = count or DEFAULT_COUNT
    grounded = wants_grounded(run)
    temperature = local_temperature()
    generator_id = f"local-{lm.name}" + ("" if temperature == 1.0 else f"-t{temperature:g}")
    # Without a chat template the prompt ends in "Question:", so the reply starts mid-pair.
    ask = sampler(lm, local_prompt, seed, temperature, max_new_tokens, "writing QA pairs", "Question:")
    return cached(
        documents,
        cache_id(generator_id, grounded),
        count,
        seed,
        lambda docs: collect(docs, count, ask, grounded, generator_id),
        allow_empty=grounded,
    )


def sampler(
    lm: Any,
    prompt: Callable[[Any, str], str],
    seed: int,
    temperature: float,
    max_new_tokens: int,
    label: str,
    raw_start: str,
    top_k: int = 0,
) -> Callable[[list[Document], int], list[str]]:
    """``ask`` for ``collect``: one sampled reply per context from the run's model (from its
    ``top_k`` likeliest tokens, 0: all), seeded by the run's seed and the round (the global torch
    generator is left as it was). ``raw_start``, the end of a prompt without a chat template, is
    put back before each reply."""
    import torch

    def ask(pending: list[Document], round_: int) -> list[str]:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed * 7919 + round_)
        try:
            prompts = [prompt(lm, doc.text) for doc in pending]
            replies: list[str] = lm.generate(
                prompts,
                max_new_tokens=max_new_tokens,
                stop_at_newline=False,
                sample_temperature=temperature,
                sample_top_k=top_k,
                progress=f"{label} (round {round_ + 1})",
            )
        finally:
            torch.random.set_rng_state(state)
        return replies if getattr(lm.tokenizer, "chat_template", None) else [raw_start + r for r in replies]

    return ask


# ---- implications: SEAL-style self-edits by the run's own model -----------------------------------------


def _prompt_statements() -> frozenset[str]:
    """The lines of the implications prompt that would parse as statements: its instruction and
    its example's implications, which a small model sometimes copies instead of writing its own."""
    return frozenset(line.lower() for line in parse_statements(IMPLICATIONS_SYSTEM_PROMPT))


def parse_implications(reply: str) -> list[str]:
    """``parse_statements`` without the lines the model copied from the prompt."""
    copied = _prompt_statements()
    return [line for line in parse_statements(reply) if line.lower() not in copied]


def implications_prompt(lm: Any, context: str) -> str:
    messages = [
        {"role": "system", "content": IMPLICATIONS_SYSTEM_PROMPT},
        {"role": "user", "content": IMPLICATIONS_USER_PROMPT.format(context=context)},
    ]
    if getattr(lm.tokenizer, "chat_template", None):
        text: str = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text
    return f"{IMPLICATIONS_SYSTEM_PROMPT}\n{IMPLICATIONS_USER_PROMPT.format(context=context)}\n\nImplications:\n"


def implications_targets(
    documents: list[Document], count: int, seed: int, lm: Any, run: Any = None, max_new_tokens: int = 320
) -> dict[str, list[str]]:
    """Statements (SEAL-style self-edits) sampled from the run's model, one per line of its reply,
    cached and filtered like ``local``'s QA pairs."""
    if lm is None:
        raise BenchError("the implications generator needs a loaded model")
    count = count or DEFAULT_COUNT
    grounded = wants_grounded(run)
    temperature = local_temperature()
    generator_id = f"implications-{lm.name}" + ("" if temperature == 1.0 else f"-t{temperature:g}")
    ask = sampler(lm, implications_prompt, seed, temperature, max_new_tokens, "writing implications", "")
    return cached(
        documents,
        cache_id(generator_id, grounded),
        count,
        seed,
        lambda docs: collect(docs, count, ask, grounded, generator_id, parse_implications, "statements"),
        allow_empty=grounded,
        what="statement",
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
