"""Training-throughput benchmark: SELF-PARAM as implemented here versus the official-style loop.

Both run in the same process on the same contexts, target sentences and retain texts:

- official style: batch size 1, three optimizer steps per QA pair (the sentence, a random context
  suffix, a retain text), a teacher forward pass at every step, full-vocabulary KL, fp32;
- here: the method's own ``inject`` with the chosen profile's settings (batched, cached top-k
  teacher, bf16 autocast).

Throughput is student tokens (non-pad input tokens of the model being trained) per second of
training wall time, teacher passes included. With ``share_prefix`` a prefix shared by a batch runs
once and counts once; the figure that counts it for every example it serves (the work a loop
without sharing does) is printed beside it. The two are measured alternately (A B A B) so that
a change in machine load hits both. Also printed: the measured bf16 GEMM rate and the compute
limit it implies at 4·N FLOPs per student token (forward + input gradients; LoRA adds little).
``--breakdown`` adds a profile of a few of the harness's training steps by kind of work
(``benchmark.app.breakdown``).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from benchmark.allocator import malloc_record
from benchmark.app.breakdown import profile_steps
from benchmark.app.breakdown import report as breakdown_report
from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.models import LM
from benchmark.models.bf16_matmul import NATIVE, kernel_in_effect
from benchmark.runner import build_run_params, load_run_lm
from benchmark.targets import make_targets
from benchmark.threads import omp_wait_policy
from benchmark.types import Context
from methods.retain import RetainStream
from methods.selfparam import SelfParam
from methods.training import TrainParams, build_student
from tasks.qa import load_documents


@dataclass
class Measure:
    tokens: int = 0  # student tokens computed (a shared prefix once per batch)
    seconds: float = 0.0
    student_seconds: float = 0.0
    example_tokens: int = 0  # every example's full sequence (a shared prefix once per example)

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def example_rate(self) -> float:
        return self.example_tokens / self.seconds if self.seconds else 0.0

    def add(self, other: Measure) -> None:
        self.tokens += other.tokens
        self.seconds += other.seconds
        self.student_seconds += other.student_seconds
        self.example_tokens += other.example_tokens


def gemm_gflops(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Measured matmul rate at a transformer-like shape (768 tokens × 576 × 1536)."""
    a = torch.randn(768, 576, dtype=dtype)
    b = torch.randn(576, 1536, dtype=dtype)
    for _ in range(3):
        a @ b
    count, tick = 0, time.perf_counter()
    while time.perf_counter() - tick < seconds:
        a @ b
        count += 1
    return 2 * 768 * 576 * 1536 * count / (time.perf_counter() - tick) / 1e9


def official_style(
    lm: LM, contexts: list[Context], retain: list[list[int]], pairs: int, lr: float, seed: int
) -> Measure:
    """The official loop's structure: per QA pair, three batch-1 fp32 steps with a live teacher."""
    p = TrainParams(lr=lr, frozen_bf16=False)
    student = build_student(lm, p)
    optimizer = torch.optim.AdamW([t for t in student.parameters() if t.requires_grad], lr=lr)
    teacher = lm.model
    rng = random.Random(seed)
    bos = [lm.tokenizer.bos_token_id]
    work = [(c, s) for c in contexts for s in c.targets]
    rng.shuffle(work)
    measure = Measure()

    def step(teacher_ids: list[int], student_ids: list[int], first: int) -> None:
        tick = time.perf_counter()
        student.train()
        t_in = torch.tensor([teacher_ids], device=lm.device)
        s_in = torch.tensor([student_ids], device=lm.device)
        with torch.no_grad():
            t_logits = teacher(t_in).logits[:, first : len(teacher_ids) - 1]
        s_logits = student(s_in).logits[:, : len(student_ids) - 1]
        loss = F.kl_div(
            F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True, reduction="batchmean"
        )
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        optimizer.step()
        measure.tokens += len(student_ids)
        measure.example_tokens += len(student_ids)
        measure.seconds += time.perf_counter() - tick

    for i in range(pairs):
        context, sentence = work[i % len(work)]
        ctx = lm.encode(context.text, add_bos=False)
        sent = lm.encode(sentence, add_bos=False)
        step(bos + ctx + sent, bos + sent, len(ctx))
        split = rng.randint(1, len(ctx) - 2)
        step(bos + ctx, bos + ctx[split:], split)
        text = retain[i % len(retain)]
        step(bos + ctx + text, bos + text, len(ctx))
    measure.student_seconds = measure.seconds
    return measure


