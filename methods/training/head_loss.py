"""The LM head fused with the loss: per row, the logits at a few vocabulary entries and the
log-normaliser, without keeping (rows, V) logits, their fp32 copy or their log-softmax for backward.

The loss of every trained method needs only these: cross-entropy is ``lse - z[target]`` and the
top-k KL reads the student's log-probabilities at the teacher's k entries (``z[index] - lse``) and
their sum. Autograd through ``log_softmax`` keeps a (rows, V) fp32 output and writes a zero-filled
(rows, V) gradient for ``gather``; here backward rebuilds each chunk's logits from the saved hidden
states and writes the gradient once, ``softmax * d lse`` plus the picked entries' gradients.
"""

from __future__ import annotations

import math

import torch


class _PickedLogits(torch.autograd.Function):
    """(rows, k) logits at ``index`` and (rows,) logsumexp of ``hidden @ weight.T / temperature``.

    The logits are computed in ``dtype`` (bf16 under bf16-autocast, as the head's linear would) and
    read in fp32, ``chunk`` rows at a time, in scratch blocks that every call reuses.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        index: torch.Tensor,
        temperature: float,
        dtype: torch.dtype,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = hidden.shape[0]
        picked = torch.empty(index.shape, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        w = weight.to(dtype)
        for start in range(0, rows, chunk):
            part = slice(start, start + chunk)
            z = _logits(hidden[part], w, temperature)
            picked[part] = z.gather(-1, index[part])
            lse[part] = _logsumexp_(z).squeeze(-1)
        ctx.save_for_backward(hidden, weight, index, lse)
        ctx.temperature, ctx.dtype, ctx.chunk = temperature, dtype, chunk  # type: ignore[attr-defined]
        return picked, lse

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, d_picked: torch.Tensor, d_lse: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, index, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        temperature, dtype, chunk = ctx.temperature, ctx.dtype, ctx.chunk  # type: ignore[attr-defined]
        need_hidden, need_weight = ctx.needs_input_grad[:2]  # type: ignore[attr-defined]
        w = weight.to(dtype)
        d_hidden = torch.empty_like(hidden) if need_hidden else None
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            z = _logits(hidden[part], w, temperature)
            # d z = softmax(z) * d lse + the picked entries' gradients, then through the division
            grad = z.sub_(lse[part, None]).exp_().mul_(d_lse[part, None])
            grad.scatter_add_(-1, index[part], d_picked[part])
            if temperature != 1.0:
                grad.div_(temperature)
            grad_c = _scratch("grad", grad.shape, dtype, grad.device).copy_(grad)
            if d_hidden is not None:
                d_hidden[part] = grad_c @ w
            if d_weight is not None:
                d_weight += (grad_c.t() @ hidden[part].to(dtype)).float()
        return d_hidden, None if d_weight is None else d_weight.to(weight.dtype), None, None, None, None


def _logsumexp_(z: torch.Tensor) -> torch.Tensor:
    """(rows, 1) logsumexp of ``z``, computed in place: ``z`` is overwritten (no (rows, V) temporary)."""
    top = z.amax(dim=-1, keepdim=True)
    return z.sub_(top).exp_().sum(dim=-1, keepdim=True).log_().add_(top)


_SCRATCH: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}


def _scratch(name: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused block of at least ``shape``'s size: a fresh (rows, V) block per chunk costs more in
    page faults than its arithmetic (a 50 MB fp32 copy took ~30 ms on a CPU, mostly faulting in pages)."""
    key = (name, dtype, device)
    size = math.prod(shape)
    block = _SCRATCH.get(key)
    if block is None or block.numel() < size:
        block = _SCRATCH[key] = torch.empty(size, dtype=dtype, device=device)
    return block[:size].view(shape)


def _logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 logits of one chunk (the matmul in the weight's dtype), divided by the temperature, in
    a scratch block: valid until the next call."""
    shape = (hidden.shape[0], weight.shape[0])
    low = torch.mm(hidden.to(weight.dtype), weight.t(), out=_scratch("low", shape, weight.dtype, hidden.device))
    z = low if low.dtype == torch.float32 else _scratch("fp32", shape, torch.float32, hidden.device).copy_(low)
    if temperature != 1.0:
        z.div_(temperature)
    return z


def linear_head(head: torch.nn.Module) -> bool:
    """Whether the fused functions here can run ``head``: a bias-free ``nn.Linear``."""
    return isinstance(head, torch.nn.Linear) and head.bias is None


def picked_logits(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    index: torch.Tensor,
    dtype: torch.dtype,
    temperature: float = 1.0,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's (tempered) logits at ``index`` (rows, k) and their logsumexp (rows,), in fp32.

    ``head`` must be a bias-free ``torch.nn.Linear`` (the LM heads of the supported models).
    """
    if not linear_head(head):
        raise TypeError("picked_logits needs a bias-free nn.Linear LM head")
    size = chunk if chunk > 0 else max(1, hidden.shape[0])
    with torch.autocast(hidden.device.type, enabled=False):
        out: tuple[torch.Tensor, torch.Tensor] = _PickedLogits.apply(  # type: ignore[no-untyped-call]
            hidden, head.weight, index, temperature, dtype, size
        )
    return out


@torch.no_grad()
def top_logp(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    k: int,
    dtype: torch.dtype,
    temperature: float = 1.0,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest (tempered) log-probabilities of the head at ``hidden`` and their vocabulary
    indices, (rows, k) each: the k largest logits less the rows' logsumexp, so no (rows, V)
    log-softmax is written (a teacher's top-k targets). ``chunk`` rows at a time."""
    if not linear_head(head):
        raise TypeError("top_logp needs a bias-free nn.Linear LM head")
    w = head.weight.to(dtype)
    values = torch.empty((hidden.shape[0], k), dtype=torch.float32, device=hidden.device)
    index = torch.empty((hidden.shape[0], k), dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[0], max(1, chunk)):
        part = slice(start, start + chunk)
        z = _logits(hidden[part], w, temperature)
        torch.topk(z, k, dim=-1, out=(values[part], index[part]))
        values[part] -= _logsumexp_(z)
    return values, index
