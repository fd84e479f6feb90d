"""Training MemoryLLM-mini's memory mechanism at small scale (``bench train memoryllm-mini``).

MemoryLLM's objective: inject a context into the pool, then predict what depends on it from the
pool alone, with the gradient flowing through the self-update. Two kinds of steps, mixed:
- text: inject ``context_tokens`` tokens of a C4 document, predict its next ``target_tokens``
  (MemoryLLM's pre-training objective; skipped when the local C4 sample is absent);
- QA: inject a fictional context and answer one of its *training* questions in the evaluation's
  prompt format. Training entities come from other seeds of the generator than the evaluation set
  (seed 0), any name shared with its first 1000 contexts is skipped, and only the training
  phrasings are used, never the probe phrasings.
After each target, 0..``max_distractors`` further contexts are injected before the prediction, so the
mechanism learns to keep knowledge while the pool is being overwritten. The pool persists (detached)
from step to step, as in the official training on a stream of documents.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from benchmark.models import LM
from benchmark.paths import cache_dir, shared_data
from benchmark.registry import open_dataset
from benchmark.results import git_commit, safe_name
from benchmark.types import QA, Document, Prompt
from methods.memoryllm.mini import MemoryMechanism, MemoryPool, PoolConfig, build

log = logging.getLogger(__name__)

TRAINING_DATASET = "fictional"  # generated entities: a fresh, unlimited supply for each seed
EVAL_SEED_CONTEXTS = 1000  # names of the evaluation set's first contexts are never trained on
HELDOUT_SEED = 999  # a seed kept out of training, for the before/after check


@dataclass
class MiniTrainParams:
    # quick: about the 4 minutes a 2-core bf16 CPU gave it when a wall-time cap chose its length (155
    # steps); a step count, so that how much the mechanism is trained does not depend on the machine
    steps: int = 150
    max_minutes: float = 0.0  # stop earlier when this wall time is reached (0 = no limit)
    lr: float = 1e-3
    # Steps over which the learning rate rises linearly to ``lr`` (0 = none): Adam's first steps
    # move every parameter by about lr whatever its gradient, which the fresh embeddings may not bear.
    warmup_steps: int = 0
    qa_fraction: float = 0.7  # share of QA steps (the rest: text continuation)
    max_distractors: int = 2
    context_tokens: int = 64
    target_tokens: int = 32
    heldout: int = 24  # held-out QA examples for the before/after check

    RANGES: ClassVar[dict[str, str]] = {
        "steps": ">= 1",
        "max_minutes": ">= 0",
        "lr": "> 0",
        "warmup_steps": ">= 0",
        "qa_fraction": "[0, 1]",
        "max_distractors": ">= 0",
        "context_tokens": ">= 1",
        "target_tokens": ">= 1",
        "heldout": ">= 1",
    }


TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 2, "max_minutes": 1.0, "heldout": 1, "max_distractors": 1},
    "quick": {},
    # the official schedule grows to 20 contexts per sample; its LR is for full-model LoRA on 7B
    "paper": {"steps": 20000, "max_distractors": 19},
}


@dataclass
class Sample:
    inject: torch.Tensor  # token ids to inject
    target: torch.Tensor  # token ids read after injection
    loss_from: int  # index in ``target`` of the first predicted token


def checkpoint_path(model_name: str, cfg: PoolConfig) -> Path:
    """Where the trained mechanism of one model and pool shape lives."""
    name = f"{safe_name(model_name)}__K{cfg.num_tokens}_blocks{cfg.num_blocks}_r{cfg.lora_r}.pt"
    return cache_dir() / "trained" / "memoryllm-mini" / name


def _entity(text: str) -> str:
    return text.split(" is a ", 1)[0]


def fictional(seed: int):
    """The generated QA data set the mechanism trains on, with this seed (found by its registered name)."""
    return open_dataset(TRAINING_DATASET, "qa", seed=seed)


class TrainingData:
    """QA samples from fresh fictional entities and text samples from the local C4 sample."""

    def __init__(self, lm: LM, p: MiniTrainParams, seed: int) -> None:
        self.lm, self.p = lm, p
        self.rng = random.Random(seed)
        self.excluded = {_entity(d.text) for d in fictional(seed=0).documents(EVAL_SEED_CONTEXTS)}
        self.texts = self._c4_texts()
        self.qa = self._qa_stream(seed)

    def _c4_texts(self) -> list[str]:
        path = shared_data("text", "c4_sample.jsonl")
        if path is None:
            log.warning("no local C4 sample: training on QA steps only")
            return []
        texts = []
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                text = json.loads(line).get("text", "")
                if len(text) > 600:
                    texts.append(text)
        return texts

    def _qa_stream(self, seed: int) -> Iterator[Sample]:
        offset = 1000 + 1000 * seed
        for k in range(10**6):
            for doc in fictional(seed=offset + k).documents(100):
                if _entity(doc.text) in self.excluded:
                    continue
                yield qa_sample(self.lm, doc, self.rng.choice(doc.train_qa))

    def text_sample(self) -> Sample:
        p = self.p
        need = p.context_tokens + p.target_tokens
        while True:
            ids = self.lm.encode(self.rng.choice(self.texts), add_bos=False)
            if len(ids) >= need:
                start = self.rng.randint(0, len(ids) - need)
                ids = ids[start : start + need]
                return Sample(torch.tensor(ids[: p.context_tokens]), torch.tensor(ids[p.context_tokens :]), 0)

    def sample(self) -> Sample:
        if self.texts and self.rng.random() >= self.p.qa_fraction:
            return self.text_sample()
        return next(self.qa)

    def distractor(self) -> torch.Tensor:
        if self.texts and self.rng.random() < 0.5:
            return self.text_sample().inject
        return next(self.qa).inject


def qa_sample(lm: LM, doc: Document, qa: QA) -> Sample:
    """Inject the context; read the question in the evaluation's prompt format; predict the answer."""
    prompt_ids = lm.encode(lm.format_prompt(Prompt(doc.id, qa.question)), add_bos=False)
    answer_ids = lm.encode(" " + qa.answers[0] + "\n", add_bos=False)
    return Sample(
        inject=torch.tensor(lm.encode(doc.text, add_bos=False)),
        target=torch.tensor(prompt_ids + answer_ids),
        loss_from=len(prompt_ids),
    )