def ours(lm: LM, method_cls: type, params: Any, run: RunParams, contexts: list[Context], seed: int) -> Measure:
    method = method_cls(lm, params, run, seed)
    method.inject(contexts)
    return Measure(
        int(method.stats["train_tokens"]),
        float(method.stats["train_s"]),
        float(method.stats.get("student_s", 0.0)),
        int(method.stats["train_example_tokens"]),
    )


def run_perf(
    model: str = "smollm2-135m-instruct",
    profile: str = "quick",
    num_contexts: int = 4,
    official_pairs: int = 6,
    rounds: int = 2,
    overrides: dict[str, str] | None = None,
    seed: int = 0,
    breakdown: tuple[int, int] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Measure both loops ``rounds`` times, alternating; returns the figures printed by ``bench perf``.

    ``breakdown=(skip, steps)`` adds the step profile of ``benchmark.app.breakdown`` (figures under
    ``"breakdown"``); ``rounds=0`` then leaves out the throughput comparison.
    """
    # What bench perf measures is SELF-PARAM's own training against the official code's loop.
    params = build_run_params(profile, overrides or {}, method_cls=SelfParam)
    run, mp = params["run"], params["method"]
    torch.manual_seed(seed)
    lm = load_run_lm(model, run, device, seed)
    if breakdown is not None and lm.device.type != "cpu":
        # It sorts the CPU operators torch.profiler records; a GPU's kernels are not among them.
        raise BenchError(f"--breakdown profiles CPU operators only; run it with --device cpu (not {lm.device.type})")
    documents = load_documents("fictional", "", num_contexts, 0)
    targets = make_targets(documents, run, lm, seed)
    contexts = [Context(d.id, d.text, targets[d.id]) for d in documents]
    retain = RetainStream(lm, mp.retain_source, mp.retain_tokens, seed).take(8)

    gemm = [gemm_gflops(torch.bfloat16)]  # measured before and after: the machine may be shared
    fp32 = replace(lm, precision="fp32")  # the official loop: no autocast
    official, fast = Measure(), Measure()
    if rounds:
        official_style(fp32, contexts, retain, 1, mp.lr, seed)  # warm-up (allocations, kernels)
        # and ours: compiled layers (``compile_layers``) compile once per process, on first use
        ours(lm, SelfParam, replace(mp, epochs=1), run, contexts[:1], seed)
    for _ in range(rounds):
        official.add(official_style(fp32, contexts, retain, official_pairs, mp.lr, seed))
        fast.add(ours(lm, SelfParam, mp, run, contexts, seed))
    gemm.append(gemm_gflops(torch.bfloat16))
    steps = None
    if breakdown is not None:
        skip, count = breakdown
        steps = profile_steps(lm, lambda: SelfParam(lm, mp, run, seed), contexts, skip, count)
    bf16 = max(gemm)
    n_params = lm.info.get("parameters", 0)
    limit = bf16 * 1e9 / (4 * n_params) if n_params else 0.0
    return {
        "model": model,
        "profile": profile,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": omp_wait_policy(),
        **malloc_record(),
        "bf16_matmul": kernel_in_effect(),
        "load_average": os.getloadavg(),
        "official_tok_s": official.rate,
        "official_tokens": official.tokens,
        "ours_tok_s": fast.rate,
        "ours_student_only_tok_s": fast.tokens / fast.student_seconds if fast.student_seconds else 0.0,
        "ours_tokens": fast.tokens,
        "ours_example_tok_s": fast.example_rate,
        "ours_example_tokens": fast.example_tokens,
        # The official loop computes every token of every example, so the same-work comparison
        # counts a shared prefix for each example it serves; the computed-token ratio is kept too.
        "ratio": fast.example_rate / official.rate if official.rate else float("inf"),
        "ratio_computed": fast.rate / official.rate if official.rate else float("inf"),
        "bf16_gemm_gflops": bf16,
        "bf16_gemm_gflops_before_after": gemm,
        "compute_limit_tok_s": limit,
        "settings": {k: v for k, v in vars(mp).items()},
        "contexts": num_contexts,
        "rounds": rounds,
        **({"breakdown": steps} if steps is not None else {}),
    }


def _decay(decay: list[int] | tuple[int, int] | None) -> str:
    """jemalloc's page decay as printed: " (freed pages kept)" or " (decay 10000/0 ms)"."""
    if decay is None:
        return ""
    return " (freed pages kept)" if tuple(decay) == (-1, -1) else f" (decay {decay[0]}/{decay[1]} ms)"


def report(figures: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.1f}" for x in figures["load_average"])
    header = (
        f"model {figures['model']}, profile {figures['profile']}, {figures['contexts']} contexts, "
        f"{figures['threads']} threads (OpenMP wait policy {figures['omp_wait_policy']}, malloc "
        f"{figures['malloc']}{_decay(figures.get('malloc_decay_ms'))}), load average {load}"
    )
    if figures.get("bf16_matmul", NATIVE) != NATIVE:
        header += f"; bf16 matrix products as {figures['bf16_matmul']} (no bf16 instructions on this CPU)"
    extra = []
    if "breakdown" in figures:
        extra.append(breakdown_report(figures["breakdown"]))
    if not figures.get("rounds", 1):  # the step profile alone
        gemm = f"bf16 GEMM {figures['bf16_gemm_gflops']:.0f} GFLOP/s (the rate a matmul reaches at a model-like shape)"
        return "\n".join([header, gemm, *extra])
    shared = figures["ours_example_tokens"] != figures["ours_tokens"]  # prefixes were shared
    lines = [
        header,
        f"official-style loop (batch 1, 3 steps per QA pair, live full-vocab teacher, fp32): "
        f"{figures['official_tok_s']:.1f} tok/s ({figures['official_tokens']} student tokens)",
        f"selfparam here (teacher passes included):                                      "
        f"{figures['ours_tok_s']:.1f} tok/s ({figures['ours_tokens']} student tokens)",
        f"selfparam here, student steps only:                                            "
        f"{figures['ours_student_only_tok_s']:.1f} tok/s",
        f"selfparam here, counting each example's whole sequence (shared prefixes included): "
        f"{figures['ours_example_tok_s']:.1f} tok/s ({figures['ours_example_tokens']} tokens)"
        if shared
        else "",
        f"ratio here / official: {figures['ratio']:.2f}x (tokens of the training examples per second)"
        + (f"; {figures['ratio_computed']:.2f}x on computed tokens" if shared else ""),
        f"bf16 GEMM {figures['bf16_gemm_gflops']:.0f} GFLOP/s (best of before/after: "
        f"{', '.join(f'{g:.0f}' for g in figures['bf16_gemm_gflops_before_after'])}) -> compute limit "
        f"{figures['compute_limit_tok_s']:.0f} tok/s at 4·N FLOPs/token; here reaches "
        f"{figures['ours_tok_s'] / figures['compute_limit_tok_s']:.0%} (student steps only "
        f"{figures['ours_student_only_tok_s'] / figures['compute_limit_tok_s']:.0%})"
        if figures["compute_limit_tok_s"]
        else "",
        *extra,
    ]
    return "\n".join(line for line in lines if line)
