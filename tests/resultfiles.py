"""Hand-made result files for the table and leaderboard tests (shapes as the runner writes them)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any


def summary(mean: float, half: float = 0.05, n: int = 10) -> dict[str, Any]:
    return {"mean": mean, "ci_low": max(0.0, mean - half), "ci_high": min(1.0, mean + half), "n": n}


def result(task: str, method: str, scores: dict[str, Any], dataset: str = "fictional",
           model: str = "smollm2-135m-instruct", profile: str = "quick", seed: int = 0,
           num_contexts: int | None = 20, targets: str = "dataset", num_targets: int = 0,
           footprint: int = 0, finished: str = "2026-11-20T10:00:00+00:00", **extra: Any) -> dict[str, Any]:
    task_params = {"num_contexts": num_contexts} if num_contexts is not None else {}
    config = {"task": task, "method": method, "dataset": dataset, "model": model, "profile": profile,
              "seed": seed, "device": "cpu",
              "params": {"run": {"targets": targets}, "task": task_params, "method": dict(extra)}}
    return {
        "schema_version": 1, "task": task, "method": method, "dataset": dataset, "model": model,
        "profile": profile, "seed": seed, "config": config, "overrides": {},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "started_at": finished, "finished_at": finished, "scores": scores,
        "cost": {"inject_s": 12.5, "wall_s": 30.0, "train_tokens": 1000, "train_s": 2.0,
                 "train_tokens_per_s": 500.0, "footprint_bytes": footprint},
        "episodes": [{"episode": "batch-0", "num_targets": num_targets}],
    }


def write(folder: Path, data: dict[str, Any]) -> Path:
    name = f"{data['method']}__{data['profile']}__seed{data['seed']}__{zlib.crc32(json.dumps(data, sort_keys=True).encode()):08x}.json"
    path = folder / data["task"] / data["dataset"] / data["model"].replace("/", "_") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def batch(method: str, f1: float, **kw: Any) -> dict[str, Any]:
    return result("batch", method, {"qa_f1": summary(f1), "acc": summary(min(1.0, f1 + 0.1))}, **kw)


def sequential(method: str, steps: list[float], **kw: Any) -> dict[str, Any]:
    """The shape tasks/sequential.py writes: per-step rows, a mean matrix, efficacy and retention."""
    length = len(steps) - 1
    scores = {"qa_f1": summary(steps[-1]), "acc": summary(steps[-1]),
              "steps": [{"step": i, "injected": i, "qa_f1": summary(v), "acc": summary(v)}
                        for i, v in enumerate(steps)],
              "matrix": {"qa_f1": [[v] * length for v in steps]},
              "efficacy": {"qa_f1": summary(max(steps))},
              "retention": [{"distance": k, "qa_f1": summary(steps[-1])} for k in range(length)],
              "before": {"qa_f1": summary(steps[0])}}
    return result("sequential", method, scores, num_contexts=None, **kw)


def recommendation(method: str, dataset: str, recalls: list[float], spelling: str = "flat", **kw: Any):
    if spelling == "flat":  # as tasks/recommendation.py writes it
        scores = {f"recall@1_r{i + 1}": summary(v) for i, v in enumerate(recalls)}
        scores["recall@5_r1"] = summary(min(1.0, recalls[0] * 2))
    else:  # nested: {"recall@1": {"r1": {...}}}
        scores = {"recall@1": {f"r{i + 1}": summary(v) for i, v in enumerate(recalls)}}
    return result("recommendation", method, scores, dataset=dataset, num_contexts=None, **kw)
