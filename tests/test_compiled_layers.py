"""Compiled decoder layers (``compile_layers``): the layer's own function, with the key/value cache
updated outside the compiled code, and a clear error where they cannot run."""

from __future__ import annotations

import types

import pytest
import torch

from benchmark.errors import BenchError
from methods.training import TrainParams, build_student
from methods.training.compiled_layers import _layer_forward, compile_decoder_layers


def layers_of(student: torch.nn.Module) -> list[torch.nn.Module]:
    return list(student.get_base_model().get_decoder().layers)


def students(tiny_lm) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(eager, compiled) LoRA students with the same non-zero adapter."""
    built = []
    for compiled in (False, True):
        torch.manual_seed(0)
        student = build_student(tiny_lm, TrainParams(lora_dropout=0.0, compile_layers=compiled))
        with torch.no_grad():
            for name, param in student.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)  # a non-zero update, so that the adapter counts
        built.append(student)
    return built[0], built[1]


def logits_and_grads(student, ids, mask, prefix_len):
    """Logits of ``ids`` after a ``prefix_len``-token prefix run first into a cache (0 = no cache),
    and the adapter's gradients of a loss over them."""
    from transformers import DynamicCache

    student.zero_grad(set_to_none=True)
    if prefix_len:
        cache = DynamicCache(config=student.get_base_model().config)
        student(input_ids=ids[:, :prefix_len], attention_mask=mask[:, :prefix_len], cache=cache, use_cache=True)
        logits = student(input_ids=ids[:, prefix_len:], attention_mask=mask, cache=cache, use_cache=True).logits
    else:
        logits = student(input_ids=ids, attention_mask=mask).logits
    logits.float().logsumexp(-1).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("prefix_len", [0, 4])
def test_compiled_layers_compute_the_layers_function(tiny_lm, prefix_len):
    eager, compiled = students(tiny_lm)
    assert all(layer.forward.__func__ is _layer_forward for layer in layers_of(compiled))
    assert not any(isinstance(layer.__dict__.get("forward"), types.MethodType) for layer in layers_of(eager))
    ids = torch.randint(100, tiny_lm.model.config.vocab_size, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # a right-padded row
    out, grads = logits_and_grads(eager, ids, mask, prefix_len)
    compiled_out, compiled_grads = logits_and_grads(compiled, ids, mask, prefix_len)
    assert torch.allclose(compiled_out, out, atol=1e-4 * out.abs().max())
    with torch.no_grad():  # inference runs the layer's own forward: the same operations exactly
        assert torch.equal(
            compiled(input_ids=ids, attention_mask=mask).logits, eager(input_ids=ids, attention_mask=mask).logits
        )
    assert grads.keys() == compiled_grads.keys() and grads
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(compiled_grads[name], grad, atol=1e-4 * grad.abs().max()), name


def test_compile_layers_names_what_is_missing():
    with pytest.raises(BenchError, match="lacks .*self_attn.*compile_layers=false"):
        compile_decoder_layers([torch.nn.Linear(2, 2)])


def test_compile_layers_needs_a_cpp_compiler_on_cpu(tiny_lm, monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(BenchError, match="no C\\+\\+ compiler"):
        build_student(tiny_lm, TrainParams(compile_layers=True))


def test_compiled_layers_follow_a_switch_of_the_attention_kernel(tiny_lm, monkeypatch):
    """Long passes switch the student to sdpa (``sdpa_above_tokens``); the compiled halves must run
    the switched kernel, not the one they were first traced with. A stand-in "sdpa" that halves its
    output shows which kernel ran: the compiled student matches the eager one under the switch and
    differs from both without it."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from methods.training.student import attention_kernel, own_attention

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def halved(*args, **kwargs):
        out, weights = sdpa(*args, **kwargs)
        return out * 0.5, weights

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", halved)
    eager, compiled = students(tiny_lm)
    ids = torch.randint(100, tiny_lm.model.config.vocab_size, (2, 11))
    mask = torch.ones_like(ids)
    plain, _ = logits_and_grads(eager, ids, mask, 0)
    with attention_kernel(eager, "sdpa"):
        out, grads = logits_and_grads(eager, ids, mask, 0)
    with attention_kernel(compiled, "sdpa"):
        compiled_out, compiled_grads = logits_and_grads(compiled, ids, mask, 0)
    assert own_attention(compiled) == own_attention(eager) == "eager"  # restored
    assert not torch.allclose(out, plain, atol=1e-2 * plain.abs().max())  # the stand-in ran
    assert torch.allclose(compiled_out, out, atol=1e-4 * out.abs().max())
    for name, grad in grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-4 * grad.abs().max()), name


def test_compiled_layers_compile_nothing_new_for_a_pass_after_a_prefix(tiny_lm):
    """A pass after a prefix reuses the graphs of a pass without one (keys of one layout, sizes not
    assumed equal), and no graph holds anything that keeps the compiler from caching it on disk
    (an autocast region did), so a later run does not trace its training graphs again."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = students(tiny_lm)[1]
    ids = torch.randint(100, tiny_lm.model.config.vocab_size, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the short LoRA forward's path
        logits_and_grads(compiled, ids, mask, 0)
        graphs = counters["stats"]["unique_graphs"]
        logits_and_grads(compiled, ids, mask, 4)
        logits_and_grads(compiled, ids[:, :9], mask[:, :9], 0)
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs
    if torch._inductor.config.fx_graph_cache:
        assert counters["aot_autograd"]["autograd_cache_bypass"] == 0
        assert counters["aot_autograd"]["autograd_cache_miss"] + counters["aot_autograd"]["autograd_cache_hit"] > 0
