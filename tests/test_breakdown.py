"""``bench perf --breakdown``: the step profile by kind, on the tiny model."""

from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import pytest

from benchmark.app.breakdown import (
    ATTENTION,
    AUTOGRAD,
    COMPILED_CALLS,
    ELEMENTWISE,
    HEAD_LOSS,
    KINDS,
    MATMUL_BACKBONE,
    MATMUL_HEAD,
    OPTIMIZER,
    OTHER,
    OVERHEAD,
    VIEWS,
    classify,
    summarise,
)

V = 1000  # a vocabulary size for the synthetic cases


@pytest.fixture(scope="module")
def breakdown_run(tmp_path_factory):
    """``bench perf --breakdown`` once on the tiny model: (exit code, printed text, the --json figures)."""
    from benchmark.app.cli import main

    path = tmp_path_factory.mktemp("perf") / "perf.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "perf",
                "--model",
                "tiny-random-llama",
                "--profile",
                "smoke",
                "--device",
                "cpu",  # a CPU profile, also where torch sees a GPU
                "--contexts",
                "2",
                "--rounds",
                "0",
                "--breakdown",
                "--breakdown-skip",
                "1",
                "--breakdown-steps",
                "2",
                "--json",
                str(path),
            ]
        )
    return code, out.getvalue(), json.loads(path.read_text()) if path.exists() else {}


def test_unknown_ops_land_in_other_and_shapes_tell_the_head_from_the_backbone():
    assert classify("aten::frobnicate", [[4, 8]], V) == OTHER
    assert classify("my_namespace::custom_kernel", [], V) == OTHER
    assert classify("aten::mm", [[12, 64], [64, 128]], V) == MATMUL_BACKBONE
    assert classify("aten::mm", [[12, 64], [64, V]], V) == MATMUL_HEAD  # forward: hidden @ W.T
    assert classify("aten::mm", [[12, V], [V, 64]], V) == MATMUL_HEAD  # backward: grad @ W
    assert classify("aten::linear", [[2, 6, 64], [V, 64], []], V) == MATMUL_HEAD
    assert classify("aten::matmul", [[2, 4, 6, 16], [2, 4, 16, 6]], V) == ATTENTION  # eager scores
    assert classify("aten::bmm", [[8, 6, 16], [8, 16, 6]], V) == ATTENTION
    assert classify("aten::_softmax", [[2, 4, 6, 6], [], []], V) == ATTENTION
    assert classify("aten::_log_softmax", [[12, V], [], []], V) == HEAD_LOSS
    assert classify("aten::div", [[12, V], []], V) == HEAD_LOSS  # elementwise on the logits
    assert classify("aten::div", [[12, 64], []], V) == ELEMENTWISE
    assert classify("aten::mul_", [[12, 64], []], V) == ELEMENTWISE  # in-place variants too
    assert classify("aten::transpose", [[12, 64], [], []], V) == VIEWS
    assert classify("autograd::engine::evaluate_function: MmBackward0", [], V) == AUTOGRAD
    assert classify("MmBackward0", [], V) == AUTOGRAD
    assert classify("aten::mul_", [[64]], V, in_optimizer=True) == OPTIMIZER
    assert classify("aten::_foreach_mul_", [], V) == OPTIMIZER  # gradient clipping outside the step
    assert classify("CompiledFunctionBackward", [], V) == COMPILED_CALLS  # not the autograd engine's
    assert classify("TorchDynamo Cache Lookup", [], V) == COMPILED_CALLS


def _event(name, us, shapes=(), parent=None, annotation=False, thread=1):
    return SimpleNamespace(
        name=name,
        self_cpu_time_total=us,
        input_shapes=list(shapes),
        cpu_parent=parent,
        thread=thread,
        is_user_annotation=annotation,
        flops=0,
    )


