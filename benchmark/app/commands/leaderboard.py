"""``bench leaderboard``: rewrite leaderboard/README.md and its figures from results/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.results import REPO_ROOT


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "leaderboard",
        help="rewrite the leaderboard page and plots from result files",
        description="Rewrite leaderboard/README.md (ranked tables per task × data set × model, the "
        "paper's tables) and its PNG plots from result files. Same results, same bytes.",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO_ROOT / "results",
        help="folder of result files (default: results/ of this repository)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "leaderboard",
        help="folder of the page and its plots (default: leaderboard/)",
    )
    parser.set_defaults(handler=cmd_leaderboard)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from leaderboard.load import load_results
    from leaderboard.page import build_page

    if not args.results.is_dir():
        raise BenchError(f"no results folder at {args.results}")
    loaded = load_results([args.results])
    source = _shown(args.results)
    report = build_page(loaded.results, args.out, source)
    print(
        f"wrote {_shown(report.page)}: {report.runs} runs in {report.boards} tables, "
        f"{len(report.figures)} plots" + (f", {len(report.removed)} stale plots removed" if report.removed else "")
    )
    for path, why in loaded.skipped:
        print(f"bench: skipped {path}: {why}", file=sys.stderr)
    return 0


def _shown(path: Path) -> str:
    """A path relative to the repository when inside it (the page must not name this machine)."""
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix() + ("/" if path.is_dir() else "")
    except ValueError:
        return path.as_posix()
