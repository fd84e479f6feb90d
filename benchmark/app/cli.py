"""The ``bench`` command line.

Project modules that load torch (the runner, models, methods) are imported inside the handlers that
need them: ``main`` chooses the OpenMP wait policy before torch loads, and ``bench table`` or
``bench --help`` need no model.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from benchmark.allocator import keep_freed_memory, preload_jemalloc
from benchmark.app import commands
from benchmark.config import PROFILES, RUN_PROFILES, RunParams, declared_ranges, field_default, parse_overrides
from benchmark.errors import BenchError, Terminated
from benchmark.registry import DATASETS, METHODS, TASKS
from benchmark.schema import nested_scores
from benchmark.threads import choose_omp_wait_policy

if TYPE_CHECKING:
    from benchmark.runner import RunOutcome

SET_HELP = "override a parameter (run.x, task.x, method.x or a unique bare name)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Knowledge-injection benchmark harness.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one method on one task")
    run.add_argument("--method", required=True)
    run.add_argument("--task", required=True)
    run.add_argument("--dataset", help="registered data set or a .jsonl file (default: the task's)")
    run.add_argument("--model", help="built-in name, HF id or local path (default: the profile's)")
    add_run_arguments(run)
    run.add_argument("--out", type=Path, default=Path("runs"), help="result folder (default: runs)")
    run.add_argument("--force", action="store_true", help="recompute even if a result exists")
    run.add_argument(
        "--checkpoint-every",
        type=checkpoint_seconds,
        default=60.0,
        metavar="SECONDS",
        help="save training state inside an injection this often, to resume a killed run "
        "there (default 60; 0: after every step; off)",
    )

    run.set_defaults(handler=cmd_run)

    lst = sub.add_parser("list", help="list methods, tasks and data sets")
    lst.add_argument("--params", action="store_true", help="also show every parameter and its default")
    lst.set_defaults(handler=cmd_list)

    # Further subcommands live in benchmark/app/commands/, one module each with register(subparsers).
    for module in command_modules():
        module.register(sub)
    return parser


def add_run_arguments(
    parser: argparse.ArgumentParser, set_help: str = SET_HELP, profile_help: str | None = None
) -> None:
    """``--profile``, ``--seed``, ``--device`` and ``--set``: how every command that sets up a run
    (``benchmark.runner.build_run_params`` and ``load_run_lm``) is told its settings."""
    parser.add_argument("--profile", default="quick", choices=PROFILES, help=profile_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    add_set_argument(parser, set_help)


def add_set_argument(parser: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    """``--set KEY=VALUE`` (repeatable), collected as ``overrides``; ``parse_overrides`` reads them."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def command_modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"benchmark.app.commands.{info.name}")
        for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name)
    ]


