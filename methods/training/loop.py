"""The training loop: one optimiser step per batch (micro-batches within a token budget), epochs of
shuffled batches with checkpoints to resume from, and the base class of the methods that train."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from benchmark.api import Method
from benchmark.checkpoint import RESUME_OVERHEAD, RESUMED_TRAIN, InjectionCheckpoint
from benchmark.errors import BenchError
from benchmark.models import LM
from benchmark.types import Footprint, Prompt
from methods.training.examples import (
    Example,
    batches,
    cache_prefix,
    group_by_prefix,
    padded_tokens,
    selected_states,
    states_after_prefix,
    states_and_prefix_caches,
)
from methods.training.frozen_layers import FrozenLayers
from methods.training.head_loss import linear_head, picked_logits
from methods.training.student import (
    TrainParams,
    attention_kernel,
    build_student,
    head_dtype,
    head_logits,
    merge_adapter,
    own_attention,
    split_lm,
    student_footprint,
    trainable_parameters,
)
from methods.training.teacher import Dist, cat_dists, hidden_distance, kl_rows, kl_topk_rows


@dataclass
class TrainReport:
    steps: int = 0
    student_tokens: int = 0  # non-pad student input tokens, summed over steps
    # The same with each shared prefix counted once per example it serves: the tokens a loop
    # without ``share_prefix`` would run, so the two settings compare on the same work.
    example_tokens: int = 0
    student_s: float = 0.0
    teacher_tokens: int = 0
    teacher_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    passes: int = 0  # forward+backward passes: more than ``steps`` when ``step_tokens`` split batches
    sdpa_passes: int = 0  # of which switched to sdpa attention for their length (``sdpa_above_tokens``)
    # Set by ``run_epochs`` when it resumed from a checkpoint (0 otherwise): the seconds this attempt
    # spent replaying the data order up to it, which an uninterrupted run never spends, and the
    # training seconds the killed attempts spent up to it, which this attempt never spends
    # (``TrainedMethod.record`` turns them into costs).
    replay_s: float = 0.0
    resumed_s: float = 0.0


@dataclass(frozen=True)
class HiddenMatch:
    """An extra term on the student's hidden states (deep context distillation): at the rows of
    each example whose teacher ``Dist`` carries ``hidden``, ``weight`` times ``hidden_distance``
    between the student's and the teacher's states of ``layers`` (as in ``examples.pick_layers``).

    Rows before ``from_row`` are left out: row 0 reads the last token of each side's own prefix
    (BOS for the student, the context's last token for the teacher), so only later rows read
    the same token on both sides.
    """

    layers: tuple[int, ...]
    weight: float = 1.0
    from_row: int = 1


class Trainer:
    """One optimiser over a student; ``step`` trains on one batch of examples.

    ``hidden_match`` adds a hidden-state term to the KL of the examples whose teacher targets
    carry hidden states; without it the loss is the KL (or cross-entropy) alone.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        lm: LM,
        p: TrainParams,
        total_steps: int,
        temperature: float = 1.0,
        hidden_match: HiddenMatch | None = None,
    ) -> None:
        self.model, self.lm, self.p = model, lm, p
        self.hidden_match = hidden_match
        self.params = trainable_parameters(model)
        if not self.params:
            raise BenchError("the student has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=p.lr, weight_decay=p.weight_decay)
        if p.schedule not in ("constant", "linear"):
            raise BenchError(f"unknown schedule {p.schedule!r}; use constant or linear")
        self.total_steps = max(1, total_steps)
        self.temperature = temperature
        self.tokens_in_step = 0
        self.report = TrainReport()
        # The layers below the lowest adapter, run once per sequence (None: every pass runs all).
        self.frozen = FrozenLayers.of(model, lm, p)

    def _lr(self) -> float:
        if self.p.schedule == "linear":
            return self.p.lr * max(0.0, 1.0 - self.report.steps / self.total_steps)
        return self.p.lr

    def loss(self, batch: list[Example], targets: list[Dist] | None) -> torch.Tensor:
        """Mean over examples of each example's mean per-token loss (like one step per example)."""
        counts = [e.rows for e in batch]
        match = self.hidden_match if targets is not None else None
        if match is None:
            hidden, states = self.student_hidden(batch), None
        else:
            hidden, states = self.student_states(batch, match.layers)
        if targets is None:  # cross-entropy on the next tokens
            target: torch.Tensor | Dist = torch.cat(
                [torch.tensor(e.ids[e.first + 1 :], dtype=torch.long) for e in batch]
            ).to(hidden.device)
        else:
            target = cat_dists(targets).to(hidden.device)  # teacher targets may come from another device
        size = self.p.loss_chunk_rows
        if self.fused_head(target) or size <= 0 or len(hidden) <= size:
            per_token = self.row_losses(hidden, target)
        else:
            # Each chunk keeps only its hidden states for backward, which runs its head again: the
            # (rows, V) logits of a long batch never exist at once.
            per_token = torch.cat(
                [
                    checkpoint(self.row_losses, hidden[i : i + size], target[i : i + size], use_reentrant=False)
                    for i in range(0, len(hidden), size)
                ]
            )
        per_example = torch.stack([t.mean() for t in per_token.split(counts)])
        if match is not None and states is not None and targets is not None:
            per_example = per_example + match.weight * self.hidden_term(match, states, targets, counts)
        weights = torch.tensor([e.weight for e in batch], dtype=per_example.dtype, device=per_example.device)
        return (per_example * weights).mean()

    def fused_head(self, target: torch.Tensor | Dist) -> bool:
        """Whether the loss reads a few logits per row (token ids or a top-k teacher) from a plain
        linear head: then ``picked_logits`` runs head and loss in chunks, keeping no (rows, V) block."""
        return linear_head(split_lm(self.model)[1]) and (not isinstance(target, Dist) or target.index is not None)

    def row_losses(self, hidden: torch.Tensor, target: torch.Tensor | Dist) -> torch.Tensor:
        """Per-row loss at final hidden states: KL from a teacher ``Dist`` or cross-entropy on token ids."""
        if self.fused_head(target):
            _, head = split_lm(self.model)
            index = target.index if isinstance(target, Dist) else target.unsqueeze(-1)
            picked, lse = picked_logits(
                hidden, head, index, head_dtype(self.lm, head), self.temperature, self.p.loss_chunk_rows
            )
            if isinstance(target, Dist):
                return kl_topk_rows(target.logp, picked - lse.unsqueeze(-1)) * self.temperature**2
            return lse - picked.squeeze(-1)
        logits = head_logits(self.model, self.lm, hidden)
        if self.temperature != 1.0:  # a division over the whole (rows, V) block otherwise
            logits = logits / self.temperature
        logp = torch.log_softmax(logits, dim=-1)
        if isinstance(target, Dist):
            return kl_rows(logp, target) * self.temperature**2
        return -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def hidden_term(
        self, match: HiddenMatch, states: torch.Tensor, targets: list[Dist], counts: list[int]
    ) -> torch.Tensor:
        """Per example, the hidden-state distance over its matched rows (0 where its target has no
        hidden states or it has no row from ``match.from_row`` on)."""
        terms = []
        for part, target in zip(states.split(counts), targets):
            if target.hidden is None or len(part) <= match.from_row:
                terms.append(states.new_zeros((), dtype=torch.float32))
            else:
                teacher = target.hidden[match.from_row :].to(part.device)
                terms.append(hidden_distance(part[match.from_row :], teacher))
        return torch.stack(terms)

    def student_hidden(self, batch: list[Example]) -> torch.Tensor:
        """Final hidden states at every scored row of the batch, in order.

        Examples that share an unscored prefix of at least ``share_prefix`` tokens (the prompt's
        demonstrations) run it once, with its key/value cache repeated for all of them.
        """
        return self.student_states(batch)[0]

    def student_states(
        self, batch: list[Example], layers: tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``student_hidden`` and, with ``layers``, those layers' hidden states at the same rows.

        Without ``layers``, a student with frozen lowest layers runs only the layers above them
        (``FrozenLayers``); hidden states of chosen layers come from a pass through every layer."""
        counts = [e.rows for e in batch]
        if self.frozen is not None and layers is None:
            ids, firsts = [e.ids for e in batch], [e.first for e in batch]
            hidden, self.tokens_in_step = self.frozen.selected_states(
                self.model, ids, firsts, counts, self.p.share_prefix
            )
            return hidden, None
        groups, plain = group_by_prefix([(e.ids, e.first) for e in batch], self.p.share_prefix)
        if not groups:
            self.tokens_in_step = sum(len(e.ids) for e in batch)
            return selected_states(
                self.model, self.lm, [e.ids for e in batch], [e.first for e in batch], counts, layers
            )
        parts: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        keys = list(groups)
        if plain:  # the plain examples' pass also runs the shared prefixes
            hidden, states, caches = states_and_prefix_caches(
                self.model,
                self.lm,
                [batch[i].ids for i in plain],
                [batch[i].first for i in plain],
                [counts[i] for i in plain],
                [list(key) for key in keys],
                layers,
            )
            parts.update(zip(plain, _split_pairs(hidden, states, [counts[i] for i in plain])))
        else:
            caches = [cache_prefix(self.model, self.lm, list(key)) for key in keys]
        tokens = sum(len(batch[i].ids) for i in plain)
        for key, cache in zip(keys, caches):
            members = groups[key]
            tails = [batch[i].ids[len(key) :] for i in members]
            starts = [batch[i].first - len(key) for i in members]
            hidden, states = states_after_prefix(
                self.model, self.lm, cache, len(key), tails, [counts[i] for i in members], False, layers, starts
            )
            parts.update(zip(members, _split_pairs(hidden, states, [counts[i] for i in members])))
            tokens += len(key) + sum(len(t) for t in tails)
        self.tokens_in_step = tokens
        hidden = torch.cat([parts[i][0] for i in range(len(batch))])
        if layers is None:
            return hidden, None
        return hidden, torch.cat([parts[i][1] for i in range(len(batch))])  # type: ignore[misc]

    def micro_batches(self, batch: list[Example]) -> list[list[int]]:
        """Indices of the batch cut into runs of at most ``step_tokens`` padded tokens.

        One part (the batch as it is) when it fits; otherwise runs of whole examples in length
        order, as few as filling each in turn needs, evened out when that stays within the budget
        (16 similar examples, 5 to a budget: 4 + 4 + 4 + 4, not 5 + 5 + 5 + 1, since the peak memory
        is the largest part's). An example longer than the budget runs alone.
        """
        limit, share = self.p.step_tokens, self.p.share_prefix
        if limit <= 0 or padded_tokens(batch, share) <= limit:
            return [list(range(len(batch)))]
        order = sorted(range(len(batch)), key=lambda i: len(batch[i].ids))  # stable: keeps a sorted batch's order
        parts: list[list[int]] = [[]]
        for i in order:
            if parts[-1] and padded_tokens([batch[j] for j in parts[-1] + [i]], share) > limit:
                parts.append([])
            parts[-1].append(i)
        k = len(parts)
        even = [order[len(order) * j // k : len(order) * (j + 1) // k] for j in range(k)]
        if all(len(part) == 1 or padded_tokens([batch[i] for i in part], share) <= limit for part in even):
            return even
        return parts

    def kernel(self, examples: list[Example]) -> str:
        """The attention kernel to switch to for one pass: sdpa when an example is longer than
        ``sdpa_above_tokens`` (eager's (L, L) maps would fill memory) and the student runs another
        kernel, else "" (the student's own), so that ``sdpa_passes`` counts real switches only."""
        limit = self.p.sdpa_above_tokens
        long = limit > 0 and max(len(e.ids) for e in examples) > limit
        return "sdpa" if long and own_attention(self.model) != "sdpa" else ""

    def backward(self, batch: list[Example], targets: list[Dist] | None = None) -> float:
        """Add the gradients of the batch's loss (``loss``) to the parameters' and return the loss.

        Micro-batches (``micro_batches``) each add their loss weighted by their share of the batch's
        examples: the loss is a mean over examples, so the weighted sum is the batch's loss and the
        summed gradients are its gradients. Each micro-batch runs its own shared prefixes;
        ``tokens_in_step`` counts every token run.
        """
        value, tokens = 0.0, 0
        for part in self.micro_batches(batch):
            share = len(part) / len(batch)
            examples = [batch[i] for i in part]
            kernel = self.kernel(examples)
            with attention_kernel(self.model, kernel):
                loss = self.loss(examples, None if targets is None else [targets[i] for i in part]) * share
                loss.backward()
            value += float(loss.detach())
            tokens += self.tokens_in_step
            self.report.passes += 1
            self.report.sdpa_passes += int(kernel == "sdpa")
        self.tokens_in_step = tokens
        return value

    def state(self) -> dict:
        """What a resumed run needs to go on exactly as this one would (see ``run_epochs``)."""
        return {
            "params": [p.detach().clone() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "report": dataclasses.asdict(self.report),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for param, saved in zip(self.params, state["params"], strict=True):
                param.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.report = TrainReport(**state["report"])
        torch.set_rng_state(state["torch_rng"])

    def step(self, batch: list[Example], targets: list[Dist] | None = None) -> float:
        tick = time.perf_counter()
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        self.optimizer.zero_grad(set_to_none=True)
        value = self.backward(batch, targets)
        if self.p.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.p.max_grad_norm)
        self.optimizer.step()
        if not math.isfinite(value):
            raise BenchError(f"training diverged (loss {value}); lower --set lr")
        self.report.steps += 1
        self.report.student_tokens += self.tokens_in_step  # what was run: shared prefixes once per micro-batch
        self.report.example_tokens += sum(len(e.ids) for e in batch)
        self.report.student_s += time.perf_counter() - tick
        self.report.losses.append(value)
        return value


def _split_pairs(
    hidden: torch.Tensor, states: torch.Tensor | None, counts: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per example, its rows of ``hidden`` and of ``states`` (None without states)."""
    parts = hidden.split(counts)
    if states is None:
        return [(h, None) for h in parts]
    return list(zip(parts, states.split(counts)))


def run_epochs(
    trainer: Trainer,
    epochs: Iterable[list[Example]],
    batch_size: int,
    rng: random.Random,
    total_steps: int,
    targets_for: Callable[[list[Example]], list[Dist]] | None = None,
    desc: str = "training",
    checkpoint: InjectionCheckpoint | None = None,
) -> TrainReport:
    """Train over the examples of each epoch in shuffled, length-bucketed batches.

    With a ``checkpoint`` the training state is saved every ``checkpoint.every_s`` seconds; when
    one of this injection is found, the batches before its position are drawn again (teacher
    targets included, so every random stream and cache evolves as in the first attempt) but not
    trained on, and the saved state is loaded at that position.

    A checkpoint also keeps ``elapsed_s``, the injection's training seconds up to it: from the start
    of this call, or on a resumed attempt the saved value plus the seconds since its replay ended,
    so that no replay is ever counted. A resumed attempt reports its replay's seconds as
    ``report.replay_s`` and the saved seconds as ``report.resumed_s``: the result's cost is then an
    uninterrupted run's, up to the work after the last checkpoint, done twice.
    """
    start = time.perf_counter()
    # Training seconds of the killed attempts (up to the checkpoint) and when this attempt's own
    # training began: at the start, or when the replay ended.
    carried, training_from = 0.0, start
    saved = checkpoint.load(total_steps) if checkpoint is not None else None
    resume_at = saved["position"] if saved is not None else 0
    if resume_at:
        print(f"{desc}: resumed at step {resume_at} of {total_steps}", file=sys.stderr)
    bar = tqdm(total=total_steps, desc=desc, unit="step", leave=False, disable=total_steps < 10)
    position = 0
    for examples in epochs:
        for batch in batches(examples, batch_size, rng):
            targets = targets_for(batch) if targets_for is not None else None
            position += 1
            if position <= resume_at:
                if position == resume_at:
                    trainer.load_state(saved)
                    carried, training_from = float(saved.get("elapsed_s", 0.0)), time.perf_counter()
                    trainer.report.replay_s, trainer.report.resumed_s = training_from - start, carried
                bar.update(1)
                continue
            loss = trainer.step(batch, targets)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if checkpoint is not None and checkpoint.due():
                elapsed = carried + time.perf_counter() - training_from
                checkpoint.save({**trainer.state(), "position": position, "elapsed_s": elapsed}, total_steps)
    bar.close()
    if position < resume_at:
        raise BenchError(
            f"{desc}: the checkpoint is at step {resume_at}, but this injection has "
            f"{position} steps; remove {checkpoint.path}"
        )
    return trainer.report


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of batches ``batches`` makes of ``num_examples`` examples (bucketed in chunks)."""
    size = max(1, batch_size)
    chunk = size * 16
    full, rest = divmod(num_examples, chunk)
    return full * 16 + math.ceil(rest / size)


def epoch_stream(make: Callable[[int], list[Example]], epochs: int) -> Iterator[list[Example]]:
    for epoch in range(epochs):
        yield make(epoch)


class TrainedMethod(Method):
    """A method whose answers come from a trained copy of the base model.

    The student is built on the first ``inject`` and kept: in sequential injection the same
    instance receives one context per step and its LoRA adapters (or weights) keep accumulating.
    """

    Params = TrainParams

    def __init__(self, lm: LM, params: TrainParams, run, seed: int = 0) -> None:
        super().__init__(lm, params, run, seed)
        if params.merge_adapter and params.params != "lora":
            raise BenchError(f"merge_adapter needs params=lora (got params={params.params})")
        self.student: torch.nn.Module | None = None
        self.rng = random.Random(seed)
        self.last_report: TrainReport | None = None

    def next_checkpoint(self) -> InjectionCheckpoint | None:
        """The checkpoint of the injection about to run (one per ``inject`` call, in order)."""
        return self.checkpoints.next_injection() if self.checkpoints is not None else None

    def ensure_student(self) -> torch.nn.Module:
        if self.student is None:
            self.student = build_student(self.lm, self.params)
            self.model = self.student  # Method.generate answers with it
        return self.student

    def student_for_injection(self) -> torch.nn.Module:
        """The student the next injection trains: with ``merge_adapter``, an earlier injection's
        adapter is first added into the weights and a fresh adapter started."""
        trained = self.student is not None
        student = self.ensure_student()
        if trained and self.params.merge_adapter:
            self.student = self.model = merge_adapter(student)
        return self.student

    def generate(self, prompts: list[Prompt]) -> list[str]:
        """Answers from the trained model, through the base model's attention kernel (as Base)."""
        with attention_kernel(self.model, self.lm.model.config._attn_implementation):
            return super().generate(prompts)

    def record(self, report: TrainReport, wall_s: float) -> None:
        """Add one injection's cost to ``stats`` (the runner sums them and reports tokens/s).

        ``wall_s`` is the seconds the injection (or one context's training) took in this attempt.
        When ``run_epochs`` resumed it from a checkpoint, ``train_s`` is what an uninterrupted run
        would have taken: without the replay, which goes to ``resume_overhead_s``, and with the
        killed attempts' training seconds up to the checkpoint, kept as ``resumed_train_s`` too;
        the runner moves the same seconds out of and into ``inject_s`` and ``wall_s``
        (``benchmark.runner.episode_cost``). Only a resumed injection adds those two keys.
        """
        self.last_report = report
        if report.replay_s or report.resumed_s:
            for key, value in ((RESUME_OVERHEAD, report.replay_s), (RESUMED_TRAIN, report.resumed_s)):
                self.stats[key] = self.stats.get(key, 0) + value
        for key, value in (
            ("train_tokens", report.student_tokens),
            ("train_example_tokens", report.example_tokens),
            ("train_s", wall_s - report.replay_s + report.resumed_s),
            ("train_steps", report.steps),
            ("train_sdpa_passes", report.sdpa_passes),
            ("student_s", report.student_s),
            ("teacher_tokens", report.teacher_tokens),
            ("teacher_s", report.teacher_s),
        ):
            self.stats[key] = self.stats.get(key, 0) + value

    def footprint(self) -> Footprint:
        return student_footprint(self.student, self.params)
