"""A shorter forward pass for peft's LoRA linear layers under autocast: the same function, fewer
operations.

peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` with autocast casting ``x`` to
bf16 twice (once for the base weight, once for ``lora_A``), scaling the (tokens, out) update in its
own multiplication and adding it in another. Here ``x`` is cast once, the scaling goes into
``lora_B``'s (out, r) weight, and the addition into the second matmul (``addmm``), which also
rounds the sum once instead of twice. On a CPU a training step is thousands of such small
operations, each with a fixed cost, so fewer of them is what makes it faster.

Only the plain case takes this path (one active adapter, no DoRA or other variant, no LoRA bias,
not merged, no extra arguments, autocast on); everything else runs peft's own ``forward``.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


def use_short_lora_forward(model: torch.nn.Module) -> int:
    """Give every peft LoRA ``Linear`` of ``model`` the short forward; returns how many."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear:  # subclasses (quantised layers) keep their own
            module.forward = types.MethodType(_short_forward, module)
            count += 1
    return count


def _short_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    adapters = self.active_adapters
    device = x.device.type
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or len(adapters) != 1
        or adapters[0] in self.lora_variant
        or adapters[0] not in self.lora_A
        or self.lora_B[adapters[0]].bias is not None
        or not torch.is_autocast_enabled(device)
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    dtype = torch.get_autocast_dtype(device)
    base = self.base_layer
    # Every operand is cast to the autocast dtype here, so autocast's own casts find nothing to do.
    # (No ``torch.autocast(enabled=False)`` block: inside a compiled layer it keeps the compiler from
    # caching the layer's training graph on disk, so every run traced it again, about 10 s.)
    xc = x.to(dtype)
    bias = None if base.bias is None else base.bias.to(dtype)
    out = F.linear(xc, base.weight.to(dtype), bias)
    down = F.linear(self.lora_dropout[name](xc), self.lora_A[name].weight.to(dtype))
    up = (self.lora_B[name].weight * self.scaling[name]).to(dtype)
    flat = torch.addmm(out.reshape(-1, out.shape[-1]), down.reshape(-1, down.shape[-1]), up.t())
    return flat.view(out.shape)
