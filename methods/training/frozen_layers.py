"""The decoder layers below the student's lowest LoRA adapter, run once per token sequence.

With ``lora_depth`` < 1 the layers below the lowest adapted one keep the base model's weights for
the whole run (a merged adapter changes only the layers it adapts), so what they output for a token
sequence never changes. A target sentence trained on for ten epochs ran them ten times, and an
unrelated question that the current-model teacher reads exactly as the student does ran them once
in each. ``FrozenLayers`` runs them once per sequence, without autograd (nothing there trains), and
keeps their output; the student's passes, and those of a teacher that shares these very weights (a
``frozen_copy`` of the student), then run only the layers above from it. The function is the
same as one pass through every layer, float rounding aside (``frozen_layer_cache_mb`` turns it off).

The layers are called one by one, as the model's own forward calls them, with the attention mask
and rotary position tables built here, and a shared prefix's keys and values kept in a small
stand-in for the key/value cache (``PrefixKV``): the model's cache indexes layers from the first,
so it cannot start a pass at a middle layer.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from benchmark.errors import BenchError
from benchmark.models import LM
from methods.training.examples import group_by_prefix, pad_right, span_indices
from methods.training.student import TrainParams, own_attention, split_lm

KERNELS = ("eager", "sdpa")  # the attention kernels whose masks ``attention_mask`` builds
# Padded tokens a second pass over a shared prefix's tails must save (``length_runs``): about what
# the fixed cost of a pass through the upper layers with backward is worth on a CPU.
TAIL_SPLIT_MIN_SAVING = 64
# Shared prefixes whose frozen-layer output and keys/values are kept between calls (``_run``): the
# few-shot framing every retain question and target sentence starts with recurs in each epoch.
PREFIXES_KEPT = 4


class PrefixKV:
    """A shared prefix's keys and values per layer, behind the one method attention modules call
    on a cache (``update``): a recording pass keeps what each layer computes; a continuing pass
    gets the prefix's keys and values (repeated over its rows) before its own."""

    def __init__(self, layers: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.recording = layers is None
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = layers or {}

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.recording:
            self.layers[layer_idx] = (key, value)
            return key, value
        prefix_key, prefix_value = self.layers[layer_idx]
        n = key.shape[0]
        return (
            torch.cat([prefix_key.expand(n, -1, -1, -1), key], dim=2),
            torch.cat([prefix_value.expand(n, -1, -1, -1), value], dim=2),
        )

    def copy(self) -> PrefixKV:
        """The same keys and values in tensors of their own (not views of a larger pass's)."""
        return PrefixKV({i: (k.clone(), v.clone()) for i, (k, v) in self.layers.items()})

    def row(self, index: int, length: int) -> PrefixKV:
        """The first ``length`` positions of row ``index``, for passes that continue it."""
        return PrefixKV(
            {
                i: (k[index : index + 1, :, :length], v[index : index + 1, :, :length])
                for i, (k, v) in self.layers.items()
            }
        )


def attention_mask(valid: torch.Tensor, prefix_len: int, kernel: str, dtype: torch.dtype) -> torch.Tensor:
    """The (rows, 1, width, prefix_len + width) mask of a right-padded pass after a prefix: each
    position sees the prefix, itself and the valid positions before it. Boolean for sdpa, additive
    (0 or the dtype's minimum) for eager, as the model's own mask functions give them."""
    n, width = valid.shape
    queries = torch.arange(prefix_len, prefix_len + width, device=valid.device)
    keys = torch.arange(prefix_len + width, device=valid.device)
    seen = torch.cat([torch.ones((n, prefix_len), dtype=torch.bool, device=valid.device), valid], dim=1)
    allowed = ((keys[None, :] <= queries[:, None])[None] & seen[:, None, :]).unsqueeze(1)
    if kernel == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(~allowed, torch.finfo(dtype).min)


def run_layers(
    layers: Sequence[torch.nn.Module],
    rotary: torch.nn.Module,
    hidden: torch.Tensor,
    valid: torch.Tensor,
    cache: PrefixKV | None = None,
    prefix_len: int = 0,
) -> torch.Tensor:
    """``hidden`` (rows, width, H), right-padded where ``valid`` is False, through ``layers`` in
    order, continuing a prefix of ``prefix_len`` positions held by ``cache`` (or recording into it)."""
    config = layers[0].self_attn.config
    kernel = config._attn_implementation
    if kernel not in KERNELS:
        raise BenchError(f"frozen layers: attention kernel {kernel!r} is not one of {', '.join(KERNELS)}")
    positions = torch.arange(prefix_len, prefix_len + hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = attention_mask(valid, prefix_len, kernel, hidden.dtype)
    position_embeddings = rotary(hidden, positions)
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
            position_embeddings=position_embeddings,
        )
    return hidden


def pad_states(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence states (length_i, H) right-padded with zeros into (rows, width, H), and the
    (rows, width) mask of the real positions."""
    width = max(len(r) for r in rows)
    hidden = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
    valid = torch.zeros((len(rows), width), dtype=torch.bool, device=rows[0].device)
    for i, r in enumerate(rows):
        hidden[i, : len(r)] = r
        valid[i, : len(r)] = True
    return hidden, valid


def length_runs(lengths: list[int], min_saving: int | None = None) -> list[list[int]]:
    """Indices of sequences of these lengths as one padded run (in their order), or as two runs of
    similar lengths when that pads at least ``min_saving`` fewer tokens: a second pass through the
    layers costs a fixed overhead, so it pays only for enough padding saved. Each run keeps two
    rows or more (compiled layers would build graphs of their own for one). ``min_saving`` defaults
    to ``TAIL_SPLIT_MIN_SAVING``."""
    min_saving = TAIL_SPLIT_MIN_SAVING if min_saving is None else min_saving
    n = len(lengths)
    order = sorted(range(n), key=lengths.__getitem__)
    whole = n * lengths[order[-1]]
    best, cut = whole, 0
    for k in range(2, n - 1):
        padded = k * lengths[order[k - 1]] + (n - k) * lengths[order[-1]]
        if padded < best:
            best, cut = padded, k
    if not cut or whole - best < min_saving:
        return [list(range(n))]
    return [order[:cut], order[cut:]]


class FrozenLayers:
    """The student's decoder layers below its lowest trainable one, their output kept per sequence.

    ``states`` gives the output of those layers for token sequences, running only the ones it has
    not kept (least recently used ones go first beyond ``budget_mb``); ``selected_states`` runs the
    layers above for a model that ``serves``, from those states, and picks the scored rows.
    """

    def __init__(self, model: torch.nn.Module, lm: LM, count: int, share_prefix: int, budget_mb: int) -> None:
        decoder = split_lm(model)[0]
        self.lm, self.count, self.share_prefix = lm, count, share_prefix
        self.embed, self.rotary = decoder.embed_tokens, decoder.rotary_emb
        self.layers = list(decoder.layers[:count])
        self.kept: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.prefixes: OrderedDict[tuple[int, ...], tuple[torch.Tensor, PrefixKV]] = OrderedDict()
        # Per frozen model (a current-model teacher), the keys and values its layers above these
        # give a shared prefix; an entry goes with its model.
        self.prefixes_above: weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict[tuple[int, ...], PrefixKV]] = (
            weakref.WeakKeyDictionary()
        )
        self.budget, self.bytes = budget_mb * 2**20, 0
        self.tokens_run = 0  # tokens these layers ran (the rest came from what was kept)
        self.tokens_kept = 0  # tokens whose states were kept from an earlier call

    @classmethod
    def of(cls, model: torch.nn.Module, lm: LM, p: TrainParams) -> FrozenLayers | None:
        """The frozen layers of a student whose lowest layers do not train (LoRA with
        ``lora_depth`` < 1), or None: no such layers, or ``frozen_layer_cache_mb`` = 0."""
        if p.frozen_layer_cache_mb <= 0 or p.params != "lora" or p.lora_depth >= 1:
            return None
        decoder = split_lm(model)[0]
        if not all(hasattr(decoder, name) for name in ("embed_tokens", "rotary_emb", "layers", "norm")):
            return None  # not a Llama-style decoder: every pass runs all layers
        if own_attention(model) not in KERNELS:
            return None  # a kernel whose mask is not built here (flash attention): every pass runs all
        layers = list(decoder.layers)
        count = next((i for i, layer in enumerate(layers) if any(t.requires_grad for t in layer.parameters())), 0)
        return cls(model, lm, count, p.share_prefix, p.frozen_layer_cache_mb) if count else None

    def serves(self, model: torch.nn.Module) -> bool:
        """Whether ``model``'s embeddings and lowest layers hold these very weights (the student, or a
        frozen copy of it): only then are the kept states its own."""
        decoder = split_lm(model)[0]
        layers = getattr(decoder, "layers", None)
        if getattr(decoder, "embed_tokens", None) is None or layers is None or len(layers) <= self.count:
            return False
        if decoder.embed_tokens.weight is not self.embed.weight:
            return False
        return all(
            all(a is b for a, b in zip(mine.parameters(), theirs.parameters(), strict=True))
            for mine, theirs in zip(self.layers, layers[: self.count])
        )

    @torch.no_grad()
    def states(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """The frozen layers' output (length, H) for each sequence, computed where not kept."""
        keys = [tuple(s) for s in sequences]
        missing = [k for k in dict.fromkeys(keys) if k not in self.kept]
        computed = self._run(missing) if missing else {}
        result = []
        for key in keys:
            if key in computed:
                result.append(computed[key])
            else:
                self.kept.move_to_end(key)
                result.append(self.kept[key])
                self.tokens_kept += len(key)
        for key, value in computed.items():
            self.kept[key] = value
            self.bytes += value.numel() * value.element_size()
        while self.bytes > self.budget and len(self.kept) > 1:
            _, dropped = self.kept.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()
        return result

    def _run(self, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], torch.Tensor]:
        """Run the frozen layers on new sequences; those sharing a prefix run it once."""
        # Each sequence may share all but its last token: group_by_prefix keeps a tail of one or more.
        groups, plain = group_by_prefix([(list(k), len(k) - 1) for k in keys], self.share_prefix)
        out: dict[tuple[int, ...], torch.Tensor] = {}
        with self.lm.autocast():
            if plain:
                ids = [keys[i] for i in plain]
                hidden = run_layers(self.layers, self.rotary, *self._embedded(ids))
                out.update((k, hidden[row, : len(k)].clone()) for row, k in enumerate(ids))
                self.tokens_run += sum(len(k) for k in ids)
            for prefix, members in groups.items():
                head, cache = self._prefix(prefix)
                tails = [keys[i][len(prefix) :] for i in members]
                for run in length_runs([len(t) for t in tails]):
                    part = [tails[r] for r in run]
                    hidden = run_layers(self.layers, self.rotary, *self._embedded(part), cache, len(prefix))
                    for row, r in enumerate(run):
                        out[keys[members[r]]] = torch.cat([head, hidden[row, : len(tails[r])]])
                self.tokens_run += sum(len(t) for t in tails)
        return out

    def _prefix(self, prefix: tuple[int, ...]) -> tuple[torch.Tensor, PrefixKV]:
        """A shared prefix's frozen-layer output (length, H) and its keys and values, run once and
        kept for the next calls (the ``PREFIXES_KEPT`` most recently used): the same one-row pass
        each time, so what is kept is exactly what a new run would give."""
        if prefix in self.prefixes:
            self.prefixes.move_to_end(prefix)
            self.tokens_kept += len(prefix)
            return self.prefixes[prefix]
        cache = PrefixKV()
        head = run_layers(self.layers, self.rotary, *self._embedded([prefix]), cache)
        cache.recording = False
        self.prefixes[prefix] = head[0], cache
        self.tokens_run += len(prefix)
        while len(self.prefixes) > PREFIXES_KEPT:
            self.prefixes.popitem(last=False)
        return self.prefixes[prefix]

    def _embedded(self, sequences: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings of right-padded sequences (pad id 0: masked out) and their valid mask."""
        ids, mask = pad_right([list(s) for s in sequences], 0)
        return self.embed(ids.to(self.lm.device)), mask.bool().to(self.lm.device)

    def above(
        self, model: torch.nn.Module, rows: list[torch.Tensor], cache: PrefixKV | None = None, prefix_len: int = 0
    ) -> torch.Tensor:
        """``model``'s layers above the frozen ones and its final norm, on frozen-layer states."""
        decoder = split_lm(model)[0]
        hidden, valid = pad_states(rows)
        if torch.is_grad_enabled():
            # The first layer above then takes an input that needs gradients, as every later one
            # does: compiled layers use one graph for all of them, not another for the first. The
            # gradient with respect to the kept states, never used, is under 1% of a step's work.
            hidden.requires_grad_(True)
        with self.lm.autocast():
            out = run_layers(list(decoder.layers)[self.count :], decoder.rotary_emb, hidden, valid, cache, prefix_len)
            return decoder.norm(out)

    def selected_states(
        self,
        model: torch.nn.Module,
        sequences: list[list[int]],
        starts: list[int],
        counts: list[int],
        share_prefix: int,
    ) -> tuple[torch.Tensor, int]:
        """``model``'s final hidden states at rows ``start .. start + count - 1`` of each sequence,
        in order, as ``examples.selected_states`` gives them, and the tokens run above the frozen
        layers (a shared prefix once).

        Sequences sharing an unscored prefix of ``share_prefix`` tokens or more run it once above
        the frozen layers too: as an extra row of the other sequences' pass, whose keys and values
        the sharing sequences then continue (as ``examples.states_and_prefix_caches``)."""
        lower = self.states(sequences)
        groups, plain = group_by_prefix(list(zip(sequences, starts)), share_prefix)
        kept = self._kept_above(model)
        prefixes = list(groups)
        to_run = [p for p in prefixes if kept is None or p not in kept]
        parts: dict[int, torch.Tensor] = {}
        cache = PrefixKV() if to_run else None
        rows = [lower[i] for i in plain] + [lower[groups[p][0]][: len(p)] for p in to_run]
        if len(rows) == 1 and torch.is_grad_enabled():
            # Compiled layers (``compile_layers``) would build graphs of their own for a pass of one
            # row, torch specialising sizes of 1, a few seconds each; a copy of the row, its output
            # unused, costs less.
            rows = rows * 2
        out = self.above(model, rows, cache) if rows else None
        if plain:
            assert out is not None
            sizes = [counts[i] for i in plain]
            chosen = out[span_indices([starts[i] for i in plain], sizes, out.device)]
            parts.update(zip(plain, chosen.split(sizes)))
        tokens = sum(len(sequences[i]) for i in plain)
        for prefix in prefixes:
            size = len(prefix)
            if kept is not None and prefix in kept:
                kept.move_to_end(prefix)
                prefix_kv = kept[prefix]
            else:
                assert cache is not None
                prefix_kv = cache.row(len(plain) + to_run.index(prefix), size)
                tokens += size
                if kept is not None:
                    kept[prefix] = prefix_kv.copy()
                    while len(kept) > PREFIXES_KEPT:
                        kept.popitem(last=False)
            for run in length_runs([len(sequences[i]) - size for i in groups[prefix]]):
                members = [groups[prefix][r] for r in run]
                out = self.above(model, [lower[i][size:] for i in members], prefix_kv, size)
                sizes = [counts[i] for i in members]
                chosen = out[span_indices([starts[i] - size for i in members], sizes, out.device)]
                parts.update(zip(members, chosen.split(sizes)))
            tokens += sum(len(sequences[i]) - size for i in groups[prefix])
        return torch.cat([parts[i] for i in range(len(sequences))]), tokens

    def _kept_above(self, model: torch.nn.Module) -> OrderedDict[tuple[int, ...], PrefixKV] | None:
        """The prefixes' keys and values kept for ``model``'s layers above these, or None: kept
        only for a model that cannot change (no gradient asked, no trainable parameter: a
        current-model teacher, which scores each epoch's retain questions after the same few-shot
        framing). The ``PREFIXES_KEPT`` most recently used ones."""
        if torch.is_grad_enabled() or any(p.requires_grad for p in model.parameters()):
            return None
        return self.prefixes_above.setdefault(model, OrderedDict())
