"""InfLLM's context memory (Xiao et al., 2024), written for any device and any transformers release.

Per layer, the tokens seen so far are split into
- ``init``: the first ``n_init`` tokens (attention sinks), always attended;
- ``recent``: tokens not yet moved to a block; each query sees those within ``n_local`` tokens of it
  with their true relative positions (the local window), and older ones as global tokens;
- ``blocks``: evicted tokens in blocks of ``block_size``, each represented by the mean of its
  ``repr_topk`` most-attended keys (per query head, by the attention they received while local).
Each query chunk (``chunk_size`` tokens) scores every block and attends over init + the ``topk`` best
blocks + its local window. The paper's score (``block_score="dot"``) is the dot product of the chunk's
mean query with the mean of the block's representative keys, summed over heads. ``"attention"`` scores
a block by the attention the chunk's queries would pay its representative keys: per head and query
token, a softmax over every block's representatives, the block's share summed over heads and averaged
over the chunk — so each head votes with weight one, and the few heads that attend by content decide
instead of being outvoted by heads whose dot products are large for every block. ``center_queries``
subtracts the mean query of the tokens read so far (per head) before scoring: the component every
query shares otherwise adds a query-independent bias per block that swamps the question's content.
As in the official code, global tokens carry no position (their keys are unrotated) and global
queries are rotated by ``n_local``: every memory token looks ``n_local`` tokens away, so positions
never exceed what the model was trained on however long the stream grows. Attention over local and
global keys shares one softmax.

All state is replaced, never modified in place, so ``clone()`` is a cheap fork: answering a question
extends a fork and leaves the injected memory untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from benchmark.errors import BenchError
from methods.llama_layers import (
    LlamaParts,
    apply_rope,
    attention_out,
    expand_kv,
    llama_parts,
    mlp_block,
    project_qkv,
)

# positions -> (cos, sin), each (len, head_dim)
RopeFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MemoryConfig:
    n_init: int
    n_local: int
    block_size: int
    topk: int
    repr_topk: int
    chunk_size: int
    block_score: str = "attention"  # "dot" (the paper's) or "attention"; see the module docstring
    center_queries: bool = True  # score with the query minus the mean query read so far

    def check(self) -> None:
        """The official code's constraints, as one-line errors."""
        for name in ("n_local", "block_size", "repr_topk", "chunk_size"):
            if getattr(self, name) < 1:
                raise BenchError(f"infllm: {name} must be at least 1")
        if self.n_init < 0 or self.topk < 0:
            raise BenchError("infllm: n_init and topk cannot be negative")
        if self.repr_topk > self.block_size:
            raise BenchError(f"infllm: repr_topk ({self.repr_topk}) exceeds block_size ({self.block_size})")
        if self.block_score not in ("dot", "attention"):
            raise BenchError(f"infllm: unknown block_score {self.block_score!r}; use dot or attention")
        if self.chunk_size > self.n_local:
            raise BenchError(f"infllm: chunk_size ({self.chunk_size}) exceeds n_local ({self.n_local})")


