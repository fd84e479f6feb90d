"""Training examples, how they are batched, and how a batch runs through the student's backbone:
right-padded, with the hidden states kept only at scored positions, and with a prefix shared by
several examples run once and its key/value cache reused."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from benchmark.models import LM, cache_kwarg
from methods.training.student import split_lm


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
    one padded batch, or with ``share_prefix`` each shared prefix once (a padded row of the plain
    examples' pass when there are any) plus its padded tails."""
    groups, plain = group_by_prefix([(e.ids, e.first) for e in batch], share_prefix)
    if plain:
        width = max([len(batch[i].ids) for i in plain] + [len(key) for key in groups])
        total = (len(plain) + len(groups)) * width
    else:
        total = sum(len(key) for key in groups)
    for key, members in groups.items():
        total += len(members) * max(len(batch[i].ids) - len(key) for i in members)
    return total


def group_by_prefix(
    sequences: list[tuple[list[int], int]], min_length: int
) -> tuple[dict[tuple[int, ...], list[int]], list[int]]:
    """Indices of (ids, first) pairs grouped by an unscored prefix they share.

    Sequences whose unscored parts ``ids[:first]`` start with the same ``min_length`` tokens form a
    group keyed by the longest prefix common to all of them (never past any member's ``first``), so
    prompts that share their demonstrations but differ in the question still run them once; a
    member's scored rows then start ``first - len(key)`` tokens into its tail. Only groups of two or
    more are kept (0 = no grouping); every other index is returned in the plain list.
    """
    buckets: dict[tuple[int, ...], list[int]] = {}
    plain: list[int] = []
    for i, (ids, first) in enumerate(sequences):
        if min_length and first >= min_length:
            buckets.setdefault(tuple(ids[:min_length]), []).append(i)
        else:
            plain.append(i)
    groups: dict[tuple[int, ...], list[int]] = {}
    for members in buckets.values():
        if len(members) < 2:
            plain.extend(members)
            continue
        heads = [sequences[i][0][: sequences[i][1]] for i in members]
        length = min(len(h) for h in heads)
        common = next((k for k in range(min_length, length) if any(h[k] != heads[0][k] for h in heads)), length)
        groups[tuple(heads[0][:common])] = members  # buckets differ in their first tokens, so keys do too
    return groups, plain


def span_indices(starts: list[int], counts: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) indices of positions ``start .. start + count - 1`` of each row, in order."""
    rows = torch.cat([torch.full((n,), r, dtype=torch.long) for r, n in enumerate(counts)])
    cols = torch.cat([torch.arange(s, s + n, dtype=torch.long) for s, n in zip(starts, counts)])
    return rows.to(device), cols.to(device)


def selected_hidden(
    model: torch.nn.Module, lm: LM, sequences: list[list[int]], starts: list[int], counts: list[int]
) -> torch.Tensor:
    """Final hidden states (sum(counts), H) at positions ``start .. start+count-1`` of each sequence."""
    return selected_states(model, lm, sequences, starts, counts)[0]


def selected_states(
    model: torch.nn.Module,
    lm: LM,
    sequences: list[list[int]],
    starts: list[int],
    counts: list[int],
    layers: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``selected_hidden`` and, with ``layers``, the hidden states of those layers at the same
    positions (sum(counts), len(layers), H); see ``pick_layers``."""
    backbone, _ = split_lm(model)
    ids, mask = pad_right(sequences, lm.tokenizer.pad_token_id)
    rows, cols = span_indices(starts, counts, lm.device)
    with lm.autocast():
        out = backbone(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            use_cache=False,  # no key/value cache to build and drop
            **_layer_kwargs(layers),
        )
    return out.last_hidden_state[rows, cols], pick_layers(out, rows, cols, layers)


