"""``bench table``: the paper's four tables from result files (markdown or plain text)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.results import REPO_ROOT


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "table",
        help="render the paper's tables from result files",
        description="Render the paper's tables (1: batch, 2: recommendation, 3: sequential, "
        "4: target-sentence ablation) from result files; missing cells show —.",
    )
    parser.add_argument(
        "paths", nargs="*", type=Path, help="result files or folders (default: results/ of this repository)"
    )
    parser.add_argument(
        "--table",
        "-t",
        action="append",
        choices=("1", "2", "3", "4"),
        help="which table (repeatable; default: all four)",
    )
    parser.add_argument("--format", "-f", dest="fmt", default="markdown", choices=("markdown", "plain"))
    parser.add_argument("--ci", action="store_true", help="show the bootstrap 95%% interval in each cell")
    parser.add_argument(
        "--paper",
        action="store_true",
        help="add the paper's published values beside ours where they exist, and its Tables 1, 2 and 4 as published",
    )
    parser.add_argument("--profile", help="only runs of this profile")
    parser.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")
    parser.set_defaults(handler=cmd_table)


def cmd_table(args: argparse.Namespace) -> int:
    from leaderboard.load import load_results
    from leaderboard.tables import TABLE_IDS, render_all

    loaded = load_results(args.paths or [REPO_ROOT / "results"])
    results = [r for r in loaded.results if args.profile is None or r.get("profile") == args.profile]
    which = tuple(sorted(set(args.table))) if args.table else TABLE_IDS
    text = render_all(results, which, fmt=args.fmt, ci=args.ci, paper=args.paper)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({len(results)} runs)")
    else:
        sys.stdout.write(text)
    for path, why in loaded.skipped:
        print(f"bench: skipped {path}: {why}", file=sys.stderr)
    return 0