@dataclass
class LayerMemory:
    """One layer's init tokens, blocks and recent tokens (keys unrotated), for batch size 1."""

    cfg: MemoryConfig
    n_heads: int
    n_kv_heads: int
    scaling: float
    rope: RopeFn
    init_k: torch.Tensor | None = None  # (KV, n, d)
    init_v: torch.Tensor | None = None
    recent_k: torch.Tensor | None = None  # (KV, R, d)
    recent_v: torch.Tensor | None = None
    recent_score: torch.Tensor | None = None  # (H, R) attention mass received while local, float32
    blocks_k: list[torch.Tensor] = field(default_factory=list)  # each (KV, block_size, d)
    blocks_v: list[torch.Tensor] = field(default_factory=list)
    block_repr: torch.Tensor | None = None  # (N, H, repr_topk, d): each block's representative keys
    block_repr_index: list[torch.Tensor] = field(default_factory=list)  # each (H, repr_topk), in block
    block_start: list[int] = field(default_factory=list)  # stream position of each block's first token
    recent_start: int = 0  # stream position of recent[0]
    query_sum: torch.Tensor | None = None  # (H, d) float32: sum of the global queries read so far
    query_count: int = 0

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def n_blocks(self) -> int:
        return len(self.blocks_k)

    def clone(self) -> LayerMemory:
        """A fork sharing tensors with this memory; safe because no tensor is modified in place."""
        other = copy.copy(self)
        other.blocks_k, other.blocks_v = list(self.blocks_k), list(self.blocks_v)
        other.block_repr_index, other.block_start = list(self.block_repr_index), list(self.block_start)
        return other

    # ---- the attention ----------------------------------------------------------------------
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Attend a chunk and remember it.

        q (H, c, d), k and v (KV, c, d), all unrotated. Returns the attention output (H, c, d) and the
        indices of the blocks this chunk retrieved.
        """
        cfg, c = self.cfg, q.shape[1]
        if self.recent_k is None:
            empty = k[:, :0]
            self.init_k = self.init_v = self.recent_k = self.recent_v = empty
            self.recent_score = torch.zeros(self.n_heads, 0, device=q.device)
        cos_g, sin_g = self.rope(torch.tensor([cfg.n_local]))
        global_q = apply_rope(q, cos_g, sin_g)
        retrieved = self.retrieve(global_q)
        chunk_sum = global_q.float().sum(dim=1)
        self.query_sum = chunk_sum if self.query_sum is None else self.query_sum + chunk_sum
        self.query_count += c

        self.recent_k = torch.cat((self.recent_k, k), dim=1)
        self.recent_v = torch.cat((self.recent_v, v), dim=1)
        self.recent_score = torch.cat((self.recent_score, q.new_zeros(self.n_heads, c, dtype=torch.float32)), 1)
        total = self.recent_k.shape[1]
        device = q.device
        q_idx = torch.arange(total - c, total, device=device)

        # local window: recent tokens within n_local of each query, at their true relative positions
        kv_st = max(total - c - cfg.n_local, 0)
        span = total - kv_st
        cos, sin = self.rope(torch.arange(span))
        local_k = apply_rope(self.recent_k[:, kv_st:], cos, sin)
        local_q = apply_rope(q, cos[span - c :], sin[span - c :]).to(local_k.dtype)
        dist = q_idx[:, None] - torch.arange(kv_st, total, device=device)[None, :]
        local_mask = (dist >= 0) & (dist < cfg.n_local)
        local_logits = torch.matmul(local_q, expand_kv(local_k, self.group).transpose(-1, -2)).float()
        local_logits = local_logits.masked_fill(~local_mask, float("-inf"))

        # global: init tokens, retrieved blocks, and recent tokens already outside a query's window
        far = max(total - cfg.n_local, 0)  # recent[:far] is beyond the window of at least one query
        global_k = [self.init_k] + [self.blocks_k[i] for i in retrieved] + [self.recent_k[:, :far]]
        global_v = [self.init_v] + [self.blocks_v[i] for i in retrieved] + [self.recent_v[:, :far]]
        global_k, global_v = torch.cat(global_k, dim=1), torch.cat(global_v, dim=1)
        n_fixed = global_k.shape[1] - far
        far_mask = (q_idx[:, None] - torch.arange(far, device=device)[None, :]) >= cfg.n_local
        global_mask = torch.cat((far_mask.new_ones(c, n_fixed), far_mask), dim=1)
        global_k = global_k.to(global_q.dtype)  # unrotated (stored) keys meet rotated queries
        global_logits = torch.matmul(global_q, expand_kv(global_k, self.group).transpose(-1, -2)).float()
        global_logits = global_logits.masked_fill(~global_mask, float("-inf"))

        probs = torch.softmax(torch.cat((local_logits, global_logits), dim=-1) * self.scaling, dim=-1)
        p_local, p_global = probs[..., :span], probs[..., span:]
        out = torch.matmul(p_local.to(v.dtype), expand_kv(self.recent_v[:, kv_st:], self.group))
        if global_k.shape[1]:
            out = out + torch.matmul(p_global.to(v.dtype), expand_kv(global_v, self.group))
        score = self.recent_score.clone()
        score[:, kv_st:] += p_local.sum(dim=1)
        self.recent_score = score
        self.evict()
        return out, retrieved

    def retrieve(self, global_q: torch.Tensor) -> list[int]:
        """The ``topk`` blocks that best match the chunk's queries (all if fewer)."""
        if self.n_blocks <= self.cfg.topk:
            return list(range(self.n_blocks))
        return sorted(self.block_scores(global_q).topk(self.cfg.topk).indices.tolist())

    def block_scores(self, global_q: torch.Tensor) -> torch.Tensor:
        """Relevance of every block (N,) to a chunk of global queries (H, c, d)."""
        q = global_q.float()
        if self.cfg.center_queries and self.query_count:
            q = q - (self.query_sum / self.query_count)[:, None]
        reps = self.block_repr.float()  # (N, H, r, d)
        if self.cfg.block_score == "dot":
            return torch.einsum("nhd,hd->n", reps.mean(dim=2), q.mean(dim=1))
        scores = reps.new_zeros(reps.shape[0])
        for start in range(0, q.shape[1], 64):  # bounded memory for long chunks and many blocks
            logits = torch.einsum("nhrd,hcd->hcnr", reps, q[:, start : start + 64]) * self.scaling
            probs = torch.softmax(logits.flatten(2), dim=-1).view(logits.shape)
            scores += probs.sum(dim=(0, 1, 3))
        return scores / q.shape[1]

    # ---- eviction -------------------------------------------------------------------------
    def evict(self) -> None:
        """Move the oldest recent tokens to ``init`` (first n_init of the stream), then to blocks."""
        cfg = self.cfg
        total = self.recent_k.shape[1]
        if self.init_k.shape[1] < cfg.n_init and total > cfg.n_local:
            n = min(cfg.n_init - self.init_k.shape[1], total - cfg.n_local)
            self.init_k = torch.cat((self.init_k, self.recent_k[:, :n]), dim=1)
            self.init_v = torch.cat((self.init_v, self.recent_v[:, :n]), dim=1)
            self._drop_recent(n)
            total -= n
        while total - cfg.block_size >= cfg.n_local:
            self._make_block()
            total -= cfg.block_size

    def _make_block(self) -> None:
        size = self.cfg.block_size
        k, v = self.recent_k[:, :size], self.recent_v[:, :size]
        index, chosen = representatives(k, self.recent_score[:, :size], self.cfg.repr_topk, self.group)
        self.blocks_k.append(k)
        self.blocks_v.append(v)
        self.block_repr_index.append(index)
        self.block_start.append(self.recent_start)
        rep = chosen[None]
        self.block_repr = rep if self.block_repr is None else torch.cat((self.block_repr, rep), dim=0)
        self._drop_recent(size)

    def _drop_recent(self, n: int) -> None:
        self.recent_k, self.recent_v = self.recent_k[:, n:], self.recent_v[:, n:]
        self.recent_score = self.recent_score[:, n:]
        self.recent_start += n

    def nbytes(self) -> dict[str, int]:
        def size(tensors) -> int:
            return sum(t.numel() * t.element_size() for t in tensors if t is not None)

        return {
            "kv_blocks_bytes": size(self.blocks_k) + size(self.blocks_v),
            "block_repr_bytes": size([self.block_repr]),
            "init_bytes": size([self.init_k, self.init_v]),
            "local_bytes": size([self.recent_k, self.recent_v]),
        }


