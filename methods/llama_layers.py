"""Running a Llama-architecture causal LM layer by layer through its public modules.

The memory methods (InfLLM, MemoryLLM) change what each layer's attention sees, not the weights.
Rather than patching the private attention code of a given transformers release, they call the
model's own submodules — embeddings, per-layer norms, q/k/v/o projections, MLP, final norm, LM head
and rotary embedding — and do the attention themselves. These attributes are the architecture's
public parameter layout (the names of every Llama checkpoint), so this works from transformers 4.x to
5.x, on CPU and CUDA alike. ``check_logits_match`` in the tests proves the result equals the model's
own forward pass when no memory is involved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from benchmark.errors import BenchError

# A function adding a low-rank update to a projection, given the projection's input (MemoryLLM-mini).
Adapter = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LlamaParts:
    """The submodules of a Llama-style model that a layer-by-layer forward pass needs."""

    model: nn.Module
    embed: nn.Module
    layers: list[nn.Module]
    norm: nn.Module
    lm_head: nn.Module
    rotary: nn.Module
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float
    hidden_size: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def rope(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables (len, head_dim) for integer positions, from the model's own rotary module."""
        cos, sin = self.rotary(like, positions.to(like.device).view(1, -1))
        return cos[0], sin[0]


_REQUIRED = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def llama_parts(model: nn.Module) -> LlamaParts:
    """Find the pieces, or explain in one line why this model is not a Llama-style decoder."""
    config = model.config
    inner = getattr(model, "model", None)
    missing = [name for name, obj in (("model", inner), ("lm_head", getattr(model, "lm_head", None))) if obj is None]
    if inner is not None:
        missing += [n for n in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(inner, n)]
    if not missing:
        layer = inner.layers[0]
        missing += [n for n in _REQUIRED if not hasattr(layer, n)]
        if hasattr(layer, "self_attn"):
            missing += [f"self_attn.{n}" for n in _ATTENTION if not hasattr(layer.self_attn, n)]
    if missing:
        kind = getattr(config, "model_type", type(model).__name__)
        raise BenchError(
            f"model type {kind!r} is not a Llama-style decoder (no {', '.join(missing)}); "
            "this method supports Llama, Mistral, Qwen2 and SmolLM-like models"
        )
    attn = inner.layers[0].self_attn
    n_heads = config.num_attention_heads
    head_dim = getattr(attn, "head_dim", None) or config.hidden_size // n_heads
    return LlamaParts(
        model=model,
        embed=inner.embed_tokens,
        layers=list(inner.layers),
        norm=inner.norm,
        lm_head=model.lm_head,
        rotary=inner.rotary_emb,
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        scaling=float(getattr(attn, "scaling", head_dim**-0.5)),
        hidden_size=config.hidden_size,
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., len, head_dim) by the angles of ``cos``/``sin`` (len, head_dim).

    With float32 tables the result is float32, as in the model's own forward pass under autocast.
    """
    return (x * cos) + (rotate_half(x) * sin)


def expand_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """(…, kv_heads, len, d) -> (…, heads, len, d): each key/value head serves ``group`` query heads."""
    return x if group == 1 else torch.repeat_interleave(x, group, dim=-3)


def project_qkv(
    parts: LlamaParts,
    layer: nn.Module,
    normed: torch.Tensor,
    adapters: dict[str, Adapter] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unrotated queries (B, H, T, d), keys and values (B, KV, T, d) of already-normed input."""
    attn = layer.self_attn
    b, t, _ = normed.shape
    outs = []
    for name, proj, heads in (
        ("q", attn.q_proj, parts.n_heads),
        ("k", attn.k_proj, parts.n_kv_heads),
        ("v", attn.v_proj, parts.n_kv_heads),
    ):
        y = proj(normed)
        if adapters and name in adapters:
            y = y + adapters[name](normed)
        outs.append(y.view(b, t, heads, parts.head_dim).transpose(1, 2))
    q, k, v = outs
    if hasattr(attn, "q_norm"):  # Qwen3/OLMo2-style per-head norms, applied before the rotation
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, v


def attention_out(
    layer: nn.Module, heads_out: torch.Tensor, adapters: dict[str, Adapter] | None = None
) -> torch.Tensor:
    """(B, H, T, d) attention result -> (B, T, hidden) through the output projection."""
    b, h, t, d = heads_out.shape
    merged = heads_out.transpose(1, 2).reshape(b, t, h * d)
    out = layer.self_attn.o_proj(merged)
    if adapters and "o" in adapters:
        out = out + adapters["o"](merged)
    return out


def mlp_block(layer: nn.Module, hidden: torch.Tensor, adapters: dict[str, Adapter] | None = None) -> torch.Tensor:
    """The residual feed-forward half of a decoder layer (gate/up/down adapters if given)."""
    normed = layer.post_attention_layernorm(hidden)
    if not adapters or not {"gate", "up", "down"} & set(adapters):
        return hidden + layer.mlp(normed)
    mlp = layer.mlp

    def proj(name: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x) + adapters[name](x) if name in adapters else module(x)

    inner = mlp.act_fn(proj("gate", mlp.gate_proj, normed)) * proj("up", mlp.up_proj, normed)
    return hidden + proj("down", mlp.down_proj, inner)


def decoder_layer(
    parts: LlamaParts,
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    past: tuple[torch.Tensor, torch.Tensor] | None = None,
    adapters: dict[str, Adapter] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A full decoder layer with causal attention over ``past`` keys/values and the input itself.

    hidden (B, T, hidden) sits at the positions whose rotary tables are ``cos``/``sin`` (T, d);
    ``past`` holds rotated keys and values (B, KV, P, d) of the P positions before it. Returns the
    layer output and the rotated keys and values of past + input (the cache for the next call).
    """
    q, k, v = project_qkv(parts, layer, layer.input_layernorm(hidden), adapters)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if past is not None:
        k, v = torch.cat((past[0], k), dim=-2), torch.cat((past[1], v), dim=-2)
    t, total = q.shape[-2], k.shape[-2]
    mask = torch.ones(t, total, dtype=torch.bool, device=q.device).tril(total - t)
    out, _ = attend(q, expand_kv(k, parts.group), expand_kv(v, parts.group), mask, parts.scaling)
    hidden = hidden + attention_out(layer, out, adapters)
    return mlp_block(layer, hidden, adapters), (k, v)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention with a boolean mask (True = visible); softmax in float32.

    Returns the output (…, H, Tq, d) and the probabilities (…, H, Tq, Tk).
    """
    logits = torch.matmul(q, k.transpose(-1, -2)).float() * scaling
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.nan_to_num(probs)  # rows with nothing visible (never the case for a causal row)
    return torch.matmul(probs.to(v.dtype), v), probs
