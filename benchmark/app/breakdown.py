"""Step profile of SELF-PARAM training (``bench perf --breakdown``): where a step's time goes.

The harness's own ``inject`` runs as in ``bench perf``; the training loop is watched from outside
(``Trainer.step`` and the teacher-target look-up are wrapped for the duration, nothing in them
changes). A "step" is one cycle of the loop: the batch's teacher targets (computed on a cache miss)
and its ``Trainer.step`` (forward, backward, clipping, optimizer). The window is ``steps`` steps
after ``skip`` warm-up steps and is run twice with the same seed: once plainly, for the step's wall
time, then under ``torch.profiler`` (CPU activities, shapes recorded), for the split. Each run stops
at the end of the window.

Each operator's *self* time (its time minus that of the operators it calls) goes to one kind, by
the explicit pattern table ``OP_KINDS`` (first match wins; unmatched ops go to ``other``) and two
shape rules: a matmul or an elementwise op with the vocabulary size as one of its input dimensions
belongs to the LM head (the head's weight is (V, H), its logits (rows, V)), and everything inside
the optimizer's ``Optimizer.step``/``zero_grad`` profiler ranges is ``optimizer``. The remainder,
wall time minus the sum of the ops' self times, is Python / dispatch overhead: an estimate, since
it also holds the profiler's own per-op cost and the C++ time between operators, and, with
compiled layers (``compile_layers``), the compiler's fused loops, which are no operator events.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from benchmark.errors import BenchError
from methods.selfparam import InjectionPlan
from methods.training import Trainer

MATMUL_BACKBONE = "matmul: backbone"
MATMUL_HEAD = "matmul: LM head"
ATTENTION = "attention"
HEAD_LOSS = "LM head + loss"
ELEMENTWISE = "elementwise & copies"
VIEWS = "views & shapes"
INDEXING = "indexing & embedding"
OPTIMIZER = "optimizer"
AUTOGRAD = "autograd engine"
COMPILED_CALLS = "compiled regions: entry"
OTHER = "other"
OVERHEAD = "Python / dispatch overhead"
KINDS = (
    MATMUL_BACKBONE,
    MATMUL_HEAD,
    ATTENTION,
    HEAD_LOSS,
    ELEMENTWISE,
    VIEWS,
    INDEXING,
    OPTIMIZER,
    AUTOGRAD,
    COMPILED_CALLS,
    OTHER,
    OVERHEAD,
)

_MATMUL = "matmul"  # resolved by shape into backbone, LM head or attention


def _aten(*names: str) -> str:
    """``aten::name`` or its in-place ``aten::name_`` for each name."""
    return r"aten::(?:" + "|".join(names) + r")_?"


# (kind, regular expression matched against the whole op name); the first match wins. Extend here.
OP_KINDS: tuple[tuple[str, str], ...] = (
    # torch.compile's entry and guard checks (compile_layers); the fused loops it runs are no
    # operator events, so their time falls in the overhead estimate
    (
        COMPILED_CALLS,
        r"CompiledFunction(?:Backward)?|TorchDynamo Cache Lookup|Pregraph bytecode|Torch-Compiled Region.*",
    ),
    # the autograd engine's own nodes (their self time is engine work; the ops they call are listed)
    (AUTOGRAD, r"autograd::.*|torch::autograd::.*|\w+Backward\d+"),
    (OPTIMIZER, r"aten::_foreach_\w+|aten::_fused_adamw_?|aten::_fused_adam_?"),
    (
        ATTENTION,
        _aten(
            "softmax",
            "_softmax",
            "_softmax_backward_data",
            "scaled_dot_product_attention",
            r"_scaled_dot_product_\w+",
            r"_flash_attention\w*",
            r"_efficient_attention\w*",
            "bmm",
            "baddbmm",
        ),
    ),
    (_MATMUL, _aten("mm", "addmm", "matmul", "linear", "_addmm_activation", "addmv", "mv", "dot")),
    (
        HEAD_LOSS,
        _aten(
            "log_softmax",
            "_log_softmax",
            "_log_softmax_backward_data",
            "kl_div",
            r"nll_loss\w*",
            "cross_entropy_loss",
            "logsumexp",
            "gather",
            "gather_backward",
            "topk",
            "scatter",
            "scatter_add",
        ),
    ),
    (
        INDEXING,
        _aten(
            "embedding",
            "embedding_backward",
            "embedding_dense_backward",
            "index",
            "index_select",
            "_index_put_impl",
            "index_put",
            "index_add",
            "masked_select",
            "nonzero",
            "repeat_interleave",
        ),
    ),
    (
        VIEWS,
        _aten(
            "view",
            "_unsafe_view",
            "reshape",
            "_reshape_alias",
            "t",
            "transpose",
            "permute",
            "expand",
            "expand_as",
            "slice",
            "select",
            "unsqueeze",
            "squeeze",
            "as_strided",
            "split",
            "split_with_sizes",
            "narrow",
            "chunk",
            "unbind",
            "detach",
            "alias",
            "flatten",
            "unflatten",
            "view_as",
            "numpy_T",
            "lift_fresh",
            "contiguous",
            "movedim",
            "result_type",
            "resolve_conj",
            "resolve_neg",
            "_has_compatible_shallow_copy_type",
        )
        + r"|detach_?",
    ),
    (
        ELEMENTWISE,
        _aten(
            "mul",
            "add",
            "sub",
            "rsub",
            "div",
            "neg",
            "pow",
            "rsqrt",
            "sqrt",
            "exp",
            "log",
            "log1p",
            "silu",
            "silu_backward",
            "sigmoid",
            "tanh",
            r"gelu\w*",
            "relu",
            "threshold_backward",
            "mean",
            "sum",
            "copy",
            "to",
            "_to_copy",
            "clone",
            "fill",
            "zero",
            "zeros",
            "zeros_like",
            "ones",
            "ones_like",
            "new_zeros",
            "new_ones",
            "new_empty",
            "new_empty_strided",
            "full",
            "full_like",
            "empty",
            "empty_like",
            "empty_strided",
            "scalar_tensor",
            "where",
            "masked_fill",
            "clamp",
            "clamp_min",
            "clamp_max",
            "maximum",
            "minimum",
            "cat",
            "stack",
            "dropout",
            "native_dropout",
            "native_dropout_backward",
            "bernoulli",
            "uniform",
            "addcmul",
            "addcdiv",
            "lerp",
            "cos",
            "sin",
            "reciprocal",
            "abs",
            "sign",
            "eq",
            "ne",
            "lt",
            "le",
            "gt",
            "ge",
            "__and__",
            "__or__",
            r"bitwise_\w+",
            r"logical_\w+",
            "arange",
            "resize",
            "set",
            "slice_backward",
            "select_backward",
        ),
    ),
)
_COMPILED = tuple((kind, re.compile(pattern)) for kind, pattern in OP_KINDS)
_OPTIMIZER_RANGES = ("Optimizer.step#", "Optimizer.zero_grad#")


def _dims(shapes: Iterable[Any] | None) -> list[list[int]]:
    """The input tensors' shapes (a tensor list's entry is empty or a list of shapes)."""
    out = []
    for shape in shapes or ():
        if shape and all(isinstance(d, int) for d in shape):
            out.append(list(shape))
        elif shape:
            out.extend(list(s) for s in shape if isinstance(s, (list, tuple)))
    return out


def classify(name: str, input_shapes: Iterable[Any] | None, vocab: int, in_optimizer: bool = False) -> str:
    """The kind of one op call (see the module docstring)."""
    if in_optimizer:
        return OPTIMIZER
    kind = next((kind for kind, pattern in _COMPILED if pattern.fullmatch(name)), OTHER)
    dims = _dims(input_shapes)
    has_vocab = vocab > 0 and any(vocab in shape for shape in dims)
    if kind == _MATMUL:
        if has_vocab:
            return MATMUL_HEAD
        if name == "aten::matmul" and len(dims) >= 2 and len(dims[0]) >= 3 and len(dims[1]) >= 3:
            return ATTENTION  # batched (b, h, t, d) @ (b, h, d, t): the eager attention's scores / values
        return MATMUL_BACKBONE
    if has_vocab and kind in (ELEMENTWISE, VIEWS):
        return HEAD_LOSS  # on (rows, V) logits: scaling, casts, exp, ...
    return kind


def _is_annotation(event: Any) -> bool:
    """A ``record_function`` range (not an operator): its self time is Python time, i.e. overhead."""
    return bool(getattr(event, "is_user_annotation", False))


def _in_optimizer(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(_OPTIMIZER_RANGES):
            return True
        parent = parent.cpu_parent
    return False


def _top_level(event: Any) -> bool:
    """Called from Python or the autograd engine's loop: no operator above it."""
    parent = event.cpu_parent
    while parent is not None:
        if not _is_annotation(parent):
            return False
        parent = parent.cpu_parent
    return True