def representatives(
    k: torch.Tensor, score: torch.Tensor, repr_topk: int, group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query head, the ``repr_topk`` most-attended tokens of a block and their keys.

    k (KV, size, d); score (H, size) = attention each token received while in the local window.
    Returns the token indices (H, repr_topk) and the representative keys (H, repr_topk, d).
    """
    index = score.topk(repr_topk, dim=-1).indices
    keys = expand_kv(k, group)  # (H, size, d)
    return index, torch.gather(keys, 1, index[:, :, None].expand(-1, -1, keys.shape[-1]))


@dataclass
class Segment:
    """A labelled span of the stream (a context id, a separator, a question)."""

    start: int
    end: int
    label: str


class InfLLMStream:
    """A model reading one long stream through per-layer InfLLM memories, chunk by chunk."""

    def __init__(self, model: torch.nn.Module, cfg: MemoryConfig, parts: LlamaParts | None = None) -> None:
        cfg.check()
        self.cfg = cfg
        self.parts = parts or llama_parts(model)
        self.length = 0
        self.segments: list[Segment] = []
        self.memories = [
            LayerMemory(cfg, self.parts.n_heads, self.parts.n_kv_heads, self.parts.scaling, self._rope)
            for _ in self.parts.layers
        ]

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.parts.embed.weight
        like = torch.empty(0, device=weight.device, dtype=torch.float32)
        return self.parts.rope(positions, like)

    def fork(self) -> InfLLMStream:
        other = copy.copy(self)
        other.segments = list(self.segments)
        other.memories = [m.clone() for m in self.memories]
        return other

    @torch.no_grad()
    def feed(self, ids: list[int], label: str = "") -> tuple[torch.Tensor, list[list[list[int]]]]:
        """Read tokens in chunks; returns the logits of the last token (vocab,) and, per chunk, the
        blocks each layer retrieved."""
        if not ids:
            raise ValueError("feed() needs at least one token")
        self.segments.append(Segment(self.length, self.length + len(ids), label))
        retrievals = []
        logits = None
        for start in range(0, len(ids), self.cfg.chunk_size):
            chunk = ids[start : start + self.cfg.chunk_size]
            logits, retrieved = self.forward_chunk(chunk, last_only=True)
            retrievals.append(retrieved)
        return logits[-1], retrievals

    @torch.no_grad()
    def forward_chunk(self, ids: list[int], last_only: bool = False) -> tuple[torch.Tensor, list[list[int]]]:
        """One chunk through every layer; logits (c or 1, vocab) and each layer's retrieved blocks."""
        parts = self.parts
        device = parts.embed.weight.device
        hidden = parts.embed(torch.tensor([ids], device=device))
        retrieved = []
        for layer, memory in zip(parts.layers, self.memories):
            q, k, v = project_qkv(parts, layer, layer.input_layernorm(hidden))
            out, blocks = memory.forward(q[0], k[0], v[0])
            retrieved.append(blocks)
            hidden = hidden + attention_out(layer, out[None])
            hidden = mlp_block(layer, hidden)
        if last_only:
            hidden = hidden[:, -1:]
        self.length += len(ids)
        return parts.lm_head(parts.norm(hidden))[0], retrieved

    # ---- bookkeeping ---------------------------------------------------------------------
    def block_labels(self, block: int) -> set[str]:
        """Labels of the stream segments a block's tokens come from."""
        return set(self.block_label_tokens(block))

    def block_label_tokens(self, block: int) -> dict[str, int]:
        """How many of a block's tokens each labelled segment contributes."""
        start = self.memories[0].block_start[block]
        end = start + self.cfg.block_size
        return {
            s.label: min(s.end, end) - max(s.start, start)
            for s in self.segments
            if s.label and s.start < end and s.end > start
        }

    def local_labels(self) -> set[str]:
        """Labels of the segments still (partly) in the recent/local tokens."""
        start = self.memories[0].recent_start
        return {s.label for s in self.segments if s.label and s.end > start}

    @property
    def n_blocks(self) -> int:
        return self.memories[0].n_blocks

    def nbytes(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for memory in self.memories:
            for key, value in memory.nbytes().items():
                total[key] = total.get(key, 0) + value
        return total