def heldout_samples(lm: LM, n: int) -> list[tuple[Sample, list[torch.Tensor]]]:
    """Held-out QA examples (a seed never trained on), each with three other contexts injected
    before it, so the check reads a pool that holds more than the target."""
    docs = fictional(seed=HELDOUT_SEED).documents(n + 3)
    rng = random.Random(HELDOUT_SEED)
    out = []
    for i in range(n):
        doc = docs[i + 3]
        others = [torch.tensor(lm.encode(d.text, add_bos=False)) for d in docs[i : i + 3]]
        out.append((qa_sample(lm, doc, rng.choice(doc.train_qa)), others))
    return out


def answer_loss(pool: MemoryPool, memory: torch.Tensor, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the sample's predicted tokens read after the pool, and their argmax hits."""
    caches = pool.prefix_cache(memory)
    logits, _ = pool.read(sample.target, caches, pool.prefix_length(memory))
    predicted = logits[sample.loss_from - 1 : -1].float() if sample.loss_from else logits[:-1].float()
    gold = sample.target[sample.loss_from :] if sample.loss_from else sample.target[1:]
    gold = gold.to(predicted.device)
    loss = torch.nn.functional.cross_entropy(predicted, gold)
    return loss, (predicted.argmax(-1) == gold).float()


@torch.no_grad()
def evaluate(lm: LM, pool: MemoryPool, examples: list[tuple[Sample, list[torch.Tensor]]]) -> dict[str, float]:
    """Mean answer loss and token accuracy on held-out examples (fresh pool for each)."""
    losses, hits = [], []
    for sample, others in examples:
        memory = None
        with lm.autocast():
            for ids in others + [sample.inject]:
                memory, _ = pool.updated(memory, pool.delta(ids, memory).float())
            loss, hit = answer_loss(pool, memory, sample)
        losses.append(float(loss.detach()))
        hits.append(float(hit.mean()))
    return {"answer_loss": _mean(losses), "answer_token_acc": _mean(hits)}


@torch.no_grad()
def evaluate_stream(lm: LM, pool: MemoryPool, examples: list[tuple[Sample, list[torch.Tensor]]]) -> dict[str, Any]:
    """The held-out targets injected one after another into one pool, each question read right after
    its own context: how a run reads (every context of a batch or sequence goes into one pool), which
    the fresh pools of ``evaluate`` do not show. An untrained mechanism's pool drifts away from the
    model's hidden states as injections pile up, and the loss then rises above a uniform guess's.
    ``answer_loss_by_8`` is the mean per 8 injections. Its own random stream (the pool's drops), so
    calling it leaves training as it was."""
    stream = MemoryPool(pool.parts, pool.mechanism, torch.Generator().manual_seed(HELDOUT_SEED))
    losses, hits = [], []
    memory = None
    for sample, _ in examples:
        with lm.autocast():
            memory, _ = stream.updated(memory, stream.delta(sample.inject, memory).float())
            loss, hit = answer_loss(stream, memory, sample)
        losses.append(float(loss))
        hits.append(float(hit.mean()))
    return {"answer_loss": _mean(losses), "answer_token_acc": _mean(hits), "answer_loss_by_8": _means_per(losses, 8)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _means_per(values: list[float], size: int) -> list[float]:
    """The mean of each run of ``size`` values (the last may be shorter), rounded for the summary."""
    return [round(_mean(values[i : i + size]), 3) for i in range(0, len(values), size)]


def train_mechanism(lm: LM, cfg: PoolConfig, p: MiniTrainParams, seed: int) -> dict[str, Any]:
    """Train bos embeddings, the new-memory embedding and LoRA; save to the cache; return a summary."""
    torch.manual_seed(seed)
    parts, mechanism = build(lm.model, cfg)
    mechanism.init_bos(parts, lm.tokenizer.bos_token_id)
    pool = MemoryPool(parts, mechanism, torch.Generator().manual_seed(seed))
    data = TrainingData(lm, p, seed)
    heldout = heldout_samples(lm, p.heldout)
    mechanism.eval()
    before = evaluate(lm, pool, heldout)
    stream_before = evaluate_stream(lm, pool, heldout)
    log.info("held-out before training: %s; in one pool: %s", before, stream_before)

    optimizer = torch.optim.AdamW(mechanism.parameters(), lr=p.lr, weight_decay=0.0)
    memory = None
    losses: list[float] = []
    started = time.perf_counter()
    tokens = 0
    bar = tqdm(range(p.steps), desc="training memoryllm-mini", unit="step")
    for step in bar:
        if p.max_minutes and time.perf_counter() - started > 60 * p.max_minutes:
            log.warning("stopping at step %d: max_minutes=%s reached", step, p.max_minutes)
            break
        sample = data.sample()
        with lm.autocast():
            memory, _ = pool.updated(memory, pool.delta(sample.inject, memory).float())
            for _ in range(data.rng.randint(0, p.max_distractors)):
                distractor = data.distractor()
                memory, _ = pool.updated(memory, pool.delta(distractor, memory).float())
                tokens += len(distractor)
            loss, _ = answer_loss(pool, memory, sample)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mechanism.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = warmed_up_lr(p, step)
        optimizer.step()
        memory = memory.detach()
        tokens += len(sample.inject) + len(sample.target)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{_mean(losses[-20:]):.3f}")
    wall = time.perf_counter() - started
    after = evaluate(lm, pool, heldout)
    stream_after = evaluate_stream(lm, pool, heldout)
    log.info("held-out after training: %s; in one pool: %s", after, stream_after)

    window = max(1, min(50, len(losses) // 4))
    summary = {
        "model": lm.name,
        "pool": asdict(cfg),
        "train": asdict(p),
        "seed": seed,
        "steps": len(losses),
        "train_s": wall,
        "train_tokens": tokens,
        "loss_first": _mean(losses[:window]) if losses else None,
        "loss_last": _mean(losses[-window:]) if losses else None,
        # the training loss's course, mean per 10 steps: a rise after the start shows instability
        "loss_by_10_steps": _means_per(losses, 10),
        "heldout_before": before,
        "heldout_after": after,
        "heldout_stream_before": stream_before,
        "heldout_stream_after": stream_after,
        "c4_steps": bool(data.texts),
        "git_commit": git_commit(),  # the code that trained it, beside the runs' own commit
    }
    path = checkpoint_path(lm.name, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": mechanism.state_dict(), "summary": summary}, tmp)
    tmp.replace(path)
    summary["path"] = str(path)
    return summary


def settings_mismatch(summary: dict[str, Any], expected: MiniTrainParams) -> list[str]:
    """The training settings in which a saved mechanism's summary differs from ``expected``, as
    ``name=saved (expected value)``; empty when it was trained with exactly these settings."""
    saved = summary.get("train", {})
    return [
        f"{name}={saved.get(name, '(not recorded)')} (expected {value})"
        for name, value in asdict(expected).items()
        if saved.get(name) != value
    ]


def warmed_up_lr(p: MiniTrainParams, step: int) -> float:
    """The learning rate of step ``step`` (from 0): rising linearly over ``warmup_steps``, then ``lr``."""
    if p.warmup_steps and step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    return p.lr


def saved_summary(path: Path) -> dict[str, Any]:
    """The training summary stored with a saved mechanism."""
    return torch.load(path, map_location="cpu", weights_only=True).get("summary", {})


def load_mechanism(mechanism: MemoryMechanism, path: Path) -> dict[str, Any]:
    """Load trained weights into ``mechanism``; returns the training summary stored with them."""
    blob = torch.load(path, map_location=mechanism.bos.device, weights_only=True)
    mechanism.load_state_dict(blob["state_dict"])
    return blob.get("summary", {})
