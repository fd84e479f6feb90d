"""bf16 matrix products on CPUs that have no bf16 matrix instructions.

On a CPU with AVX512-BF16 or AMX, torch multiplies bf16 matrices with oneDNN at several hundred
GFLOP/s. Without them (AVX2-only CPUs: many laptops, older servers) torch falls back to a generic
kernel: measured on a 2-core AVX2 AMD EPYC, a 800 x 576 x 1536 bf16 product ran at 17 GFLOP/s
against 96 GFLOP/s in fp32, and `bench run --method base_q --task batch` took 106.6 s instead of 39.1 s.

The product of two bf16 numbers is exact in fp32, and a native bf16 kernel sums those products in
fp32 and rounds the result to bf16 once. So on such CPUs the harness computes a bf16 product as an
fp32 product of the same bf16 inputs, rounded to bf16: the values a native kernel gives, up to the
order of the fp32 sums (which differs between native kernels too). Measured on that CPU: the
outputs equal torch's own kernel's in 99.99% of entries (the rest one bf16 step apart), and the
100 answers of that run agree with those of a CPU with bf16 instructions in 89 cases against 86
for torch's kernel (README, "CPUs without bf16 arithmetic").

``BENCH_BF16_MATMUL`` chooses: ``auto`` (the default: fp32 products only where the CPU lacks bf16
matrix instructions), ``native`` (torch's kernel always) or ``fp32`` (fp32 products on any CPU).
Each result records the choice in effect under ``threads.bf16_matmul``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack, _pop_mode_temporarily
from tqdm.auto import tqdm

from benchmark.errors import BenchError

ENV = "BENCH_BF16_MATMUL"
CHOICES = ("auto", "native", "fp32")
NATIVE, FP32_PRODUCTS = "native", "fp32 products"

_aten = torch.ops.aten
# The matrix products a Llama forward and backward pass reaches below autograd, eager (functional
# overloads) or compiled (inductor calls the ``out=`` overloads of the same products).
_PRODUCTS = {
    op.overloadpacket: op for op in (_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default)
}
_OUT_OVERLOADS = {_aten.mm.out, _aten.addmm.out, _aten.bmm.out, _aten.baddbmm.out}
# The Python-level functions that reach those products (directly or inside, as attention's math
# kernel does): ``InferenceProducts`` hands each call of one to ``Fp32Products``.
_PRODUCT_FUNCTIONS = {
    F.linear,
    F.bilinear,
    F.scaled_dot_product_attention,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.addbmm,
    torch.einsum,
    torch.tensordot,
    torch.chain_matmul,
    torch.linalg.multi_dot,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.__rmatmul__,
    torch.Tensor.mm,
    torch.Tensor.bmm,
    torch.Tensor.addmm,
    torch.Tensor.baddbmm,
    torch.Tensor.addbmm,
}


def cpu_has_bf16_matmul() -> bool:
    """Whether torch's CPU kernels multiply bf16 matrices natively here (oneDNN on AVX512-BF16/AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN: only the generic kernel
        return False


