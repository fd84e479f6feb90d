"""The LM head and loss run in checkpointed chunks of rows: the same loss and gradients, less memory."""

from __future__ import annotations

import pytest
import torch

from methods.training import Dist, Example, Trainer, TrainParams, build_student

CHUNK = 7  # fewer than the batch's 46 scored rows: seven chunks, some crossing example boundaries


def batch_and_targets(lm, kind: str) -> tuple[list[Example], list[Dist] | None]:
    g = torch.Generator().manual_seed(0)
    vocab = lm.model.config.vocab_size
    bos = [lm.tokenizer.bos_token_id]
    batch = [
        Example(bos + torch.randint(100, vocab, (n,), generator=g).tolist(), first, "context", weight)
        for n, first, weight in ((12, 0, 1.0), (16, 3, 0.5), (14, 1, 2.0))
    ]
    prefix = bos + torch.randint(100, vocab, (9,), generator=g).tolist()  # shared with share_prefix=8
    batch += [
        Example(prefix + torch.randint(100, vocab, (n,), generator=g).tolist(), len(prefix), "qa") for n in (4, 6)
    ]
    if kind == "ce":
        return batch, None
    targets = []
    for e in batch:
        logp = torch.log_softmax(3 * torch.randn(e.rows, vocab, generator=g), -1)
        targets.append(Dist(logp) if kind == "kl" else Dist(*logp.topk(64, -1)))
    return batch, targets


def loss_and_grads(lm, batch, targets, chunk: int, temperature: float = 1.0, share: int = 0):
    torch.manual_seed(0)
    p = TrainParams(lora_dropout=0.0, loss_chunk_rows=chunk, share_prefix=share)
    student = build_student(lm, p)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)  # so that gradients reach lora_A too
    trainer = Trainer(student, lm, p, 1, temperature=temperature)
    loss = trainer.loss(batch, targets)
    loss.backward()
    return float(loss.detach()), {n: t.grad.clone() for n, t in student.named_parameters() if t.requires_grad}


@pytest.mark.parametrize(
    "kind, temperature, share",
    [("ce", 1.0, 0), ("kl", 1.0, 0), ("topk", 1.0, 0), ("topk", 2.0, 0), ("ce", 1.0, 8), ("topk", 1.0, 8)],
)
def test_chunked_loss_gives_the_same_loss_and_gradients(tiny_lm, kind, temperature, share):
    batch, targets = batch_and_targets(tiny_lm, kind)
    assert sum(e.rows for e in batch) > 4 * CHUNK
    whole, whole_grads = loss_and_grads(tiny_lm, batch, targets, 0, temperature)
    chunked, chunked_grads = loss_and_grads(tiny_lm, batch, targets, CHUNK, temperature, share)
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert whole_grads.keys() == chunked_grads.keys() and whole_grads
    for name, grad in whole_grads.items():
        assert grad.abs().sum() > 0, name
        # Chunks sum the gradient in another order: fp32 rounding of about 2e-6 of the tensor's largest
        # entry (3.6e-7 at 0.2 on an AVX2-only CPU), so entries near 0 need an absolute tolerance of that
        # scale; a lost or doubled chunk would be off by the gradient's own size.
        assert torch.allclose(chunked_grads[name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max())), name


def test_chunked_loss_keeps_no_full_vocabulary_tensor_for_backward(tiny_lm):
    # A full-vocabulary teacher: the path through log_softmax (top-k targets and token ids take the
    # fused head and loss, tests/test_head_loss.py).
    batch, targets = batch_and_targets(tiny_lm, "kl")
    rows, vocab = sum(e.rows for e in batch), tiny_lm.model.config.vocab_size
    for chunk, kept_logits in ((0, True), (CHUNK, False)):
        p = TrainParams(lora_dropout=0.0, loss_chunk_rows=chunk)
        trainer = Trainer(build_student(tiny_lm, p), tiny_lm, p, 1)
        largest = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal largest
            largest = max(largest, t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            trainer.loss(batch, targets).backward()
        assert (largest >= rows * vocab) == kept_logits