def summarise(events: Iterable[Any], wall_s: float, steps: int, vocab: int, top: int = 12) -> dict[str, Any]:
    """Per-step seconds, share of the wall time, op calls (and GFLOP/s where known) by kind.

    ``events`` are profiler ``FunctionEvent``s (or anything with ``name``, ``self_cpu_time_total``
    in µs, ``input_shapes``, ``cpu_parent``, ``thread``, ``is_user_annotation`` and ``flops``). Only
    the thread that ran the training counts (the one that ran the optimizer, else the one with the
    most op calls); the kinds plus the overhead add up to ``wall_s``.
    """
    events = list(events)
    ops = [e for e in events if not _is_annotation(e)]
    per_thread: dict[int, float] = defaultdict(float)
    per_thread_calls: dict[int, int] = defaultdict(int)
    for e in ops:
        per_thread[e.thread] += e.self_cpu_time_total
        per_thread_calls[e.thread] += 1
    optimizer_threads = [e.thread for e in events if _is_annotation(e) and e.name.startswith(_OPTIMIZER_RANGES)]
    if optimizer_threads:
        main = optimizer_threads[0]
    else:
        main = max(per_thread_calls, key=per_thread_calls.__getitem__) if per_thread_calls else None
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    flops: dict[str, float] = defaultdict(float)
    by_op: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    top_level = 0
    for e in ops:
        if e.thread != main:
            continue
        kind = classify(e.name, e.input_shapes, vocab, _in_optimizer(e))
        s = e.self_cpu_time_total / 1e6
        seconds[kind] += s
        calls[kind] += 1
        flops[kind] += getattr(e, "flops", 0) or 0
        by_op[e.name, kind][0] += s
        by_op[e.name, kind][1] += 1
        top_level += _top_level(e)
    op_s = sum(seconds.values())
    seconds[OVERHEAD] = wall_s - op_s
    n = max(1, steps)
    kinds = {}
    for kind in KINDS:
        s = seconds.get(kind, 0.0)
        row: dict[str, Any] = {
            "s_per_step": s / n,
            "share": s / wall_s if wall_s else 0.0,
            "calls_per_step": calls.get(kind, 0) / n,
        }
        if kind in (MATMUL_BACKBONE, MATMUL_HEAD, ATTENTION) and flops.get(kind) and s > 0:
            row["gflop_s"] = flops[kind] / s / 1e9
        kinds[kind] = row
    ranked = sorted(by_op.items(), key=lambda item: -item[1][0])[:top]
    return {
        "steps": steps,
        "wall_s_per_step": wall_s / n,
        "op_s_per_step": op_s / n,
        "op_calls_per_step": sum(calls.values()) / n,
        "top_level_calls_per_step": top_level / n,
        "other_threads_s_per_step": sum(v for t, v in per_thread.items() if t != main) / 1e6 / n,
        "kinds": kinds,
        "top_ops": [
            {"op": name, "kind": kind, "s_per_step": s / n, "calls_per_step": c / n} for (name, kind), (s, c) in ranked
        ],
    }


