"""LoRA projections that read the same input, computed as one group.

In a Llama-style layer q/k/v read one hidden state and so do gate/up. peft runs each projection on
its own: a frozen matmul, two rank-r matmuls and a cast of the input to bf16 per matmul under
autocast, so a layer spends 15 small matmuls and 10 casts on what is 2 frozen and 4 rank-r matmuls
once grouped. On a CPU, where these shapes are small, grouping saves about a tenth of a training step.

Grouping keeps peft's parameters and math: the frozen weights become views of one concatenated
weight (no extra memory), the LoRA factors are concatenated (A) and placed block-diagonally (B) at
every call, so gradients reach peft's own tensors and every other part of the code sees a normal
peft model. Only the order of bf16 roundings differs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# Sibling projections that take the same input in the Llama family (Llama, Mistral, Qwen, SmolLM).
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class ProjectionGroup:
    """Projections of one input; the first call computes them all, the others take their slice.

    The model must call them in order with the very same tensor (the Llama layers do); any other
    call falls back to the projection's own peft forward, so a different order is slower, never wrong.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        self.members = members
        self.sizes = [m.base_layer.out_features for m in members]
        bases = [m.base_layer for m in members]
        self.weight = _concatenate_in_place([b.weight for b in bases])
        self.bias = _concatenate_in_place([b.bias for b in bases]) if bases[0].bias is not None else None
        self.pending: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    def __deepcopy__(self, memo: dict) -> "ProjectionGroup":
        """A copy over the copied members (``teacher=current``); their weights become its views again."""
        return ProjectionGroup([copy.deepcopy(m, memo) for m in self.members])

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index == 0:
            self.pending = None
            if not self._plain_lora():
                return self.members[0](x)
            parts = self._all(x).split(self.sizes, dim=-1)
            self.pending = (x, parts)
            return parts[0]
        pending = self.pending
        if pending is None or pending[0] is not x:
            return self.members[index](x)
        if index == len(self.members) - 1:
            self.pending = None  # do not keep activations alive past the layer
        return pending[1][index]

    def _plain_lora(self) -> bool:
        """Vanilla, unmerged, enabled LoRA with one active adapter: the case computed here."""
        return all(
            not m.disable_adapters and not m.merged and not m.lora_variant
            and list(m.active_adapters) == ["default"] and "default" in m.lora_A
            for m in self.members
        )

    def _all(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device))  # cast once, not once per matmul
        result = F.linear(x, self.weight, self.bias)
        a_weights = [m.lora_A["default"].weight for m in self.members]
        lora_dtype = a_weights[0].dtype
        lora_in = x if torch.is_autocast_enabled(device) else x.to(lora_dtype)
        dropouts = [m.lora_dropout["default"] for m in self.members]
        if any(_drops(d) for d in dropouts):  # each projection draws its own dropout mask, as in peft
            low = torch.cat([F.linear(d(lora_in), a) for d, a in zip(dropouts, a_weights)], dim=-1)
        else:
            low = F.linear(lora_in, torch.cat(a_weights))
        b = torch.block_diag(*(m.lora_B["default"].weight * m.scaling["default"] for m in self.members))
        return result + F.linear(low, b).to(result.dtype)


class GroupedProjection(nn.Module):
    """Stands in for one peft LoRA projection of a group; its parameters stay in ``inner``."""

    def __init__(self, inner: nn.Module, group: ProjectionGroup, index: int) -> None:
        super().__init__()
        self.inner = inner
        self.group = group
        self.index = index

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:
            return self.inner(x, *args, **kwargs)
        return self.group.output(self.index, x)


def group_shared_input_projections(model: nn.Module) -> int:
    """Group the LoRA projections of ``model`` that share an input; returns the number of groups.

    Groups need peft LoRA ``Linear`` layers with frozen base weights of one dtype, all with or all
    without a bias; anything else is left as it is.
    """
    from peft.tuners.lora import Linear as LoraLinear

    count = 0
    for parent in list(model.modules()):
        for names in SHARED_INPUT_GROUPS:
            members = [getattr(parent, n, None) for n in names]
            members = [m for m in members if isinstance(m, LoraLinear)]
            if len(members) < 2 or not _groupable([m.base_layer for m in members]):
                continue
            group = ProjectionGroup(members)
            for index, (name, member) in enumerate(zip(names, members)):
                setattr(parent, name, GroupedProjection(member, group, index))
            count += 1
    return count


def _groupable(bases: list[nn.Module]) -> bool:
    if not all(isinstance(b, nn.Linear) for b in bases):
        return False
    weights = [b.weight for b in bases]
    has_bias = [b.bias is not None for b in bases]
    return (
        all(not w.requires_grad for w in weights)
        and len({w.dtype for w in weights}) == 1
        and len({w.shape[1] for w in weights}) == 1
        and (all(has_bias) or not any(has_bias))
        and not any(b.bias.requires_grad for b in bases if b.bias is not None)
    )


def _concatenate_in_place(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One tensor holding ``tensors`` row after row; each original becomes a view into it."""
    whole = torch.cat([t.detach() for t in tensors])
    offset = 0
    for t in tensors:
        t.data = whole[offset : offset + t.shape[0]]
        offset += t.shape[0]
    return whole


def _drops(dropout: nn.Module) -> bool:
    return isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0
