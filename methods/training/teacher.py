"""The teacher's distributions (computed once per example, optionally as top-k with a tail bucket),
optionally its hidden states at the same rows, and the divergences the student is trained on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from benchmark.models import LM
from methods.training.examples import cache_prefix, group_by_prefix, selected_states, states_after_prefix
from methods.training.frozen_layers import FrozenLayers
from methods.training.head_loss import top_logp
from methods.training.student import head_dtype, head_logits, split_lm


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
    """Teacher log-probabilities per row: full vocabulary (``index`` None) or top-k with indices.

    ``hidden``, when present, holds the teacher's hidden states of some layers at the same rows,
    the target of a hidden-state matching term (``Trainer``'s ``hidden_match``).
    """

    logp: torch.Tensor  # (rows, V) or (rows, k), fp32
    index: torch.Tensor | None = None  # (rows, k) int64
    hidden: torch.Tensor | None = None  # (rows, layers, H), bf16

    def __getitem__(self, rows: slice) -> Dist:
        return Dist(
            self.logp[rows],
            None if self.index is None else self.index[rows],
            None if self.hidden is None else self.hidden[rows],
        )

    def to(self, device: torch.device) -> Dist:
        """The same targets on ``device`` (no copy of a tensor that is there already)."""
        return Dist(
            self.logp.to(device),
            None if self.index is None else self.index.to(device),
            None if self.hidden is None else self.hidden.to(device),
        )


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
    layers: tuple[int, ...] | None = None,
    frozen: FrozenLayers | None = None,
) -> list[Dist]:
    """The teacher's (tempered) log-probabilities at every scored row of every spec.

    With ``layers`` (indices as in ``examples.pick_layers``) each ``Dist`` also carries the
    teacher's hidden states of those layers at its rows, stored in bf16 to halve their memory.

    Specs whose unscored parts (``ids[:first]``, e.g. BOS + context + a question) start with the
    same ``share_prefix`` tokens run the longest prefix they share (``group_by_prefix``) as one pass
    whose key/value cache is reused by all of them (0 turns this off); the rest are batched by
    length. The LM head, log-softmax and top-k run on at most ``chunk_rows`` rows of a bucket at a
    time (0 = all at once).

    With ``frozen`` layers that serve the teacher (``FrozenLayers.serves``: a frozen copy of the
    student), and no ``layers`` asked for, it runs only the layers above them, and the student
    later finds the states of the sequences it reads as the teacher did already kept.
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
    # The frozen layers this teacher shares, checked once for all its passes.
    shared_frozen = frozen if frozen is not None and layers is None and frozen.serves(teacher) else None
    for key, group in bar:
        counts = [specs[i].rows for i in group]
        if shared_frozen is not None:
            ids, firsts = [specs[i].ids for i in group], [specs[i].first for i in group]
            hidden, states = shared_frozen.selected_states(teacher, ids, firsts, counts, share_prefix)[0], None
        elif key is None:
            hidden, states = selected_states(
                teacher, lm, [specs[i].ids for i in group], [specs[i].first for i in group], counts, layers
            )
        else:
            if key not in prefix_cache:
                prefix_cache.clear()  # one context's prefix at a time
                prefix_cache[key] = cache_prefix(teacher, lm, list(key))
            tails = [specs[i].ids[len(key) :] for i in group]
            starts = [specs[i].first - len(key) for i in group]
            hidden, states = states_after_prefix(
                teacher, lm, prefix_cache[key], len(key), tails, counts, layers=layers, starts=starts
            )
        out_group = _dists_from_hidden(teacher, lm, hidden, counts, topk, temperature, chunk_rows)
        if states is not None:
            for dist, part in zip(out_group, states.split(counts)):
                dist.hidden = part.to(torch.bfloat16, copy=True)  # its own storage, not a view of the group's
        for i, dist in zip(group, out_group):
            out[i] = dist
    teacher.train(was_training)
    return out  # type: ignore[return-value]


def _dists_from_hidden(
    model: torch.nn.Module,
    lm: LM,
    hidden: torch.Tensor,
    counts: list[int],
    topk: int,
    temperature: float,
    chunk_rows: int,
) -> list[Dist]:
    """Per-example ``Dist``s from the final hidden states of their rows (in order, ``counts`` each).

    The head and log-softmax (and top-k) run on at most ``chunk_rows`` rows at a time, written into
    each example's own tensors: a bucket of long examples never holds its whole (rows, V) fp32
    logits, their log-softmax and per-example copies at once (~800 MB each for 4096 rows).
    """
    head = split_lm(model)[1]
    vocab = head.weight.shape[0]
    width = topk if topk and topk < vocab else vocab
    logps = [torch.empty((n, width), dtype=torch.float32, device=hidden.device) for n in counts]
    indices = (
        [torch.empty((n, width), dtype=torch.long, device=hidden.device) for n in counts] if width < vocab else None
    )
    size = chunk_rows if chunk_rows > 0 else max(1, len(hidden))
    example, offset = 0, 0  # where the next row goes: row ``offset`` of example ``example``
    for start in range(0, len(hidden), size):
        if indices is not None:  # top-k: the largest logits less their logsumexp, no (rows, V) log-softmax
            values, index = top_logp(hidden[start : start + size], head, topk, head_dtype(lm, head), temperature)
        else:
            logits = head_logits(model, lm, hidden[start : start + size])
            if temperature != 1.0:
                logits.div_(temperature)  # in place: one fp32 copy fewer
            values, index = torch.log_softmax(logits, dim=-1), None
            del logits
            assert values.shape[-1] == vocab
        done = 0
        while done < len(values):
            while offset == counts[example]:  # skip finished (and empty) examples
                example, offset = example + 1, 0
            take = min(len(values) - done, counts[example] - offset)
            logps[example][offset : offset + take] = values[done : done + take]
            if indices is not None:
                indices[example][offset : offset + take] = index[done : done + take]
            done, offset = done + take, offset + take
        del values, index
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


def kl_rows(student_logp: torch.Tensor, target: Dist) -> torch.Tensor:
    """KL(teacher ‖ student) per row, from the student's (rows, V) log-probabilities.

    With a top-k teacher the probability outside the top k is one extra "tail" outcome on both
    sides (``kl_topk_rows``).
    """
    t_logp = target.logp
    if target.index is None:
        return (t_logp.exp() * (t_logp - student_logp)).sum(-1)
    return kl_topk_rows(t_logp, student_logp.gather(-1, target.index))


def kl_topk_rows(t_logp: torch.Tensor, s_top: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per row from both sides' log-probabilities at the teacher's top k.

    The probability outside the top k is one extra "tail" outcome on both sides, so this is the
    exact KL between the two distributions coarsened that way (it equals the full KL when k is the
    vocabulary size) and it is zero when student and teacher agree.
    """
    t_p = t_logp.exp()
    kl = (t_p * (t_logp - s_top)).sum(-1)
    t_tail = (1.0 - t_p.sum(-1)).clamp_min(0.0)
    # log(1 - sum of the student's top-k probabilities); the floor only matters when both tails are
    # negligible, and it saves a second full-vocabulary pass.
    s_tail = torch.log1p(-s_top.exp().sum(-1).clamp(max=1.0 - 1e-6))
    # Rounding leaves ~1e-7 of "tail" even when the top k hold everything: ignore such crumbs.
    tail = torch.where(t_tail > 1e-6, t_tail * (t_tail.clamp_min(1e-30).log() - s_tail), torch.zeros_like(t_tail))
    return kl + tail


def hidden_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Deep context distillation's hidden-state term for one example: per layer, the mean absolute
    difference divided by the teacher's mean absolute value, averaged over layers.

    Both are (rows, layers, H). The official DCD code normalises over the whole batch; per example
    the loss does not depend on how a batch is cut into micro-batches. It is zero when the student
    reproduces the teacher's states.
    """
    s, t = student.float(), teacher.float()
    return ((s - t).abs().mean(dim=(0, 2)) / t.abs().mean(dim=(0, 2)).clamp_min(1e-12)).mean()


def cat_dists(dists: list[Dist]) -> Dist:
    index = None if dists[0].index is None else torch.cat([d.index for d in dists])  # type: ignore[misc]
    return Dist(torch.cat([d.logp for d in dists]), index)