def test_summary_adds_up_to_the_wall_time_with_the_remainder_as_overhead():
    step = _event("Optimizer.step#AdamW.step", 50, annotation=True)
    linear = _event("aten::linear", 10, [[2, 64], [V, 64]])
    events = [
        linear,
        _event("aten::mm", 400, [[2, 64], [64, V]], parent=linear),
        _event("aten::mm", 300, [[2, 64], [64, 64]]),
        _event("aten::frobnicate", 70),
        step,
        _event("aten::_foreach_add_", 90, parent=step),
        _event("aten::lerp_", 30, parent=step),
        _event("aten::mul", 5_000, thread=2),  # another thread: not part of the step
    ]
    s = summarise(events, wall_s=0.002, steps=2, vocab=V)
    kinds = s["kinds"]
    assert list(kinds) == list(KINDS)
    assert kinds[OTHER]["s_per_step"] == pytest.approx(70e-6 / 2)
    assert kinds[MATMUL_HEAD]["s_per_step"] == pytest.approx(410e-6 / 2)
    assert kinds[MATMUL_HEAD]["calls_per_step"] == 1  # linear and its mm: two calls in two steps
    assert kinds[MATMUL_BACKBONE]["s_per_step"] == pytest.approx(300e-6 / 2)
    assert kinds[OPTIMIZER]["s_per_step"] == pytest.approx(120e-6 / 2)
    # The annotation's own 50 µs is Python time: overhead, with the rest of the wall time.
    assert kinds[OVERHEAD]["s_per_step"] == pytest.approx((2000e-6 - 900e-6) / 2)
    assert sum(k["s_per_step"] for k in kinds.values()) == pytest.approx(s["wall_s_per_step"])
    assert sum(k["share"] for k in kinds.values()) == pytest.approx(1.0)
    assert s["op_calls_per_step"] == 3 and s["top_level_calls_per_step"] == 2.5  # the nested mm is not top level
    assert s["other_threads_s_per_step"] == pytest.approx(5_000e-6 / 2)


def test_breakdown_kinds_and_overhead_add_up_to_the_measured_step(breakdown_run):
    code, _, figures = breakdown_run
    assert code == 0
    b = figures["breakdown"]
    kinds = b["kinds"]
    assert b["steps"] == 2 and b["skip"] == 1
    assert sum(k["s_per_step"] for k in kinds.values()) == pytest.approx(b["wall_s_per_step"], rel=1e-9)
    # The ops ran inside the timed window: their self times cannot exceed it (beyond clock rounding).
    assert b["op_s_per_step"] <= b["wall_s_per_step"] * 1.01
    assert kinds[OVERHEAD]["share"] >= -0.01
    assert sum(k["calls_per_step"] for k in kinds.values()) == pytest.approx(b["op_calls_per_step"])
    assert b["op_calls_per_step"] > 1000  # a step of even the tiny model is thousands of small ops
    for kind in (MATMUL_BACKBONE, MATMUL_HEAD, ATTENTION, HEAD_LOSS, ELEMENTWISE, OPTIMIZER, AUTOGRAD):
        assert kinds[kind]["calls_per_step"] > 0, kind
    assert b["unprofiled_s_per_step"] > 0 and b["tokens_per_step"] > 0
    assert b["vocab"] == 49152  # the tiny model keeps SmolLM2's tokenizer


def test_perf_breakdown_prints_the_table(breakdown_run):
    code, text, figures = breakdown_run
    assert code == 0
    assert "step profile: training steps 2-3" in text
    assert "operator calls per step:" in text
    for kind in (MATMUL_BACKBONE, MATMUL_HEAD, ATTENTION, HEAD_LOSS, OPTIMIZER, OVERHEAD, "total (wall)"):
        assert kind in text, kind
    overhead = figures["breakdown"]["kinds"][OVERHEAD]["s_per_step"]
    assert f"{overhead:.4f}" in text
    assert "official-style" not in text  # --rounds 0: the profile alone


def test_the_breakdown_refuses_a_gpu_run_whose_kernels_it_cannot_see(monkeypatch, tiny_lm):
    """On CUDA the profiler's CPU operators are launches, not the work: a breakdown of them would mislead."""
    import dataclasses

    import torch

    from benchmark.app import perf
    from benchmark.errors import BenchError

    on_gpu = dataclasses.replace(tiny_lm, device=torch.device("cuda"))
    monkeypatch.setattr(perf, "load_run_lm", lambda *args, **kwargs: on_gpu)
    with pytest.raises(BenchError, match=r"--breakdown profiles CPU operators only; run it with --device cpu"):
        perf.run_perf("tiny-random-llama", "smoke", num_contexts=1, rounds=0, breakdown=(1, 1))
