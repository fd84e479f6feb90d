"""bf16 matrix products as fp32 products of bf16 inputs, for CPUs without bf16 instructions."""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from benchmark.errors import BenchError
from benchmark.models import bf16_matmul
from benchmark.models.bf16_matmul import FP32_PRODUCTS, NATIVE, Fp32Products, bf16_matmul_policy


def _bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).to(torch.bfloat16)


def _one_bf16_step(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to the order of fp32 sums: at most one bf16 rounding step apart, entry by entry."""
    assert a.dtype == b.dtype == torch.bfloat16 and a.shape == b.shape
    step = b.float().abs().clamp_min(1e-3) * 2**-7
    assert ((a.float() - b.float()).abs() <= step).all()


PRODUCTS = {
    "mm": lambda: (torch.mm, (_bf16(40, 64), _bf16(64, 24))),
    "addmm": lambda: (torch.addmm, (_bf16(24), _bf16(40, 64), _bf16(64, 24))),
    "bmm": lambda: (torch.bmm, (_bf16(3, 40, 64), _bf16(3, 64, 24))),
    "baddbmm": lambda: (torch.baddbmm, (_bf16(3, 40, 24), _bf16(3, 40, 64), _bf16(3, 64, 24))),
}


@pytest.mark.parametrize("name", sorted(PRODUCTS))
@pytest.mark.parametrize("out", [False, True], ids=["functional", "out="])
def test_products_match_the_native_kernel(name, out):
    torch.manual_seed(0)
    op, args = PRODUCTS[name]()
    native = op(*args)
    with Fp32Products():
        if out:
            result = torch.empty_like(native)
            returned = op(*args, out=result)
            assert returned is result
        else:
            result = op(*args)
    _one_bf16_step(result, native)
    # and exactly the fp32 product of the same bf16 inputs, rounded once
    assert torch.equal(result, op(*(a.float() for a in args)).to(torch.bfloat16))


def test_other_dtypes_and_ops_are_untouched():
    torch.manual_seed(0)
    a, b = torch.randn(30, 20), torch.randn(20, 10)
    x = _bf16(30, 20)
    with Fp32Products():
        product, total = a @ b, x.sum()
    assert torch.equal(product, a @ b) and product.dtype == torch.float32
    assert torch.equal(total, x.sum()) and total.dtype == torch.bfloat16


def test_autocast_forward_and_backward_match_the_native_kernel():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(2, 10, 64)

    def grads() -> tuple[torch.Tensor, torch.Tensor]:
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.float().square().sum().backward()
        return y, layer.weight.grad.clone()

    native_y, native_grad = grads()
    with Fp32Products():
        y, grad = grads()
    _one_bf16_step(y, native_y)
    torch.testing.assert_close(grad, native_grad, rtol=2e-2, atol=2e-2 * native_grad.abs().max().item())


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")), reason="torch.compile needs a C++ compiler")
def test_compiled_code_still_compiles_and_its_products_come_through():
    """Compiled layers (``compile_layers``) call the ``out=`` products; the mode must not make
    torch.compile fall back to eager code, nor miss those products."""
    from torch._inductor.compile_fx import compile_fx

    seen: list[str] = []

    class Recording(Fp32Products):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if bf16_matmul._bf16_on_cpu(args) and func.overloadpacket in bf16_matmul._PRODUCTS:
                seen.append(func._overloadname)
            return super().__torch_dispatch__(func, types, args, kwargs)

    graphs: list[int] = []

    def inductor(gm, inputs):
        graphs.append(1)
        return compile_fx(gm, inputs)

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 6, 32, requires_grad=True)
    torch._dynamo.reset()
    try:
        with Recording(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.compile(block, backend=inductor)(x)
            y.float().sum().backward()
    finally:
        torch._dynamo.reset()
    assert graphs  # compiled, not skipped because a dispatch mode is active
    assert "out" in seen  # and the compiled code's products were computed here
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _one_bf16_step(y, block(x))


@pytest.mark.parametrize(
    ("setting", "cpu_native", "expected"),
    [
        (None, True, NATIVE),
        (None, False, FP32_PRODUCTS),
        ("auto", False, FP32_PRODUCTS),
        ("native", False, NATIVE),
        ("fp32", True, FP32_PRODUCTS),
    ],
)
def test_the_policy_follows_the_setting_and_the_cpu(monkeypatch, setting, cpu_native, expected):
    if setting is None:
        monkeypatch.delenv(bf16_matmul.ENV, raising=False)
    else:
        monkeypatch.setenv(bf16_matmul.ENV, setting)
    monkeypatch.setattr(bf16_matmul, "cpu_has_bf16_matmul", lambda: cpu_native)
    depth = len(_get_current_dispatch_mode_stack())
    with bf16_matmul_policy() as kernel:
        assert kernel == expected == bf16_matmul.kernel_in_effect()
        with bf16_matmul_policy() as inner:  # re-entering adds no second mode
            assert inner == expected
            assert len(_get_current_dispatch_mode_stack()) == depth + (expected == FP32_PRODUCTS)
    assert bf16_matmul.kernel_in_effect() == NATIVE


def test_a_bad_setting_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv(bf16_matmul.ENV, "fast")
    with (
        pytest.raises(BenchError, match=r"BENCH_BF16_MATMUL='fast' is not one of auto, native, fp32"),
        bf16_matmul_policy(),
    ):
        pass


def test_a_result_records_the_kernel_in_effect(monkeypatch, smoke_batch):
    monkeypatch.setenv(bf16_matmul.ENV, "fp32")
    result, _ = smoke_batch("base_q", "precision=bf16-autocast")
    assert result["threads"]["bf16_matmul"] == FP32_PRODUCTS


def test_a_bad_setting_stops_bench_run_with_exit_code_2(monkeypatch, bench, tmp_path):
    monkeypatch.setenv(bf16_matmul.ENV, "fast")
    code, _, err = bench("run", "--method", "base_q", "--task", "batch", "--profile", "smoke", "--out", tmp_path)
    assert code == 2 and err.strip().splitlines() == [
        "bench: error: BENCH_BF16_MATMUL='fast' is not one of auto, native, fp32"
    ]
    assert not list(tmp_path.rglob("*.json"))


def _commands_seen_by(monkeypatch, handler) -> None:
    """Make ``bench probe`` (a command that runs a model) and ``bench plain`` (one that does not)
    call ``handler(name)`` in place of their work."""
    import types

    from benchmark.app import cli

    def register(subparsers) -> None:
        subparsers.add_parser("probe").set_defaults(handler=lambda args: handler("probe"), runs_a_model=True)
        subparsers.add_parser("plain").set_defaults(handler=lambda args: handler("plain"))

    probe = types.ModuleType("probe_command")
    probe.register = register  # type: ignore[attr-defined]
    modules = cli.command_modules()
    monkeypatch.setattr(cli, "command_modules", lambda: [*modules, probe])


def test_the_cli_enters_the_policy_for_commands_that_run_a_model_only(monkeypatch, bench):
    monkeypatch.setenv(bf16_matmul.ENV, "fp32")
    seen: dict[str, str] = {}

    def record(name: str) -> int:
        seen[name] = bf16_matmul.kernel_in_effect()
        return 0

    _commands_seen_by(monkeypatch, record)
    assert bench("probe")[0] == 0 and bench("plain")[0] == 0
    assert seen == {"probe": FP32_PRODUCTS, "plain": NATIVE}
    assert bf16_matmul.kernel_in_effect() == NATIVE  # left when the command ends


@pytest.mark.parametrize("command", ["generate", "lm-eval", "perf", "train"])
def test_the_commands_that_run_a_model_outside_a_run_say_so(command):
    """``bench run`` and sweep cells enter the policy in ``runner.compute``; these commands run a model
    without it, so they must ask ``cli.main`` for it."""
    import argparse

    from benchmark.app import cli

    subparsers = argparse.ArgumentParser().add_subparsers()
    for module in cli.command_modules():
        module.register(subparsers)
    assert subparsers.choices[command].get_default("runs_a_model") is True


# ---- answering: the same products from the function level -----------------------------------------


class _NoBf16ProductBelow(torch.utils._python_dispatch.TorchDispatchMode):
    """Sits below the modes under test and records any bf16 product that reached aten unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.leaked: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in bf16_matmul._PRODUCTS and bf16_matmul._bf16_on_cpu(args):
            self.leaked.append(str(func))
        return func(*args, **(kwargs or {}))


class _Block(torch.nn.Module):
    """A linear layer with bias on 2-d and 3-d inputs, one without, a matmul, a bmm and attention."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(32, 48)
        self.out = torch.nn.Linear(48, 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)  # 3-d input with bias
        flat = self.proj(x.reshape(-1, 32)).reshape(h.shape)  # 2-d input with bias
        q = k = v = (h + flat).reshape(2, 5, 4, 12).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 48)
        scores = torch.bmm(attended, attended.transpose(1, 2)) @ attended
        return self.out(scores + torch.matmul(h, self.out.weight.t()).sum())


def _answering(block: torch.nn.Module, x: torch.Tensor, autocast: bool, function_level: bool) -> tuple:
    below = _NoBf16ProductBelow()
    with below, Fp32Products(), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if function_level:
            with bf16_matmul.inference_products():
                assert isinstance(torch.overrides._get_current_function_mode(), bf16_matmul.InferenceProducts)
                y = block(x)
        else:
            y = block(x)
    return y, below.leaked


@pytest.mark.parametrize("autocast", [True, False], ids=["autocast", "bf16 weights"])
def test_answering_products_are_the_same_to_the_bit_and_none_escapes(autocast):
    torch.manual_seed(0)
    block = _Block() if autocast else _Block().to(torch.bfloat16)
    x = torch.randn(2, 5, 32) if autocast else _bf16(2, 5, 32)
    expected, leaked_before = _answering(block, x, autocast, function_level=False)
    result, leaked = _answering(block, x, autocast, function_level=True)
    assert not leaked_before and not leaked  # every bf16 product ran as an fp32 product
    assert result.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(result, expected)


def test_a_widened_weight_is_made_once_and_follows_the_weight():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(3, 16)
    with Fp32Products(), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with bf16_matmul.inference_products():
            mode = torch.overrides._get_current_function_mode()
            first = [layer(x) for _ in range(3)][-1]
            assert len(mode.widened) == 1  # one copy for three calls
            layer.weight.mul_(2)  # an in-place change (a merged adapter, say) must be seen
            second = layer(x)
        expected = layer(x)  # Fp32Products alone, after the change
    assert torch.equal(second, expected) and not torch.equal(first, second)


def test_inference_products_leave_training_and_the_native_kernel_alone():
    with Fp32Products():
        with bf16_matmul.inference_products():  # autograd on: a training pass keeps Fp32Products
            assert torch.overrides._get_current_function_mode() is None
            assert bf16_matmul.kernel_in_effect() == FP32_PRODUCTS
        with torch.no_grad(), bf16_matmul.inference_products():
            assert isinstance(torch.overrides._get_current_function_mode(), bf16_matmul.InferenceProducts)
        assert bf16_matmul.kernel_in_effect() == FP32_PRODUCTS  # back when it exits
    with torch.no_grad(), bf16_matmul.inference_products():  # no Fp32Products: nothing to replace
        assert torch.overrides._get_current_function_mode() is None


def test_generated_answers_are_those_of_fp32_products(monkeypatch, tiny_lm):
    from dataclasses import replace

    from benchmark.models import lm as lm_module

    lm = replace(tiny_lm, precision="bf16-autocast")
    prompts = ["Question: Where is Douprur? Answer:", "The capital of", "Question: Who?"]
    below = _NoBf16ProductBelow()
    with below, Fp32Products():
        fast = lm.generate(prompts, max_new_tokens=6, batch_size=2)
        monkeypatch.setattr(lm_module, "inference_products", contextlib.nullcontext)
        plain = lm.generate(prompts, max_new_tokens=6, batch_size=2)
    assert fast == plain and any(fast)
    assert not below.leaked


@pytest.mark.parametrize("method", ["base_q", "cartridge", "infllm", "memoryllm-mini"])
def test_methods_that_decode_themselves_answer_the_same(monkeypatch, bench, tmp_path, method):
    """Cartridges, InfLLM and MemoryLLM-mini run their own decoding loops under ``LM.answering``."""
    import json

    from benchmark.models import lm as lm_module

    monkeypatch.setenv(bf16_matmul.ENV, "fp32")

    def predictions(out) -> tuple[list, list[str]]:
        below = _NoBf16ProductBelow()
        with below:
            code, _, err = bench(
                "run", "--method", method, "--task", "batch", "--profile", "smoke", "--set", "num_contexts=2",
                "--set", "num_targets=3", "--set", "precision=bf16-autocast", "--out", out,
            )  # fmt: skip
        assert code == 0, err
        result = json.loads(next(out.rglob(f"{method}__*.json")).read_text())
        return [e["predictions"] for e in result["episodes"]], below.leaked

    fast, leaked = predictions(tmp_path / "function level")
    monkeypatch.setattr(lm_module, "inference_products", contextlib.nullcontext)
    plain, _ = predictions(tmp_path / "dispatch level")
    assert fast == plain and any(p for episode in fast for p in episode)
    assert not leaked
