"""MemoryLLM-mini: MemoryLLM's self-updating memory pool (Wang et al., ICML 2024) on a small model.

Every layer l keeps a pool of N = ``num_blocks`` × K hidden-state tokens (``num_tokens`` = K).
- Reading: layer l sees [bos_l, pool_l, input] as one causal sequence (positions 0, 1..N, N+1..), so
  queries attend to the pool; the pool's own outputs are never needed, only its keys and values.
- Self-update (injection): layer l runs over [bos_l, last K pool tokens, context] with a learned
  ``new_memory_positional_emb`` added to the last K positions; the last K outputs are the new memory
  tokens of layer l and the context outputs feed layer l+1. Each layer then drops K random old tokens
  and appends the K new ones, so the pool size never changes and old knowledge decays smoothly.
  The first injection into an empty pool fills it by repeating its K tokens (as the official code).
The official model trains the whole LLM with LoRA (r 8, alpha 32 on q,k,v,gate,up,down) plus the
bos embeddings and the new-memory embedding; here the base model stays frozen and only that
mechanism is trained (``bench train memoryllm-mini``), at small scale on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from methods.llama_layers import LlamaParts, apply_rope, decoder_layer, llama_parts, project_qkv

LORA_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


class LoRA(nn.Module):
    """A low-rank update x -> scale · B A x, zero at initialisation (B = 0)."""

    def __init__(self, d_in: int, d_out: int, r: int, alpha: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(r, d_in) / math.sqrt(d_in))
        self.b = nn.Parameter(torch.zeros(d_out, r))
        self.scale = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a.T.to(x.dtype)) @ self.b.T.to(x.dtype) * self.scale


@dataclass(frozen=True)
class PoolConfig:
    num_tokens: int  # K: memory tokens written (and dropped) per injection, per layer
    num_blocks: int  # the pool holds num_blocks × K tokens per layer
    lora_r: int = 8
    lora_alpha: float = 32.0

    @property
    def pool_size(self) -> int:
        return self.num_tokens * self.num_blocks


class MemoryMechanism(nn.Module):
    """The trainable part: per-layer bos embeddings, the new-memory embedding and LoRA adapters."""

    def __init__(self, parts: LlamaParts, cfg: PoolConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_layers, d = len(parts.layers), parts.hidden_size
        self.bos = nn.Parameter(torch.zeros(n_layers, 1, d))
        self.new_memory_pos = nn.Parameter(torch.zeros(1, d))
        self.lora = nn.ModuleList()
        for layer in parts.layers:
            adapters = nn.ModuleDict()
            for short, attr in LORA_TARGETS.items():
                owner = layer.mlp if short in ("gate", "up", "down") else layer.self_attn
                linear = getattr(owner, attr)
                adapters[short] = LoRA(linear.in_features, linear.out_features, cfg.lora_r, cfg.lora_alpha)
            self.lora.append(adapters)

    @torch.no_grad()
    def init_bos(self, parts: LlamaParts, bos_token_id: int) -> None:
        """Start each layer's bos embedding at the hidden state a real BOS token has there."""
        device = parts.embed.weight.device
        hidden = parts.embed(torch.tensor([[bos_token_id]], device=device))
        cos, sin = parts.rope(torch.arange(1), hidden)
        for i, layer in enumerate(parts.layers):
            self.bos[i] = hidden[0]
            hidden, _ = decoder_layer(parts, layer, hidden, cos, sin)

    def adapters(self, layer_index: int) -> dict:
        return dict(self.lora[layer_index].items())


