"""The short LoRA forward (``methods.training.lora_forward``): peft's function under autocast, with
fewer operations; peft's own forward everywhere else."""

from __future__ import annotations

import types

import pytest
import torch

from methods.training import TrainParams, build_student
from methods.training.lora_forward import _short_forward


def peft_forward(model: torch.nn.Module) -> None:
    """Back to peft's own forward on every LoRA layer."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), types.MethodType):
            del module.forward


def outputs_and_grads(lm, student, ids):
    student.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = student(input_ids=ids).logits.float()
    logits.logsumexp(-1).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_short_lora_forward_computes_peft_s_function(tiny_lm, dropout):
    torch.manual_seed(0)
    student = build_student(tiny_lm, TrainParams(lora_dropout=dropout))
    student.eval()  # dropout off: both paths see the same input
    shortened = [m for m in student.modules() if isinstance(m.__dict__.get("forward"), types.MethodType)]
    assert len(shortened) == 6 * tiny_lm.model.config.num_hidden_layers  # every adapted projection
    assert all(m.forward.__func__ is _short_forward for m in shortened)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # a non-zero update, so that the LoRA branch counts
    ids = torch.randint(100, tiny_lm.model.config.vocab_size, (2, 11))
    short_out, short_grads = outputs_and_grads(tiny_lm, student, ids)
    peft_forward(student)
    out, grads = outputs_and_grads(tiny_lm, student, ids)
    assert torch.allclose(short_out, out, atol=0.05 * out.abs().max())  # bf16: one rounding less here
    assert grads.keys() == short_grads.keys() and grads
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        cos = torch.nn.functional.cosine_similarity(short_grads[name].flatten(), grad.flatten(), dim=0)
        assert cos > 0.99, name


def test_short_lora_forward_falls_back_to_peft_without_autocast(tiny_lm):
    torch.manual_seed(0)
    student = build_student(tiny_lm, TrainParams(lora_dropout=0.0))
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    ids = torch.randint(100, tiny_lm.model.config.vocab_size, (2, 9))
    with torch.no_grad():
        short = student(input_ids=ids).logits
        peft_forward(student)
        assert torch.equal(short, student(input_ids=ids).logits)  # fp32: the same operations exactly