# ---- running the window -----------------------------------------------------------------------


class _WindowDone(Exception):
    """Raised at the end of the window to stop the run there."""


@contextlib.contextmanager
def _patched(owner: type, name: str, make: Callable[[Any], Callable[..., Any]]) -> Iterator[None]:
    original = owner.__dict__[name]
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _run_window(
    make_method: Callable[[], Any],
    contexts: list[Any],
    skip: int,
    steps: int,
    profiler: torch.profiler.profile | None = None,
) -> dict[str, Any]:
    """Run one inject to the end of steps ``skip+1 .. skip+steps``; times (and profiles) that window.

    When the run has fewer steps, the window ends with its last step (``steps`` is returned).
    """
    state: dict[str, Any] = {"done": 0, "start": None, "ends": [], "tokens": [], "teacher_s": 0.0}

    def after_step(trainer: Trainer) -> None:
        state["done"] += 1
        if state["done"] == skip:
            if profiler is not None:
                profiler.start()
            state["tokens0"] = trainer.report.student_tokens
            state["start"] = time.perf_counter()
        elif state["done"] > skip:
            state["ends"].append(time.perf_counter())
            state["tokens"].append(trainer.report.student_tokens - state["tokens0"])
            if state["done"] == skip + steps:
                if profiler is not None:
                    profiler.stop()
                raise _WindowDone

    def wrap_step(original: Callable[..., Any]) -> Callable[..., Any]:
        def step(self: Trainer, batch: Any, targets: Any = None) -> Any:
            value = original(self, batch, targets)
            after_step(self)
            return value

        return step

    def wrap_teacher(original: Callable[..., Any]) -> Callable[..., Any]:
        def teacher_targets(self: Any, *args: Any, **kwargs: Any) -> Any:
            tick = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                if state["start"] is not None:
                    state["teacher_s"] += time.perf_counter() - tick

        return teacher_targets

    with _patched(Trainer, "step", wrap_step), _patched(InjectionPlan, "teacher_targets", wrap_teacher):
        try:
            make_method().inject(contexts)
        except _WindowDone:
            pass
        finally:
            if profiler is not None and state["start"] is not None and len(state["ends"]) < steps:
                profiler.stop()  # the run ended inside the window
    if not state["ends"]:
        raise BenchError(f"the run has {state['done']} training steps; --breakdown-skip {skip} leaves none to profile")
    return {
        "steps": len(state["ends"]),
        "wall_s": state["ends"][-1] - state["start"],
        "tokens": state["tokens"][-1],
        "teacher_s": state["teacher_s"],
    }