def chosen() -> str:
    """``BENCH_BF16_MATMUL`` as set (``auto`` when unset); a bad value stops the run with one line."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise BenchError(f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(CHOICES)}")
    return value


def kernel_in_effect() -> str:
    """How this process multiplies bf16 matrices on the CPU: ``native`` or ``fp32 products``."""
    if any(isinstance(mode, Fp32Products) for mode in _get_current_dispatch_mode_stack()):
        return FP32_PRODUCTS
    return NATIVE


@contextlib.contextmanager
def bf16_matmul_policy() -> Iterator[str]:
    """Compute bf16 CPU matrix products as fp32 products inside this block where ``BENCH_BF16_MATMUL``
    asks for it (``auto``: only on a CPU without bf16 matrix instructions); yields the kernel in effect.
    Re-entering inside such a block changes nothing."""
    choice = chosen()
    wanted = choice == "fp32" or (choice == "auto" and not cpu_has_bf16_matmul())
    if not wanted or kernel_in_effect() == FP32_PRODUCTS:
        yield kernel_in_effect()
        return
    with Fp32Products():  # type: ignore[no-untyped-call]  # torch leaves the mode's __init__ untyped
        yield FP32_PRODUCTS


class Fp32Products(TorchDispatchMode):  # type: ignore[no-untyped-call]  # its __init_subclass__, likewise
    """Turns every bf16 CPU matrix product into an fp32 product of the same bf16 inputs, rounded to
    bf16 once, as a native kernel rounds its fp32 sums. Everything else runs untouched.

    It sits below autograd and autocast, so forward and backward products are both covered, and
    ``ignore_compile_internals`` lets compiled layers compile as usual (their products come here as
    ``out=`` calls)."""

    _told = False  # the one-line notice, once per process

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if (func.overloadpacket in _PRODUCTS) and _bf16_on_cpu(args):
            self._tell()
            widened = [a.float() if _is_bf16(a) else a for a in args]
            if func in _OUT_OVERLOADS:
                out = kwargs["out"]
                rest = {k: v for k, v in kwargs.items() if k != "out"}
                return out.copy_(_PRODUCTS[func.overloadpacket](*widened, **rest))
            if func is _PRODUCTS[func.overloadpacket]:
                return func(*widened, **kwargs).to(torch.bfloat16)
        return func(*args, **kwargs)

    @classmethod
    def _tell(cls) -> None:
        if not cls._told:
            cls._told = True
            tqdm.write(  # above any progress bar
                "bench: note: this CPU has no bf16 matrix instructions (AVX512-BF16/AMX), so bf16 matrix "
                "products run as fp32 products of the same bf16 inputs, several times faster than torch's "
                f"generic bf16 kernel ({ENV}=native for that kernel)",
                file=sys.stderr,
            )


def _is_bf16(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16


def _bf16_on_cpu(args: Any) -> bool:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return any(t.dtype == torch.bfloat16 for t in tensors) and all(t.device.type == "cpu" for t in tensors)


class InferenceProducts(TorchFunctionMode):
    """``Fp32Products``' values for passes without autograd (answering), in 0.6-0.8x the time.

    Under ``Fp32Products`` every aten operator of a pass goes through Python (a decoding step of
    SmolLM2-135M is thousands of them), and every projection widens its weight again: autocast casts
    the fp32 weight to bf16 and the mode widens it back, 135M numbers each way per generated token.
    This mode works one level up. ``F.linear`` computes its product from a copy of the weight
    widened once per use of the mode (the weight rounded to bf16, in fp32: what autocast and
    ``Fp32Products`` hand the kernel), with the same GEMM on the same values, so the result is the
    same to the bit; a call of any other function in ``_PRODUCT_FUNCTIONS`` runs under
    ``Fp32Products``; every other operator runs without Python in between. The widened copies
    (4 bytes a weight, for the parameters of the model used) are dropped when the mode exits.
    """

    def __init__(self, products: Fp32Products) -> None:
        super().__init__()
        self.products = products
        self.widened: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and not torch.is_grad_enabled():
            product = self._linear(*args, **kwargs)
            if product is not None:
                return product
        if func in _PRODUCT_FUNCTIONS:
            with self.products:
                return func(*args, **kwargs)
        return func(*args, **kwargs)

    def _linear(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``F.linear`` as ``Fp32Products`` computes it under bf16 autocast or on bf16 tensors, in the
        cases where aten's linear is one ``mm`` or ``addmm`` of the input's rows; None otherwise."""
        tensors = [t for t in (input, weight, bias) if t is not None]
        if any(t.device.type != "cpu" for t in tensors) or input.dim() < 2:
            return None
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        if not autocast and any(t.dtype != torch.bfloat16 for t in tensors):
            return None  # not a bf16 product (or a dtype mismatch, which aten reports)
        if bias is not None and not (input.dim() == 2 or (input.dim() == 3 and input.is_contiguous())):
            return None  # aten adds such a bias after the product: another rounding
        with torch.autocast("cpu", enabled=False):
            rows = input.to(torch.bfloat16).float().reshape(-1, input.shape[-1])
            right = self._widen(weight).t()
            shift = None if bias is None else bias.to(torch.bfloat16).float()
            out = torch.mm(rows, right) if shift is None else torch.addmm(shift, rows, right)
            return out.to(torch.bfloat16).reshape(*input.shape[:-1], weight.shape[0])

    def _widen(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight rounded to bf16, in fp32; kept for parameters until they change."""
        kept = self.widened.get(id(weight))
        if kept is not None and kept[0] is weight and kept[1] == weight._version:
            return kept[2]
        widened = weight.detach().to(torch.bfloat16).float()
        if isinstance(weight, torch.nn.Parameter):  # a weight made per call is not seen again
            self.widened[id(weight)] = (weight, weight._version, widened)
        return widened


@contextlib.contextmanager
def inference_products() -> Iterator[None]:
    """Inside: ``InferenceProducts`` in place of ``Fp32Products``, where that is the innermost
    dispatch mode and autograd is off (a pass that answers); elsewhere nothing changes."""
    modes = _get_current_dispatch_mode_stack()
    if torch.is_grad_enabled() or not modes or not isinstance(modes[-1], Fp32Products):
        yield
        return
    with _pop_mode_temporarily() as products, InferenceProducts(products):
        yield
