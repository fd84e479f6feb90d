"""Grouped LoRA projections (q/k/v, gate/up as one matmul group) against peft's own projections."""

from __future__ import annotations

import copy

import pytest
import torch
from peft.tuners.lora import Linear as LoraLinear

from benchmark.models import load_lm
from methods.grouped_lora import GroupedProjection
from methods.training import Example, Trainer, TrainParams, build_student

SENTENCE = "Question: Who founded Douprur? Answer: Drexrain Lintrim"


def student(lm, grouped: bool, **changes) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_student(lm, TrainParams(group_projections=grouped, **changes))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)  # so that the LoRA path contributes and lora_A gets gradients
    return model


def loss_and_grads(lm, model) -> tuple[float, dict[str, torch.Tensor]]:
    ids = [lm.tokenizer.bos_token_id] + lm.encode(SENTENCE, add_bos=False)
    loss = Trainer(model, lm, TrainParams(), 1).loss([Example(ids, 0), Example(ids[:8], 0)], None)
    loss.backward()
    # Grouping moves each peft projection under ``.inner``; the parameters themselves are peft's.
    grads = {n.replace(".inner", ""): p.grad for n, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads


@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast"])
def test_grouped_projections_give_peft_loss_and_gradients_without_calling_peft(precision, monkeypatch):
    lm = load_lm("tiny-random-llama", precision=precision)
    plain_loss, plain_grads = loss_and_grads(lm, student(lm, False, lora_dropout=0.0))
    grouped = student(lm, True, lora_dropout=0.0)
    assert sum(isinstance(m, GroupedProjection) for m in grouped.modules()) == 5 * lm.model.config.num_hidden_layers
    calls = []
    original = LoraLinear.forward
    monkeypatch.setattr(LoraLinear, "forward", lambda self, *a, **k: calls.append(self) or original(self, *a, **k))
    grouped_loss, grouped_grads = loss_and_grads(lm, grouped)
    tol = 1e-5 if precision == "fp32" else 2e-2  # bf16 roundings happen in another order
    assert grouped_loss == pytest.approx(plain_loss, rel=tol)
    assert grouped_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(grouped_grads[name], grad, rtol=tol, atol=tol * grad.abs().max().item()), name
    # Only down_proj (alone with its input) still runs through peft: once per layer and example batch.
    assert all(m is not None and m.base_layer.out_features == lm.model.config.hidden_size for m in calls)
    assert len(calls) == lm.model.config.num_hidden_layers


def test_grouped_frozen_weights_are_views_and_the_base_model_is_untouched(tiny_lm):
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    model = student(tiny_lm, True)
    attention = model.get_base_model().model.layers[0].self_attn
    group = attention.q_proj.group
    assert attention.k_proj.inner.base_layer.weight.data_ptr() == group.weight[group.sizes[0]:].data_ptr()
    assert all(torch.equal(v, tiny_lm.model.state_dict()[k]) for k, v in before.items())


def test_out_of_order_calls_and_dropout_fall_back_to_the_same_outputs(tiny_lm):
    model = student(tiny_lm, True, lora_dropout=0.1)
    model.eval()  # dropout off: the grouped and per-projection paths must agree exactly
    attention = model.get_base_model().model.layers[0].self_attn
    x = torch.randn(2, 5, tiny_lm.model.config.hidden_size)
    with torch.no_grad():
        alone = attention.v_proj(x)  # without q_proj first: its own peft pass
        q = attention.q_proj(x)
        grouped = attention.v_proj(x)
        assert torch.allclose(grouped, alone, atol=1e-6)
        assert torch.allclose(q, attention.q_proj.inner(x), atol=1e-6)
        assert attention.q_proj.group.pending is None  # nothing kept alive after the last member


def test_a_deep_copy_computes_with_its_own_weights(tiny_lm):
    """``teacher=current`` deep-copies the student: the copy must not read the original's LoRA."""
    model = student(tiny_lm, True).eval()  # no dropout
    frozen = copy.deepcopy(model)
    ids = torch.tensor([[tiny_lm.tokenizer.bos_token_id] + tiny_lm.encode(SENTENCE, add_bos=False)])
    with torch.no_grad():
        expected = frozen(input_ids=ids).logits
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.5)
        assert not torch.allclose(model(input_ids=ids).logits, expected)
        assert torch.equal(frozen(input_ids=ids).logits, expected)
    group = frozen.get_base_model().model.layers[0].mlp.up_proj.group
    assert group.members[1].base_layer.weight.data_ptr() == group.weight[group.sizes[0]:].data_ptr()