class MemoryPool:
    """The per-layer memory tokens of one model, with injection and reading."""

    def __init__(self, parts: LlamaParts, mechanism: MemoryMechanism, generator: torch.Generator) -> None:
        self.parts = parts
        self.mechanism = mechanism
        self.cfg = mechanism.cfg
        self.generator = generator
        self.memory: torch.Tensor | None = None  # (L, N, d); None until the first injection
        self.injections = 0
        self.last_dropped: torch.Tensor | None = None  # (L, K) indices dropped by the last injection

    # ---- self-update ---------------------------------------------------------------------------
    def delta(self, ids: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        """The K new memory tokens per layer (L, K, d) that reading ``ids`` (T,) produces."""
        parts, mech, k = self.parts, self.mechanism, self.cfg.num_tokens
        device = parts.embed.weight.device
        hidden = parts.embed(ids.to(device)[None])
        n_ctx = hidden.shape[1]
        new = []
        for i, layer in enumerate(parts.layers):
            if memory is not None:
                prefix = torch.cat((mech.bos[i], memory[i, -k:]), dim=0)[None].to(hidden.dtype)
                x = torch.cat((prefix, hidden), dim=1)
            else:
                x = hidden
            pos = torch.zeros_like(x)
            pos[:, -k:] = mech.new_memory_pos.to(x.dtype)
            x = x + pos
            cos, sin = parts.rope(torch.arange(x.shape[1]), x)
            out, _ = decoder_layer(parts, layer, x, cos, sin, adapters=mech.adapters(i))
            new.append(out[0, -k:])
            hidden = out[:, -n_ctx:]
        return torch.stack(new)

    def updated(self, memory: torch.Tensor | None, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pool after writing ``delta``: each layer drops K random old tokens, appends the new K."""
        n, k = self.cfg.pool_size, self.cfg.num_tokens
        if memory is None:
            repeats = math.ceil(n / k)
            return delta.repeat(1, repeats, 1)[:, -n:], None
        layers = []
        dropped = []
        for i in range(memory.shape[0]):
            order = torch.randperm(n, generator=self.generator)
            keep = order[: n - k].sort().values.to(memory.device)
            dropped.append(order[n - k :].sort().values)
            layers.append(torch.cat((memory[i, keep], delta[i].to(memory.dtype)), dim=0))
        return torch.stack(layers), torch.stack(dropped)

    def inject(self, ids: torch.Tensor) -> None:
        """Self-update with one context (no gradient)."""
        with torch.no_grad():
            delta = self.delta(ids, self.memory)
            self.memory, self.last_dropped = self.updated(self.memory, delta.float())
        self.injections += 1

    # ---- reading -----------------------------------------------------------------------------
    def prefix_cache(self, memory: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer, the rotated keys/values of [bos, pool] at positions 0..N (None when empty)."""
        if memory is None:
            return [None] * len(self.parts.layers)
        parts, mech = self.parts, self.mechanism
        caches = []
        for i, layer in enumerate(parts.layers):
            prefix = torch.cat((mech.bos[i], memory[i]), dim=0)[None].to(parts.embed.weight.dtype)
            cos, sin = parts.rope(torch.arange(prefix.shape[1]), prefix)
            adapters = mech.adapters(i)
            _, key, value = project_qkv(parts, layer, layer.input_layernorm(prefix), adapters)
            caches.append((apply_rope(key, cos, sin), value))
        return caches

    def read(
        self,
        ids: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor] | None],
        start: int,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits (T, vocab) of ``ids`` (T,) at positions start.. after the cached prefix; new caches."""
        parts, mech = self.parts, self.mechanism
        hidden = parts.embed(ids.to(parts.embed.weight.device)[None])
        cos, sin = parts.rope(torch.arange(start, start + hidden.shape[1]), hidden)
        new_caches = []
        for i, layer in enumerate(parts.layers):
            hidden, cache = decoder_layer(parts, layer, hidden, cos, sin, past=caches[i], adapters=mech.adapters(i))
            new_caches.append(cache)
        return parts.lm_head(parts.norm(hidden))[0], new_caches

    def prefix_length(self, memory: torch.Tensor | None) -> int:
        return 0 if memory is None else 1 + memory.shape[1]

    def nbytes(self) -> int:
        return 0 if self.memory is None else self.memory.numel() * self.memory.element_size()


def build(model: nn.Module, cfg: PoolConfig) -> tuple[LlamaParts, MemoryMechanism]:
    parts = llama_parts(model)
    mechanism = MemoryMechanism(parts, cfg).to(parts.embed.weight.device)
    return parts, mechanism