def profile_steps(
    lm: Any, make_method: Callable[[], Any], contexts: list[Any], skip: int = 2, steps: int = 4, top: int = 12
) -> dict[str, Any]:
    """The step profile: the window timed plainly (best of two runs), then under the profiler."""
    if skip < 1 or steps < 1:
        raise BenchError("--breakdown-skip and --breakdown-steps must be at least 1")
    plain = _run_window(make_method, contexts, skip, steps)
    steps = plain["steps"]  # the same seed gives the same batches: every window ends there too
    again = _run_window(make_method, contexts, skip, steps)
    plain = min(plain, again, key=lambda r: r["wall_s"])  # the machine may be shared
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True, with_flops=True
    )
    profiled = _run_window(make_method, contexts, skip, steps, profiler)
    head = lm.model.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else int(getattr(lm.model.config, "vocab_size", 0))
    figures = summarise(
        profiler.events(),  # type: ignore[no-untyped-call]  # torch leaves events() unannotated
        profiled["wall_s"],
        profiled["steps"],
        vocab,
        top,
    )
    n = profiled["steps"]
    figures.update(
        {
            "skip": skip,
            "vocab": vocab,
            "unprofiled_s_per_step": plain["wall_s"] / plain["steps"],
            "unprofiled_tok_s": plain["tokens"] / plain["wall_s"] if plain["wall_s"] else 0.0,
            "tokens_per_step": plain["tokens"] / plain["steps"],
            "teacher_s_per_step": profiled["teacher_s"] / n,
        }
    )
    return figures


def report(b: dict[str, Any]) -> str:
    """The table printed by ``bench perf --breakdown``."""
    first, last = b["skip"] + 1, b["skip"] + b["steps"]
    wall = b["wall_s_per_step"]
    lines = [
        f"step profile: training steps {first}-{last} (after {b['skip']} warm-up steps), torch.profiler on CPU",
        f"  step time {b['unprofiled_s_per_step']:.4f} s unprofiled ({b['tokens_per_step']:.0f} student tokens, "
        f"{b['unprofiled_tok_s']:.0f} tok/s); {wall:.4f} s profiled "
        f"({wall / b['unprofiled_s_per_step'] - 1:+.0%}; the shares below are of the profiled step)"
        if b["unprofiled_s_per_step"]
        else f"  step time {wall:.4f} s profiled",
        f"  of which teacher targets (cache misses): {b['teacher_s_per_step']:.4f} s/step "
        f"({b['teacher_s_per_step'] / wall:.0%})"
        if wall
        else "",
        f"  operator calls per step: {b['op_calls_per_step']:.0f} "
        f"({b['top_level_calls_per_step']:.0f} called from Python or the autograd engine, the rest nested)",
        f"  {'kind':<28} {'s/step':>9} {'share':>7} {'calls/step':>11} {'GFLOP/s':>8}",
    ]
    for kind, row in b["kinds"].items():
        if kind != OVERHEAD and not row["calls_per_step"]:
            continue
        calls = f"{row['calls_per_step']:.0f}" if kind != OVERHEAD else "-"
        rate = f"{row['gflop_s']:.1f}" if "gflop_s" in row else ""
        lines.append(f"  {kind:<28} {row['s_per_step']:>9.4f} {row['share']:>7.1%} {calls:>11} {rate:>8}")
    lines.append(f"  {'total (wall)':<28} {wall:>9.4f} {1:>7.1%} {b['op_calls_per_step']:>11.0f}")
    lines.append(
        "  (overhead = wall time minus the ops' self times: an estimate, which includes the profiler's own cost per op)"
    )
    lines.append(f"  (LM head: a matmul or elementwise op with an input dimension of {b['vocab']}, the vocabulary)")
    if b["other_threads_s_per_step"]:
        lines.append(f"  op time on other threads, not counted above: {b['other_threads_s_per_step']:.4f} s/step")
    if b["top_ops"]:
        lines.append("  top ops by self time:")
        for op in b["top_ops"]:
            lines.append(
                f"    {op['op']:<44} {op['kind']:<22} {op['s_per_step']:>9.4f} s/step "
                f"{op['calls_per_step']:>7.0f} calls/step"
            )
    return "\n".join(line for line in lines if line)