def checkpoint_seconds(text: str) -> float | None:
    """``--checkpoint-every``: seconds >= 0, or ``off``."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0 or off, got {text!r}")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.runner import RunRequest, run

    request = RunRequest(
        method=args.method,
        task=args.task,
        dataset=args.dataset,
        model=args.model,
        profile=args.profile,
        seed=args.seed,
        device=args.device,
        overrides=parse_overrides(args.overrides),
        out=args.out,
        force=args.force,
        checkpoint_every=args.checkpoint_every,
    )
    try:
        outcome = run(request)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated
        how = "terminated by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        print(
            f"bench: {how}; finished episodes and the last training checkpoint are saved; "
            "run the same command to resume",
            file=sys.stderr,
        )
        return interrupted_code(exc)
    print_outcome(outcome)
    return 0


def print_outcome(outcome: RunOutcome) -> None:
    result = outcome.result
    task_cls = TASKS.get(result["task"])
    header = (
        f"{result['method']} on {result['task']}/{result['dataset']} "
        f"(model {result['model']}, profile {result['profile']}, seed {result['seed']})"
    )
    print(header)
    if outcome.reused:
        print("(already complete: shown from the result file; --force recomputes)")
    elif outcome.resumed_episodes:
        print(f"(resumed: {outcome.resumed_episodes} episodes taken from the interrupted attempt)")
    print(task_cls.summary(nested_scores(result)))  # a reused file may be of schema 1
    cost = result["cost"]
    parts = [f"wall {cost.get('wall_s', 0):.1f}s"]
    if cost.get("train_tokens"):
        parts.append(f"train {int(cost['train_tokens'])} tokens at {cost['train_tokens_per_s']:.0f} tok/s")
        if cost.get("train_example_tokens", cost["train_tokens"]) != cost["train_tokens"]:  # shared prefixes
            parts.append(f"{cost['train_example_tokens_per_s']:.0f} tok/s counting each example's whole sequence")
    parts.append(f"peak RSS {cost['peak_rss_bytes'] / 2**20:.0f} MiB")
    parts.append(f"footprint {cost['footprint_bytes']} bytes")
    print("cost: " + ", ".join(parts))
    print(f"result: {outcome.path}")


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from benchmark.targets import GENERATOR_DESCRIPTIONS, GENERATORS, generator_problem

    for title, registry in (("methods", METHODS), ("tasks", TASKS), ("datasets", DATASETS)):
        rows = []
        for name, cls in registry.items():
            reason = cls.unavailable_reason()
            rows.append((name, "yes" if reason is None else f"no: {reason}", cls.description))
        print(f"{title}:")
        print(tabulate(rows, headers=("name", "runs here", "description"), tablefmt="simple"))
        print()
    rows = [
        (name, "yes" if (reason := generator_problem(name)) is None else f"no: {reason}", GENERATOR_DESCRIPTIONS[name])
        for name in GENERATORS
    ]
    print("target-sentence generators (--set targets=NAME, optionally NAME+grounded):")
    print(tabulate(rows, headers=("name", "runs here", "description"), tablefmt="simple"))
    print()
    if args.params:
        print_params("run", RunParams, RUN_PROFILES)
        for registry in (TASKS, METHODS):
            for name, cls in registry.items():
                print_params(f"{registry.kind} {name}", cls.Params, cls.profiles)
    return 0


def print_params(title: str, params_cls: type, profiles: Mapping[str, Mapping[str, Any]]) -> None:
    fields = dataclasses.fields(params_cls)
    if not fields:
        return
    ranges = declared_ranges(params_cls)
    print(f"{title} parameters (default; per-profile overrides; allowed range):")
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else field_default(f)
        per_profile = ", ".join(f"{p}={v[f.name]}" for p, v in profiles.items() if f.name in v)
        print(
            f"  {f.name} = {default!r}"
            + (f"  ({per_profile})" if per_profile else "")
            + (f"  range: {ranges[f.name]}" if f.name in ranges else "")
        )
    print()


def interrupted_code(exc: KeyboardInterrupt) -> int:
    """The shell's exit status for a process stopped by the signal: 128 + SIGINT or SIGTERM."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Raise ``Terminated`` on SIGTERM while a command runs, so a scheduler's (or Ray's) stop keeps
    the partial log and releases the lock as Ctrl-C does, instead of killing the process outright."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def model_kernels(args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    """The bf16 product policy (``benchmark.models.bf16_matmul``) around a command that runs a model
    (``runs_a_model`` in its parser's defaults); other commands never import torch for it. Runs
    (``bench run``, sweep cells) enter it in ``runner.compute``, which also records the kernel."""
    if not getattr(args, "runs_a_model", False):
        return contextlib.nullcontext()
    from benchmark.models.bf16_matmul import bf16_matmul_policy

    return bf16_matmul_policy()


def main(argv: list[str] | None = None) -> int:
    if "torch" not in sys.modules:  # OpenMP reads its wait policy once, when torch loads it
        choose_omp_wait_policy()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # transformers leaves it unannotated
    keep_freed_memory()  # training steps reuse their activation memory instead of re-mapping it
    try:
        with sigterm_as_interrupt(), model_kernels(args):
            code: int = args.handler(args)
            return code
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:  # a command without its own message for it
        print("bench: terminated by SIGTERM", file=sys.stderr)
        return interrupted_code(exc)


def entry() -> int:
    """The ``bench`` executable: ``main`` in a process whose malloc is jemalloc where one is found
    (``benchmark.allocator``); ``main`` itself, called in-process, keeps the caller's malloc."""
    try:
        preload_jemalloc()
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    return main()


if __name__ == "__main__":
    sys.exit(entry())