def states_and_prefix_caches(
    model: torch.nn.Module,
    lm: LM,
    sequences: list[list[int]],
    starts: list[int],
    counts: list[int],
    prefixes: list[list[int]],
    layers: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list]:
    """``selected_states`` of ``sequences`` and, from the same backbone pass, the key/value cache of
    each of ``prefixes`` (as ``cache_prefix`` would give it, gradients included).

    On a CPU a pass costs a fixed few thousand small operations whatever its size, so the shared
    prefixes ride along as extra right-padded rows of the plain examples' pass instead of one pass
    each; causal attention keeps the padding out of a prefix's keys and values.
    """
    backbone, _ = split_lm(model)
    ids, mask = pad_right(sequences + prefixes, lm.tokenizer.pad_token_id)
    rows, cols = span_indices(starts, counts, lm.device)
    with lm.autocast():
        out = backbone(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            use_cache=True,
            **_layer_kwargs(layers),
        )
    full = getattr(out, "cache", None) or out.past_key_values
    caches = []
    for row, prefix in enumerate(prefixes, start=len(sequences)):
        cache = DynamicCache()
        for i, layer in enumerate(full.layers):
            cache.update(layer.keys[row : row + 1, :, : len(prefix)], layer.values[row : row + 1, :, : len(prefix)], i)
        caches.append(cache)
    return out.last_hidden_state[rows, cols], pick_layers(out, rows, cols, layers), caches


def _layer_kwargs(layers: tuple[int, ...] | None) -> dict[str, bool]:
    """Ask the backbone for every layer's output only when a layer other than the last is wanted."""
    return {"output_hidden_states": True} if layers and any(i != -1 for i in layers) else {}


def pick_layers(out, rows: torch.Tensor, cols: torch.Tensor, layers: tuple[int, ...] | None) -> torch.Tensor | None:
    """Hidden states of ``layers`` at (rows, cols), stacked on dim 1; None without ``layers``.

    ``layers`` index the backbone's ``hidden_states`` (0: the embeddings, i: the output of layer
    i); -1 is the final, normed state the LM head reads (``last_hidden_state``).
    """
    if layers is None:
        return None
    final = out.last_hidden_state
    return torch.stack([(final if i == -1 else out.hidden_states[i])[rows, cols] for i in layers], dim=1)


def cache_prefix(model: torch.nn.Module, lm: LM, prefix: list[int]):
    backbone, _ = split_lm(model)
    with lm.autocast():
        out = backbone(input_ids=torch.tensor([prefix], device=lm.device), use_cache=True)
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def hidden_after_prefix(
    model: torch.nn.Module,
    lm: LM,
    cache,
    prefix_len: int,
    tails: list[list[int]],
    counts: list[int],
    keep_cache: bool = True,
    starts: list[int] | None = None,
) -> torch.Tensor:
    """Final hidden states at ``count`` positions of each tail, from its ``start`` (default 0),
    continuing the cached prefix.

    With ``keep_cache=False`` the cache is consumed (and gradients flow back into the prefix).
    """
    return states_after_prefix(model, lm, cache, prefix_len, tails, counts, keep_cache, starts=starts)[0]


def states_after_prefix(
    model: torch.nn.Module,
    lm: LM,
    cache,
    prefix_len: int,
    tails: list[list[int]],
    counts: list[int],
    keep_cache: bool = True,
    layers: tuple[int, ...] | None = None,
    starts: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``hidden_after_prefix`` and, with ``layers``, those layers' hidden states at the same
    positions (see ``pick_layers``)."""
    backbone, _ = split_lm(model)
    ids, mask = pad_right(tails, lm.tokenizer.pad_token_id)
    n, width = ids.shape
    batch_cache = copy.deepcopy(cache) if keep_cache else cache
    batch_cache.batch_repeat_interleave(n)
    attention = torch.cat([torch.ones((n, prefix_len), dtype=mask.dtype), mask], dim=1)
    position_ids = torch.arange(prefix_len, prefix_len + width).unsqueeze(0).expand(n, -1)
    rows, cols = span_indices(starts or [0] * n, counts, lm.device)
    with lm.autocast():
        out = backbone(
            input_ids=ids.to(lm.device),
            attention_mask=attention.to(lm.device),
            position_ids=position_ids.to(lm.device),
            use_cache=True,
            **{cache_kwarg(backbone): batch_cache},
            **_layer_kwargs(layers),
        )
    return out.last_hidden_state[rows, cols], pick_layers(out, rows, cols, layers)
