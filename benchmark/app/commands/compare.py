"""``bench compare A.json B.json``: the paired difference B − A of two runs on the same questions.

Two methods scored on the same contexts share what makes a context easy or hard, so the bootstrap of
their per-unit differences is far tighter than two separate intervals. What a unit is, what the
bootstrap draws and which scores are paired, the task declares (``benchmark.task_info``): contexts
(batch; sequential: each context after the last step, resampled as whole sequences) or the gold
items of test points (recommendation, resampled by test point). After the interval comes the smallest
difference a paired test detects at this size (``metrics.detectable_difference``, 80% power, alpha
0.05), computed from the same per-unit differences over the same independent units.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError

Result = dict[str, Any]
MUST_MATCH = ("task", "dataset", "model", "seed")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="paired difference of two runs on the same contexts and questions",
        description="Print A's and B's mean, the paired difference B - A with its bootstrap 95% "
        "interval and a verdict, and the smallest difference a paired test detects at "
        "this size (80% power, two-sided alpha 0.05), for the task's main score (QA-F1 "
        "for QA tasks; every Recall@k for recommendation). Both runs must share task, "
        "data set, model, seed, contexts and questions.",
    )
    parser.add_argument("a", type=Path, metavar="A.json", help="result file of the first run")
    parser.add_argument("b", type=Path, metavar="B.json", help="result file of the second run")
    parser.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from benchmark.metrics import detectable_difference, unit_differences
    from leaderboard import extract, meta

    a, b = read_result(args.a), read_result(args.b)
    check_pairable(a, b)
    task = meta.task_of(a)
    rows, counts, detectable = [], (0, 0), []
    for metric in paired_metrics(a):
        units_a, units_b = extract.units(a, metric), extract.units(b, metric)
        if not units_a or not units_b:
            continue
        diff = extract.paired([a], [b], metric) or {}
        shared = units_a.keys() & units_b.keys()
        if not diff or not shared:
            continue
        clusters = {extract.cluster(task)(k) for k in shared}
        counts = (len(shared), len(clusters))
        mean_a = sum(units_a[k] for k in shared) / len(shared)
        mean_b = sum(units_b[k] for k in shared) / len(shared)
        rows.append(
            [
                metric,
                f"{mean_a:.4f}",
                f"{mean_b:.4f}",
                f"{diff['mean']:+.4f} [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}]",
                verdict(diff),
            ]
        )
        mde = detectable_difference(unit_differences(units_a, units_b), extract.cluster(task))
        detectable.append((metric, mde, len(clusters)))
    if not rows:
        raise BenchError(f"{args.a} and {args.b} hold no per-unit scores of the same metric to pair")
    for name, path, run in (("A", args.a, a), ("B", args.b, b)):
        print(f"{name}: {meta.of_result(run).row_name}, profile {run.get('profile')} ({path})")
    for note in meta.stand_in_notes(meta.of_result(run) for run in (a, b)):
        print(note)
    unit, drawn = task.paired_unit, task.resampled_unit
    print(
        f"{a['task']} · {a['dataset']} · {a['model']}, seed {a['seed']}: {counts[0]} {unit} paired, "
        f"bootstrap over {counts[1]} {drawn}"
    )
    print(
        tabulate(
            rows, headers=["metric", "A", "B", "B - A [95% CI]", "verdict"], tablefmt="simple", disable_numparse=True
        )
    )
    for metric, mde, n_clusters in detectable:
        print(detectable_line(mde, n_clusters, drawn) + (f" ({metric})" if len(detectable) > 1 else ""))
    return 0


MDE_LABEL = "smallest difference detectable at this size (80% power, alpha 0.05)"


def detectable_line(mde: float, clusters: int, drawn: str) -> str:
    """The minimum detectable difference over ``clusters`` independent units, or why there is none."""
    if math.isnan(mde):
        return f"{MDE_LABEL}: not estimable over {clusters} {drawn} (needs at least 2)"
    if mde < 1e-9:  # rounding noise of equal differences
        return f"{MDE_LABEL}: not estimable over {clusters} {drawn} (every difference is the same)"
    return f"{MDE_LABEL}: ±{mde:.4f} over {clusters} {drawn}"


def verdict(diff: dict[str, float]) -> str:
    if diff["ci_low"] > 0:
        return "B better"
    if diff["ci_high"] < 0:
        return "A better"
    return "tie (interval contains 0)"


def read_result(path: Path) -> Result:
    """One result file (in the shape readers expect), or a one-line BenchError saying why it is not one."""
    from benchmark.schema import upgrade
    from leaderboard.load import REQUIRED_KEYS

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"no such result file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise BenchError(f"{path} is not a result file (no {', '.join(missing)})")
    return upgrade(data)


def check_pairable(a: Result, b: Result) -> None:
    """Refuse, naming what differs, unless both runs answered the same questions on the same contexts."""
    from leaderboard import extract

    differ = [f"{k} ({a.get(k)} vs {b.get(k)})" for k in MUST_MATCH if a.get(k) != b.get(k)]
    if differ:
        raise BenchError(f"cannot pair A and B: they differ in {', '.join(differ)}")
    asked_a, asked_b = extract.probes(a), extract.probes(b)
    for name, asked in (("A", asked_a), ("B", asked_b)):
        if not asked:
            raise BenchError(f"cannot pair A and B: {name} holds no per-question predictions")
    contexts_a, contexts_b = {p[:3] for p in asked_a}, {p[:3] for p in asked_b}
    if contexts_a != contexts_b:
        only_a, only_b = sorted(contexts_a - contexts_b), sorted(contexts_b - contexts_a)
        example = (only_a or only_b)[0]
        raise BenchError(
            f"cannot pair A and B: their context ids differ ({len(only_a)} only in A, "
            f"{len(only_b)} only in B, e.g. {example[2]} in episode {example[1]})"
        )
    if asked_a != asked_b:
        changed = sorted({p[:3] for p in asked_a ^ asked_b})
        raise BenchError(
            f"cannot pair A and B: their questions differ on {len(changed)} contexts "
            f"(e.g. {changed[0][2]} in episode {changed[0][1]})"
        )


def paired_metrics(result: Result) -> list[str]:
    """The scores the task declares for pairing (its primary one unless it says otherwise; a task
    that declares nothing: every per-unit score it records) that the result holds per unit."""
    from leaderboard import extract, meta

    return [m for m in meta.task_of(result).compared_metrics if extract.units(result, m) is not None]
