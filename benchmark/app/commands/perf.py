"""``bench perf``: SELF-PARAM training throughput here versus the official-style loop, side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmark.app.cli import add_run_arguments
from benchmark.config import parse_overrides
from benchmark.errors import BenchError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("perf", help="training tokens/s of selfparam vs the official-style loop")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    add_run_arguments(
        parser,
        set_help="override a selfparam or run parameter",
        profile_help="selfparam settings to measure (default quick)",
    )
    parser.add_argument("--contexts", type=int, default=4, help="fictional contexts injected per round")
    parser.add_argument("--official-pairs", type=int, default=6, help="QA pairs (3 steps each) per round")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternating measurement rounds (0 with --breakdown: the step profile only)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also profile a few selfparam training steps (torch.profiler, CPU) and print the step time by "
        "kind: matmul (backbone / LM head, told apart by the vocabulary dimension), attention, LM head + "
        "loss, elementwise, views, indexing, optimizer, autograd engine, other (unmatched ops), and "
        "Python / dispatch overhead = wall time minus the ops' self times (an estimate: it includes the "
        "profiler's own cost); with operator calls per step and the top ops",
    )
    parser.add_argument(
        "--breakdown-skip",
        type=int,
        default=2,
        metavar="N",
        help="warm-up training steps before the profiled ones (default 2)",
    )
    parser.add_argument(
        "--breakdown-steps",
        type=int,
        default=4,
        metavar="N",
        help="training steps profiled (default 4; fewer if the run ends first)",
    )
    parser.set_defaults(handler=cmd_perf, runs_a_model=True)


def cmd_perf(args: argparse.Namespace) -> int:
    from benchmark.app.perf import report, run_perf

    if args.rounds < 0 or (args.rounds == 0 and not args.breakdown):
        raise BenchError("--rounds must be at least 1 (or 0 with --breakdown)")
    figures = run_perf(
        args.model,
        args.profile,
        args.contexts,
        args.official_pairs,
        args.rounds,
        parse_overrides(args.overrides),
        args.seed,
        (args.breakdown_skip, args.breakdown_steps) if args.breakdown else None,
        args.device,
    )
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0
