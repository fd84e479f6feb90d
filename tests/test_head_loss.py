"""The LM head fused with the loss (``picked_logits``): the values and gradients of autograd through
``log_softmax``, and no (rows, V) tensor kept for backward."""

from __future__ import annotations

import pytest
import torch

from methods.training import Dist, Example, Trainer, TrainParams, build_student
from methods.training.head_loss import picked_logits, top_logp
from methods.training.teacher import kl_rows

ROWS, HIDDEN, VOCAB, K = 23, 16, 300, 12


def reference(hidden, head, index, dtype, temperature):
    """What autograd computes through the head's linear (in ``dtype``) and ``log_softmax``."""
    logits = (hidden.to(dtype) @ head.weight.to(dtype).t()).float() / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, index), torch.logsumexp(logits, -1)


@pytest.mark.parametrize(
    "dtype, temperature, chunk, train_head",
    [
        (torch.float32, 1.0, 5, False),
        (torch.float32, 2.0, 0, False),
        (torch.float32, 1.0, 7, True),
        (torch.bfloat16, 1.0, 5, False),
        (torch.bfloat16, 0.5, 64, True),
    ],
)
def test_picked_logits_match_autograd_through_log_softmax(dtype, temperature, chunk, train_head):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    head.weight.requires_grad_(train_head)
    index = torch.randint(0, VOCAB, (ROWS, K), generator=g)
    mix = torch.randn(ROWS, K, generator=g)  # a loss that weighs every picked entry and the normaliser
    results = []
    for fused in (True, False):
        hidden = torch.randn(ROWS, HIDDEN, generator=torch.Generator().manual_seed(1), requires_grad=True)
        head.weight.grad = None
        if fused:
            picked, lse = picked_logits(hidden, head, index, dtype, temperature, chunk)
            logp = picked - lse.unsqueeze(-1)
        else:
            logp, lse = reference(hidden, head, index, dtype, temperature)
        loss = (logp * mix).sum() + lse.square().mean()
        loss.backward()
        results.append((loss.detach(), hidden.grad, head.weight.grad))
    (fused_loss, fused_dh, fused_dw), (loss, dh, dw) = results
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(fused_loss, loss, rtol=1e-5)
    assert dh.abs().sum() > 0 and torch.allclose(fused_dh, dh, rtol=tol, atol=tol * dh.abs().max())
    if train_head:
        assert torch.allclose(fused_dw, dw, rtol=tol, atol=tol * dw.abs().max())
    else:
        assert fused_dw is None


def test_picked_logits_keep_no_vocabulary_sized_block_for_backward():
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False).requires_grad_(False)
    hidden = torch.randn(ROWS, HIDDEN, requires_grad=True)
    index = torch.randint(0, VOCAB, (ROWS, K))
    sizes = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        picked, lse = picked_logits(hidden, head, index, torch.float32)
        (picked.sum() + lse.sum()).backward()
    assert sizes and max(sizes) == VOCAB * HIDDEN  # the head's own weight, nothing (rows, V)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.log_softmax(hidden @ head.weight.t(), -1).sum().backward()
    assert max(sizes) == ROWS * VOCAB  # the unfused path keeps its logits' log-softmax


def test_picked_logits_refuse_a_head_with_a_bias():
    with pytest.raises(TypeError, match="bias-free"):
        index = torch.zeros(2, 1, dtype=torch.long)
        picked_logits(torch.randn(2, HIDDEN), torch.nn.Linear(HIDDEN, VOCAB), index, torch.float32)


@pytest.mark.parametrize("kind, temperature", [("ce", 1.0), ("topk", 1.0), ("topk", 2.0)])
def test_trainer_fused_loss_equals_the_log_softmax_loss(tiny_lm, monkeypatch, kind, temperature):
    """The Trainer's loss and gradients are those of the unfused path, for cross-entropy and top-k KL."""
    g = torch.Generator().manual_seed(0)
    vocab, bos = tiny_lm.model.config.vocab_size, [tiny_lm.tokenizer.bos_token_id]
    batch = [
        Example(bos + torch.randint(100, vocab, (n,), generator=g).tolist(), first, "qa", weight)
        for n, first, weight in ((12, 0, 1.0), (16, 3, 0.5), (9, 1, 2.0))
    ]
    targets = None
    if kind == "topk":
        logps = [torch.log_softmax(3 * torch.randn(e.rows, vocab, generator=g), -1) for e in batch]
        targets = [Dist(*logp.topk(32, -1)) for logp in logps]
    outcomes = []
    for fused in (True, False):
        torch.manual_seed(0)
        p = TrainParams(lora_dropout=0.0, loss_chunk_rows=7)
        student = build_student(tiny_lm, p)
        with torch.no_grad():
            for name, param in student.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        trainer = Trainer(student, tiny_lm, p, 1, temperature=temperature)
        if not fused:
            monkeypatch.setattr(trainer, "fused_head", lambda target: False)
        loss = trainer.loss(batch, targets)
        loss.backward()
        grads = {n: t.grad.clone() for n, t in student.named_parameters() if t.requires_grad}
        outcomes.append((float(loss.detach()), grads))
    (fused_loss, fused_grads), (loss, grads) = outcomes
    assert fused_loss == pytest.approx(loss, rel=1e-5)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-7), name


def test_kl_rows_of_full_log_probabilities_still_reads_the_top_k():
    g = torch.Generator().manual_seed(0)
    student = torch.log_softmax(torch.randn(4, 50, generator=g), -1)
    teacher = torch.log_softmax(torch.randn(4, 50, generator=g), -1)
    assert torch.allclose(kl_rows(student, Dist(*teacher.topk(50, -1))), kl_rows(student, Dist(teacher)), atol=1e-5)


@pytest.mark.parametrize("dtype, temperature", [(torch.float32, 1.0), (torch.bfloat16, 2.0)])
def test_top_logp_is_the_top_k_of_the_log_softmax(dtype, temperature):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    hidden = torch.randn(ROWS, HIDDEN, generator=g)
    values, index = top_logp(hidden, head, K, dtype, temperature, chunk=10)
    logits = (hidden.to(dtype) @ head.weight.to(dtype).t()).float() / temperature
    expected = torch.log_softmax(logits, -1).topk(K, -1)
    assert torch.equal(index, expected.indices)
    assert torch.allclose(values, expected.values, atol=1e-5)
