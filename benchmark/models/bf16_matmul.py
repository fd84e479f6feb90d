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
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
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
