"""The student's decoder layers compiled (``torch.compile``) around the key/value cache.

On a CPU a training step of a small model is tens of thousands of small operations: RMSNorm's fp32
round trip, RoPE, the attention mask and softmax, SiLU, the residual additions, autocast's casts.
Each costs a fixed dispatch overhead and a pass over memory, so together they took as long as the
matmuls. The compiler fuses them into a few loops per layer.

Compiling whole layers does not work: the shared demonstration prefix passes a key/value cache
object into them, and the compiled layer was recompiled on the cache's state until torch gave up.
So each layer runs as two compiled halves with the cache update between them, in eager mode:

1. input norm, q/k/v projections, RoPE;
2. attention (the model's own attention function), output projection, residual, post-attention
   norm, MLP, residual.

Both halves are the layer's own modules called in the order of the model's forward, so the result
is the same function (float rounding aside). Passes without autograd (teachers, answers) run the
layer's own forward. ``dynamic=True``: one graph serves every batch shape and
every layer (the layers' parameters are graph inputs), and passes with a cached prefix and without
(``_compiled``, contiguous keys), so compiling costs once per process (about half a minute on a CPU;
a few seconds once the compiler's on-disk caches hold the graphs), not once per layer or batch.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo.config as dynamo_config
import torch.fx.experimental._config as fx_config
from tqdm.auto import tqdm
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward

from benchmark.errors import BenchError

_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx", "config")


_announced = False  # the one-time notice that the first training step compiles


def compile_decoder_layers(decoder_layers: Any) -> int:
    """Give every decoder layer the compiled two-half forward; returns how many layers.

    Raises ``BenchError`` when a layer is not Llama-style (the parts above) or no C++ compiler is
    found (torch's CPU compiler needs one)."""
    layers = list(decoder_layers)
    for layer in layers:
        missing = [name for name in _LAYER_PARTS if not hasattr(layer, name)]
        attention = getattr(layer, "self_attn", None)
        if attention is not None:
            missing += [f"self_attn.{name}" for name in _ATTENTION_PARTS if not hasattr(attention, name)]
        if missing:
            raise BenchError(
                f"compile_layers: {type(layer).__name__} lacks {', '.join(missing)} (only Llama-style "
                "decoder layers are supported); use --set compile_layers=false"
            )
    if any(_on_cpu(layer) for layer in layers) and not _cpp_compiler():
        raise BenchError("compile_layers: no C++ compiler (g++, clang++ or $CXX) found; use --set compile_layers=false")
    for layer in layers:
        layer.forward = types.MethodType(_layer_forward, layer)
    global _announced
    if not _announced:
        _announced = True
        tqdm.write(
            "compile_layers: the first training step compiles the student's layers (once per process; "
            "about half a minute on a CPU)",
            file=sys.stderr,
        )
    return len(layers)


def _on_cpu(layer: torch.nn.Module) -> bool:
    return next(layer.parameters()).device.type == "cpu"


def _cpp_compiler() -> str | None:
    candidates = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    return next((found for name in candidates if name and (found := shutil.which(name))), None)


def _layer_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = False,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The decoder layer's forward (same arguments): compiled halves, the cache updated between.

    Only passes that build a graph for backward (training) run compiled. Inference passes (a
    teacher, answers) run the layer's own forward: generation's one-token steps and other attention
    kernels would each compile graphs of their own, which cost an answering run more than they saved.
    """
    cache = kwargs.pop("past_key_values", cache)
    if not torch.is_grad_enabled():
        return type(self).forward(
            self,
            hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
    if position_embeddings is None:
        raise BenchError("compile_layers: the model passed no rotary position embeddings to its layers")
    attn = self.self_attn
    cos, sin = position_embeddings
    query, key, value = _project(self, hidden_states, cos, sin)
    if cache is not None:
        key, value = cache.update(key, value, attn.layer_idx, kwargs=kwargs)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    return _attend_and_feed_forward(self, attend, hidden_states, query, key, value, attention_mask, kwargs)


def _compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` compiled with dynamic sizes, with two settings that save compiling it again:

    - sizes that happen to be equal when it is first traced stay distinct symbols (``use_duck_shape``
      off): the first pass, without a prefix, has as many keys as queries, and with duck sizing the
      graph would assume so and be compiled again for the first pass after a prefix;
    - float arguments (the attention's scaling) are constants (``specialize_float``): as symbols they
      made the compiler give up on its first trace of the attention half and start over.
    """
    compiled = torch.compile(function, dynamic=True)

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        # Set and restored directly: a fifth of ``config.patch``'s cost per call.
        duck, floats = fx_config.use_duck_shape, dynamo_config.specialize_float
        fx_config.use_duck_shape, dynamo_config.specialize_float = False, True
        try:
            return compiled(*args)
        finally:
            fx_config.use_duck_shape, dynamo_config.specialize_float = duck, floats

    return call


@_compiled
def _project(layer: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)
    shape = (*hidden.shape[:-1], -1, attn.head_dim)
    query = attn.q_proj(normed).view(shape).transpose(1, 2)
    key = attn.k_proj(normed).view(shape).transpose(1, 2)
    value = attn.v_proj(normed).view(shape).transpose(1, 2)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    # Contiguous, as a key/value cache's concatenation returns them: the attention half then takes
    # keys of one layout with a cache and without, one compiled graph instead of two.
    return query, key.contiguous(), value.contiguous()


@_compiled
def _attend_and_feed_forward(
    layer: Any,
    attend: Any,
    hidden: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    attn = layer.self_attn
    dropout = getattr(attn, "attention_dropout", 0.0) if attn.training else 0.0
    out, _ = attend(attn, query, key, value, attention_mask, dropout=dropout, scaling=attn.scaling, **kwargs)
    hidden = hidden + attn.o_proj(out.reshape(*hidden.shape[:-1], -1).contiguous())
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))
