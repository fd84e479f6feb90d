"""``bench perf``: SELF-PARAM training throughput here versus the official-style loop, side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("perf", help="training tokens/s of selfparam vs the official-style loop")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--profile", default="quick", help="selfparam settings to measure (default quick)")
    parser.add_argument("--contexts", type=int, default=4, help="fictional contexts injected per round")
    parser.add_argument("--official-pairs", type=int, default=6, help="QA pairs (3 steps each) per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a selfparam or run parameter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.set_defaults(handler=cmd_perf)


def cmd_perf(args: argparse.Namespace) -> int:
    from benchmark.config import parse_overrides
    from benchmark.perf import report, run_perf

    figures = run_perf(args.model, args.profile, args.contexts, args.official_pairs, args.rounds,
                       parse_overrides(args.overrides), args.seed)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0
