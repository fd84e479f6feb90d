"""Training machinery shared by SELF-PARAM and the fine-tuning baselines FT(C) and FT(S).

The student is a copy of the base model (``lm.clone_model()``), wrapped with LoRA through ``peft``
or trained in full / MLP-only. Training examples are short token sequences with a loss on a span
of next-token predictions: cross-entropy against the tokens themselves (fine-tuning) or the KL
divergence from a teacher's distributions (SELF-PARAM). What makes it fast on a CPU:

- examples are batched (length-bucketed, right-padded) instead of one per optimizer step;
- the LM head runs only at the positions that carry a loss, in chunks of rows whose logits are
  recomputed in the backward pass instead of kept (``loss_chunk_rows``);
- a batch too long for memory runs as micro-batches whose gradients add up to the batch's before
  its one optimizer step (``step_tokens``);
- teacher distributions are computed once per example and cached (optionally as top-k with the
  rest of the probability mass kept as one tail bucket, so the KL stays a true divergence);
- under ``bf16-autocast`` the student's frozen weights are stored in bf16 once, instead of being
  cast again in every forward pass.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from benchmark.api import Method
from benchmark.checkpoint import InjectionCheckpoint
from benchmark.errors import BenchError
from benchmark.models import LM
from benchmark.types import Footprint

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainParams:
    """How the student is parameterised and optimised (the official code's values by default)."""

    params: str = "lora"  # lora | full | mlp
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = LORA_TARGETS
    lr: float = 2e-5
    weight_decay: float = 0.01  # AdamW's default, as in the official code
    schedule: str = "constant"  # constant | linear (decay to zero over the run)
    epochs: int = 50
    batch_size: int = 1  # examples per optimizer step
    max_grad_norm: float = 0.0  # 0 = no clipping
    frozen_bf16: bool = True  # store frozen student weights in bf16 under bf16-autocast
    # The student's attention kernel: on CPU, "eager" is ~10% faster than "sdpa" for the short
    # sequences trained on here (its backward pass is plain matmuls). "" keeps the model's own.
    attn_implementation: str = "eager"
    # Training examples whose unscored prefixes are identical and at least this long run the
    # prefix once and share its key/value cache; 0 = off (a ~17-token prefix ran no faster shared
    # on a CPU; a ~50-token one saves about a quarter of the step time).
    share_prefix: int = 0
    # The LM head, log-softmax and loss run on at most this many scored rows at a time, and a batch
    # with more rows recomputes each chunk's logits in the backward pass: with a 49k vocabulary,
    # fp32 logits cost ~200 KB a row, several copies of them kept for backward, so a batch of long
    # examples scored at every token (context suffixes) would otherwise hold gigabytes. 0 = off.
    loss_chunk_rows: int = 1024
    # A batch whose student pass would run more than this many padded tokens (a shared prefix counted
    # once, as run) is split into micro-batches of whole examples, in length order, each run forward
    # and backward on its own; their gradients add up to the whole batch's before its one optimizer
    # step, so the update is the same. Backward keeps ~1.5 MB a token of SmolLM2-135M activations,
    # plus eager attention's (L, L) maps: one pass of 16 long examples needed 17-38 GB. A batch
    # within the budget runs as one pass, as before. 0 = off. One step of 16 x ~800-token examples,
    # bf16-autocast, peak RSS: 6.6 / 4.2 / 3.0 GiB at 4096 / 2048 / 1024 with sdpa attention,
    # 10.4 / 6.4 / 4.6 GiB with eager, and no slower for the smaller parts.
    step_tokens: int = 2048

    RANGES: ClassVar[dict[str, str]] = {
        "lora_r": ">= 1", "lora_alpha": "> 0", "lora_dropout": "[0, 1)", "lr": "> 0", "weight_decay": ">= 0",
        "epochs": ">= 0", "batch_size": ">= 1", "max_grad_norm": ">= 0", "share_prefix": ">= 0",
        "loss_chunk_rows": ">= 0", "step_tokens": ">= 0",
    }


# ---- the student -----------------------------------------------------------------------------


def build_student(lm: LM, p: TrainParams) -> torch.nn.Module:
    """A trainable copy of the base model; ``lm.model`` itself is never touched."""
    model = lm.clone_model()
    for param in model.parameters():
        param.requires_grad_(False)
    if p.params == "lora":
        from peft import LoraConfig, get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [t for t in p.lora_targets if t in present]
        if not targets:
            raise BenchError(
                f"none of the LoRA target modules {list(p.lora_targets)} exist in model {lm.name!r}"
            )
        config = LoraConfig(
            r=p.lora_r,
            lora_alpha=p.lora_alpha,
            lora_dropout=p.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    elif p.params == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    elif p.params == "mlp":
        for name, param in model.named_parameters():
            if ".mlp." in name:
                param.requires_grad_(True)
    else:
        raise BenchError(f"unknown params {p.params!r}; use lora, full or mlp")
    if p.frozen_bf16 and lm.precision == "bf16-autocast":
        _store_frozen_in_bf16(model)
    if p.attn_implementation:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        try:
            base.set_attn_implementation(p.attn_implementation)
        except (ValueError, ImportError) as exc:
            raise BenchError(f"attn_implementation {p.attn_implementation!r}: {str(exc).splitlines()[0]}") from None
    return model


def _store_frozen_in_bf16(model: torch.nn.Module) -> None:
    """Keep frozen matmul weights in bf16 so autocast does not re-cast them at every step.

    Embeddings stay fp32 (they feed the residual stream). A tied, frozen LM head gets its own bf16
    copy; its values are what autocast would have used anyway.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    embed = base.get_input_embeddings()
    if head is not None and not head.weight.requires_grad:
        if head.weight is embed.weight:
            head.weight = torch.nn.Parameter(head.weight.detach().to(torch.bfloat16), requires_grad=False)
        else:
            head.weight.data = head.weight.data.to(torch.bfloat16)
    for module in base.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            if not module.weight.requires_grad:
                module.weight.data = module.weight.data.to(torch.bfloat16)
                if module.bias is not None and not module.bias.requires_grad:
                    module.bias.data = module.bias.data.to(torch.bfloat16)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def student_footprint(model: torch.nn.Module | None, p: TrainParams) -> Footprint:
    """LoRA: the adapter bytes; full / MLP: the bytes of the changed weights (a second copy)."""
    if model is None:
        return Footprint()
    changed = trainable_parameters(model)
    count = sum(t.numel() for t in changed)
    size = sum(t.numel() * t.element_size() for t in changed)
    return Footprint(extra_bytes=size, changed_params=count, detail={f"{p.params}_params": count})


def split_lm(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone returning hidden states, LM head): lets the head run on selected positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


# ---- examples and batches ----------------------------------------------------------------------


@dataclass
class Example:
    """A student input with a loss on predictions at positions ``first .. len(ids) - 2``.

    ``teacher`` names a cached teacher entry and the row of it matching position ``first``
    (SELF-PARAM); without it the loss is cross-entropy on the next tokens (fine-tuning).
    """

    ids: list[int]
    first: int = 0
    kind: str = "text"
    weight: float = 1.0
    teacher: tuple[object, int] | None = None

    @property
    def rows(self) -> int:
        return len(self.ids) - 1 - self.first


@dataclass
class TeacherSpec:
    """The teacher's input and the position whose prediction is row 0 of its distributions."""

    ids: list[int]
    first: int

    @property
    def rows(self) -> int:
        return len(self.ids) - 1 - self.first


@dataclass
class Dist:
    """Teacher log-probabilities per row: full vocabulary (``index`` None) or top-k with indices."""

    logp: torch.Tensor  # (rows, V) or (rows, k), fp32
    index: torch.Tensor | None = None  # (rows, k) int64

    def __getitem__(self, rows: slice) -> "Dist":
        return Dist(self.logp[rows], None if self.index is None else self.index[rows])


def batches(examples: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffle, then bucket by length so that a batch wastes little on padding."""
    order = examples[:]
    rng.shuffle(order)
    chunk = max(1, batch_size) * 16
    result: list[list[Example]] = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda e: len(e.ids))
        result.extend(group[i : i + batch_size] for i in range(0, len(group), max(1, batch_size)))
    rng.shuffle(result)
    return result


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def padded_tokens(batch: list[Example], share_prefix: int) -> int:
    """Tokens the student's backbone runs for the batch, padding included (``Trainer.student_hidden``):
    one padded batch, or with ``share_prefix`` each shared prefix once plus its padded tails."""
    groups, plain = group_by_prefix([(e.ids, e.first) for e in batch], share_prefix)
    total = len(plain) * max(len(batch[i].ids) for i in plain) if plain else 0
    for key, members in groups.items():
        total += len(key) + len(members) * max(len(batch[i].ids) - len(key) for i in members)
    return total


def _positions(starts: list[int], counts: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.cat([torch.full((n,), r, dtype=torch.long) for r, n in enumerate(counts)])
    cols = torch.cat([torch.arange(s, s + n, dtype=torch.long) for s, n in zip(starts, counts)])
    return rows.to(device), cols.to(device)


def selected_hidden(
    model: torch.nn.Module, lm: LM, sequences: list[list[int]], starts: list[int], counts: list[int]
) -> torch.Tensor:
    """Final hidden states (sum(counts), H) at positions ``start .. start+count-1`` of each sequence."""
    backbone, _ = split_lm(model)
    ids, mask = pad_right(sequences, lm.tokenizer.pad_token_id)
    rows, cols = _positions(starts, counts, lm.device)
    with lm.autocast():
        hidden = backbone(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                          use_cache=False).last_hidden_state  # no key/value cache to build and drop
    return hidden[rows, cols]


def head_logits(model: torch.nn.Module, lm: LM, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 logits of the LM head at the given final hidden states."""
    _, head = split_lm(model)
    with lm.autocast():
        logits = head(hidden)
    return logits.float()


# ---- teacher ------------------------------------------------------------------------------------


def group_by_prefix(sequences: list[tuple[list[int], int]], min_length: int
                    ) -> tuple[dict[tuple[int, ...], list[int]], list[int]]:
    """Indices of (ids, first) pairs grouped by their unscored prefix ``ids[:first]``.

    Only prefixes of at least ``min_length`` tokens shared by two or more sequences form a group
    (0 = no grouping); every other index is returned in the plain list.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    plain: list[int] = []
    for i, (ids, first) in enumerate(sequences):
        if min_length and first >= min_length:
            groups.setdefault(tuple(ids[:first]), []).append(i)
        else:
            plain.append(i)
    for key, members in list(groups.items()):
        if len(members) < 2:
            plain.extend(members)
            del groups[key]
    return groups, plain


@torch.no_grad()
def teacher_dists(
    teacher: torch.nn.Module,
    lm: LM,
    specs: list[TeacherSpec],
    topk: int = 0,
    temperature: float = 1.0,
    batch_tokens: int = 4096,
    progress: str | None = None,
    share_prefix: int = 8,
    chunk_rows: int = 1024,
) -> list[Dist]:
    """The teacher's (tempered) log-probabilities at every scored row of every spec.

    Specs whose unscored prefixes (``ids[:first]``, e.g. BOS + context) are identical and at least
    ``share_prefix`` tokens long are run as one prefix pass whose key/value cache is reused by all
    of them (0 turns this off); the rest are batched by length. The LM head, log-softmax and top-k
    run on at most ``chunk_rows`` rows of a bucket at a time (0 = all at once).
    """
    was_training = teacher.training
    teacher.eval()
    out: list[Dist | None] = [None] * len(specs)
    shared, plain = group_by_prefix([(s.ids, s.first) for s in specs], share_prefix)
    jobs = [(None, group) for group in _length_groups(plain, [len(s.ids) for s in specs], batch_tokens)]
    for key, members in shared.items():
        lengths = [len(specs[i].ids) - len(key) for i in members]
        for group in _length_groups(list(range(len(members))), lengths, batch_tokens):
            jobs.append((key, [members[j] for j in group]))
    bar = tqdm(jobs, desc=progress, disable=progress is None or len(jobs) < 4, leave=False)
    prefix_cache: dict[tuple[int, ...], object] = {}
    for key, group in bar:
        counts = [specs[i].rows for i in group]
        if key is None:
            hidden = selected_hidden(teacher, lm, [specs[i].ids for i in group], [specs[i].first for i in group], counts)
        else:
            if key not in prefix_cache:
                prefix_cache.clear()  # one context's prefix at a time
                prefix_cache[key] = _prefix_cache(teacher, lm, list(key))
            tails = [specs[i].ids[len(key):] for i in group]
            hidden = _hidden_after_prefix(teacher, lm, prefix_cache[key], len(key), tails, counts)
        out_group = _dists_from_hidden(teacher, lm, hidden, counts, topk, temperature, chunk_rows)
        for i, dist in zip(group, out_group):
            out[i] = dist
    teacher.train(was_training)
    return out  # type: ignore[return-value]


def _dists_from_hidden(model: torch.nn.Module, lm: LM, hidden: torch.Tensor, counts: list[int], topk: int,
                       temperature: float, chunk_rows: int) -> list[Dist]:
    """Per-example ``Dist``s from the final hidden states of their rows (in order, ``counts`` each).

    The head and log-softmax (and top-k) run on at most ``chunk_rows`` rows at a time, written into
    each example's own tensors: a bucket of long examples never holds its whole (rows, V) fp32
    logits, their log-softmax and per-example copies at once (~800 MB each for 4096 rows).
    """
    vocab = split_lm(model)[1].weight.shape[0]
    width = topk if topk and topk < vocab else vocab
    logps = [torch.empty((n, width), dtype=torch.float32, device=hidden.device) for n in counts]
    indices = [torch.empty((n, width), dtype=torch.long, device=hidden.device) for n in counts] if width < vocab else None
    size = chunk_rows if chunk_rows > 0 else max(1, len(hidden))
    example, offset = 0, 0  # where the next row goes: row ``offset`` of example ``example``
    for start in range(0, len(hidden), size):
        logits = head_logits(model, lm, hidden[start : start + size])
        if temperature != 1.0:
            logits.div_(temperature)  # in place: one fp32 copy fewer
        logp = torch.log_softmax(logits, dim=-1)
        del logits
        assert logp.shape[-1] == vocab
        values, index = logp.topk(topk, dim=-1) if indices is not None else (logp, None)
        done = 0
        while done < len(values):
            while offset == counts[example]:  # skip finished (and empty) examples
                example, offset = example + 1, 0
            take = min(len(values) - done, counts[example] - offset)
            logps[example][offset : offset + take] = values[done : done + take]
            if indices is not None:
                indices[example][offset : offset + take] = index[done : done + take]
            done, offset = done + take, offset + take
        del logp, values, index
    return [Dist(v, None if indices is None else indices[j]) for j, v in enumerate(logps)]


def _length_groups(indices: list[int], lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most ~``batch_tokens`` padded tokens."""
    groups: list[list[int]] = []
    current: list[int] = []
    for i in sorted(indices, key=lambda i: lengths[i]):
        if current and (len(current) + 1) * lengths[i] > batch_tokens:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def _cache_kwarg(backbone: torch.nn.Module) -> str:
    """Newer transformers name the key/value cache argument ``cache``, older ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def _prefix_cache(model: torch.nn.Module, lm: LM, prefix: list[int]):
    backbone, _ = split_lm(model)
    with lm.autocast():
        out = backbone(input_ids=torch.tensor([prefix], device=lm.device), use_cache=True)
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _hidden_after_prefix(model: torch.nn.Module, lm: LM, cache, prefix_len: int, tails: list[list[int]],
                         counts: list[int], keep_cache: bool = True) -> torch.Tensor:
    """Final hidden states at the first ``count`` positions of each tail, continuing the cached prefix.

    With ``keep_cache=False`` the cache is consumed (and gradients flow back into the prefix).
    """
    import copy

    backbone, _ = split_lm(model)
    ids, mask = pad_right(tails, lm.tokenizer.pad_token_id)
    n, width = ids.shape
    batch_cache = copy.deepcopy(cache) if keep_cache else cache
    batch_cache.batch_repeat_interleave(n)
    attention = torch.cat([torch.ones((n, prefix_len), dtype=mask.dtype), mask], dim=1)
    positions = torch.arange(prefix_len, prefix_len + width).unsqueeze(0).expand(n, -1)
    rows, cols = _positions([0] * n, counts, lm.device)
    with lm.autocast():
        hidden = backbone(input_ids=ids.to(lm.device), attention_mask=attention.to(lm.device),
                          position_ids=positions.to(lm.device), use_cache=True,
                          **{_cache_kwarg(backbone): batch_cache}).last_hidden_state
    return hidden[rows, cols]


def kl_rows(student_logp: torch.Tensor, target: Dist) -> torch.Tensor:
    """KL(teacher ‖ student) per row.

    With a top-k teacher the probability outside the top k is one extra "tail" outcome on both
    sides, so this is the exact KL between the two distributions coarsened that way (it equals the
    full KL when k is the vocabulary size) and it is zero when student and teacher agree.
    """
    t_logp = target.logp
    t_p = t_logp.exp()
    if target.index is None:
        return (t_p * (t_logp - student_logp)).sum(-1)
    s_top = student_logp.gather(-1, target.index)
    kl = (t_p * (t_logp - s_top)).sum(-1)
    t_tail = (1.0 - t_p.sum(-1)).clamp_min(0.0)
    # log(1 - sum of the student's top-k probabilities); the floor only matters when both tails are
    # negligible, and it saves a second full-vocabulary pass.
    s_tail = torch.log1p(-s_top.exp().sum(-1).clamp(max=1.0 - 1e-6))
    # Rounding leaves ~1e-7 of "tail" even when the top k hold everything: ignore such crumbs.
    tail = torch.where(t_tail > 1e-6, t_tail * (t_tail.clamp_min(1e-30).log() - s_tail), torch.zeros_like(t_tail))
    return kl + tail


def cat_dists(dists: list[Dist]) -> Dist:
    index = None if dists[0].index is None else torch.cat([d.index for d in dists])  # type: ignore[misc]
    return Dist(torch.cat([d.logp for d in dists]), index)


# ---- the training loop ----------------------------------------------------------------------------


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


class Trainer:
    """One optimiser over a student; ``step`` trains on one batch of examples."""

    def __init__(self, model: torch.nn.Module, lm: LM, p: TrainParams, total_steps: int,
                 temperature: float = 1.0) -> None:
        self.model, self.lm, self.p = model, lm, p
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

    def _lr(self) -> float:
        if self.p.schedule == "linear":
            return self.p.lr * max(0.0, 1.0 - self.report.steps / self.total_steps)
        return self.p.lr

    def loss(self, batch: list[Example], targets: list[Dist] | None) -> torch.Tensor:
        """Mean over examples of each example's mean per-token loss (like one step per example)."""
        counts = [e.rows for e in batch]
        hidden = self.student_hidden(batch)
        if targets is None:  # cross-entropy on the next tokens
            target: torch.Tensor | Dist = torch.cat(
                [torch.tensor(e.ids[e.first + 1 :], dtype=torch.long) for e in batch]).to(hidden.device)
        else:
            target = cat_dists(targets)
        size = self.p.loss_chunk_rows
        if size <= 0 or len(hidden) <= size:
            per_token = self.row_losses(hidden, target)
        else:
            # Each chunk keeps only its hidden states for backward, which runs its head again: the
            # (rows, V) logits of a long batch never exist at once.
            per_token = torch.cat([
                checkpoint(self.row_losses, hidden[i : i + size], target[i : i + size], use_reentrant=False)
                for i in range(0, len(hidden), size)
            ])
        per_example = torch.stack([t.mean() for t in per_token.split(counts)])
        weights = torch.tensor([e.weight for e in batch], dtype=per_example.dtype, device=per_example.device)
        return (per_example * weights).mean()

    def row_losses(self, hidden: torch.Tensor, target: torch.Tensor | Dist) -> torch.Tensor:
        """Per-row loss at final hidden states: KL from a teacher ``Dist`` or cross-entropy on token ids."""
        logits = head_logits(self.model, self.lm, hidden)
        if self.temperature != 1.0:  # a division over the whole (rows, V) block otherwise
            logits = logits / self.temperature
        logp = torch.log_softmax(logits, dim=-1)
        if isinstance(target, Dist):
            return kl_rows(logp, target) * self.temperature**2
        return -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def student_hidden(self, batch: list[Example]) -> torch.Tensor:
        """Final hidden states at every scored row of the batch, in order.

        Examples that share an unscored prefix of at least ``share_prefix`` tokens (the prompt's
        demonstrations) run it once, with its key/value cache repeated for all of them.
        """
        counts = [e.rows for e in batch]
        groups, plain = group_by_prefix([(e.ids, e.first) for e in batch], self.p.share_prefix)
        if not groups:
            self.tokens_in_step = sum(len(e.ids) for e in batch)
            return selected_hidden(self.model, self.lm, [e.ids for e in batch], [e.first for e in batch], counts)
        parts: dict[int, torch.Tensor] = {}
        tokens = 0
        if plain:
            hidden = selected_hidden(self.model, self.lm, [batch[i].ids for i in plain],
                                     [batch[i].first for i in plain], [counts[i] for i in plain])
            parts.update(zip(plain, hidden.split([counts[i] for i in plain])))
            tokens += sum(len(batch[i].ids) for i in plain)
        for key, members in groups.items():
            cache = _prefix_cache(self.model, self.lm, list(key))
            tails = [batch[i].ids[len(key):] for i in members]
            hidden = _hidden_after_prefix(self.model, self.lm, cache, len(key), tails,
                                          [counts[i] for i in members], keep_cache=False)
            parts.update(zip(members, hidden.split([counts[i] for i in members])))
            tokens += len(key) + sum(len(t) for t in tails)
        self.tokens_in_step = tokens
        return torch.cat([parts[i] for i in range(len(batch))])

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
            loss = self.loss([batch[i] for i in part], None if targets is None else [targets[i] for i in part]) * share
            loss.backward()
            value += float(loss.detach())
            tokens += self.tokens_in_step
            self.report.passes += 1
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
    """
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
                bar.update(1)
                continue
            loss = trainer.step(batch, targets)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if checkpoint is not None and checkpoint.due():
                checkpoint.save({**trainer.state(), "position": position}, total_steps)
    bar.close()
    if position < resume_at:
        raise BenchError(f"{desc}: the checkpoint is at step {resume_at}, but this injection has "
                         f"{position} steps; remove {checkpoint.path}")
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


# ---- the base of every method that trains a student -----------------------------------------------


class TrainedMethod(Method):
    """A method whose answers come from a trained copy of the base model.

    The student is built on the first ``inject`` and kept: in sequential injection the same
    instance receives one context per step and its LoRA adapters (or weights) keep accumulating.
    """

    Params = TrainParams

    def __init__(self, lm: LM, params: TrainParams, run, seed: int = 0) -> None:
        super().__init__(lm, params, run, seed)
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

    def record(self, report: TrainReport, wall_s: float) -> None:
        """Add one injection's cost to ``stats`` (the runner sums them and reports tokens/s)."""
        self.last_report = report
        for key, value in (
            ("train_tokens", report.student_tokens),
            ("train_example_tokens", report.example_tokens),
            ("train_s", wall_s),
            ("train_steps", report.steps),
            ("student_s", report.student_s),
            ("teacher_tokens", report.teacher_tokens),
            ("teacher_s", report.teacher_s),
        ):
            self.stats[key] = self.stats.get(key, 0) + value

    def footprint(self) -> Footprint:
        return student_footprint(self.student, self.params)
