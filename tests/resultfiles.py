"""Hand-made result files for the table and leaderboard tests (schema 1: the shapes the runner wrote before
schema 2, which readers upgrade)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any


def summary(mean: float, half: float = 0.05, n: int = 10) -> dict[str, Any]:
    return {"mean": mean, "ci_low": max(0.0, mean - half), "ci_high": min(1.0, mean + half), "n": n}


def result(
    task: str,
    method: str,
    scores: dict[str, Any],
    dataset: str = "fictional",
    model: str = "smollm2-135m-instruct",
    profile: str = "quick",
    seed: int = 0,
    num_contexts: int | None = 20,
    targets: str = "dataset",
    num_targets: int = 0,
    footprint: int = 0,
    finished: str = "2026-11-20T10:00:00+00:00",
    overrides: dict[str, str] | None = None,
    task_settings: dict[str, Any] | None = None,
    commit: str = "0123456789abcdef0123456789abcdef01234567",
    **extra: Any,
) -> dict[str, Any]:
    task_params = {"num_contexts": num_contexts} if num_contexts is not None else {}
    task_params.update(task_settings or {})
    config = {
        "task": task,
        "method": method,
        "dataset": dataset,
        "model": model,
        "profile": profile,
        "seed": seed,
        "device": "cpu",
        "params": {"run": {"targets": targets}, "task": task_params, "method": dict(extra)},
    }
    return {
        "schema_version": 1,
        "task": task,
        "method": method,
        "dataset": dataset,
        "model": model,
        "profile": profile,
        "seed": seed,
        "config": config,
        "overrides": dict(overrides or {}),
        "git_commit": commit,
        "started_at": finished,
        "finished_at": finished,
        "scores": scores,
        "cost": {
            "inject_s": 12.5,
            "wall_s": 30.0,
            "train_tokens": 1000,
            "train_s": 2.0,
            "train_tokens_per_s": 500.0,
            "footprint_bytes": footprint,
        },
        "episodes": [{"episode": "batch-0", "num_targets": num_targets}],
    }


def write(folder: Path, data: dict[str, Any]) -> Path:
    digest = zlib.crc32(json.dumps(data, sort_keys=True).encode())
    name = f"{data['method']}__{data['profile']}__seed{data['seed']}__{digest:08x}.json"
    path = folder / data["task"] / data["dataset"] / data["model"].replace("/", "_") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def batch(method: str, f1: float, **kw: Any) -> dict[str, Any]:
    return result("batch", method, {"qa_f1": summary(f1), "acc": summary(min(1.0, f1 + 0.1))}, **kw)


def sequential(method: str, steps: list[float], **kw: Any) -> dict[str, Any]:
    """The shape tasks/sequential.py writes: per-step rows, a mean matrix, efficacy and retention."""
    length = len(steps) - 1
    scores = {
        "qa_f1": summary(steps[-1]),
        "acc": summary(steps[-1]),
        "steps": [{"step": i, "injected": i, "qa_f1": summary(v), "acc": summary(v)} for i, v in enumerate(steps)],
        "matrix": {"qa_f1": [[v] * length for v in steps]},
        "efficacy": {"qa_f1": summary(max(steps))},
        "retention": [{"distance": k, "qa_f1": summary(steps[-1])} for k in range(length)],
        "before": {"qa_f1": summary(steps[0])},
    }
    return result("sequential", method, scores, num_contexts=None, **kw)


def recommendation(method: str, dataset: str, recalls: list[float], spelling: str = "flat", **kw: Any):
    if spelling == "flat":  # as tasks/recommendation.py writes it
        scores = {f"recall@1_r{i + 1}": summary(v) for i, v in enumerate(recalls)}
        scores["recall@5_r1"] = summary(min(1.0, recalls[0] * 2))
    else:  # nested: {"recall@1": {"r1": {...}}}
        scores = {"recall@1": {f"r{i + 1}": summary(v) for i, v in enumerate(recalls)}}
    return result("recommendation", method, scores, dataset=dataset, num_contexts=None, **kw)


def with_contexts(data: dict[str, Any], episodes: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per-question predictions and per-context QA-F1 ({episode: {context: f1}}, one question per
    context), as the batch task writes them or, for sequential, as each sequence's last step."""
    records, values = [], []
    for episode, f1s in episodes.items():
        predictions = [
            {"context_id": cid, "question": f"What is {cid}?", "answers": ["x"], "prediction": "x", "f1": v, "acc": v}
            for cid, v in f1s.items()
        ]
        per_context = {cid: {"qa_f1": v, "acc": v} for cid, v in f1s.items()}
        record: dict[str, Any] = {"episode": episode, "context_ids": list(f1s), "num_targets": 0}
        if data["task"] == "sequential":
            before = {cid: {"qa_f1": 0.0, "acc": 0.0} for cid in f1s}
            record["steps"] = [
                {"step": 0, "injected": None, "per_context": before, "predictions": predictions},
                {"step": 1, "injected": list(f1s)[-1], "per_context": per_context, "predictions": predictions},
            ]
        else:
            record.update(predictions=predictions, per_context=per_context)
        records.append(record)
        values += f1s.values()
    data["episodes"] = records
    data["scores"]["qa_f1"] = summary(sum(values) / len(values))
    return data


def sequence_records(episodes: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
    """Sequential episode records as tasks/sequential.py writes them (less ``per_episode``), from each sequence's QA-F1
    matrix (rows: steps 0..L, columns: contexts in injection order; context ids are the episode's
    name and position). One question per context: answered right where its score is >= 0.5, else
    with the fact of the context injected at that step on every other step (interference)."""
    records = []
    for episode, matrix in episodes.items():
        ids = [f"{episode}-ctx{j:04d}" for j in range(len(matrix[0]))]
        steps = []
        for s, row in enumerate(matrix):
            injected = ids[s - 1] if s else None
            predictions = []
            for j, (cid, value) in enumerate(zip(ids, row)):
                wrong = f"fact of {injected}" if injected and (s + j) % 2 else "no idea"
                predictions.append(
                    {
                        "context_id": cid,
                        "question": f"What is {cid}?",
                        "answers": [f"fact of {cid}"],
                        "prediction": f"fact of {cid}" if value >= 0.5 else wrong,
                        "f1": value,
                        "acc": value,
                    }
                )
            per_context = {cid: {"qa_f1": v, "acc": v} for cid, v in zip(ids, row)}
            steps.append({"step": s, "injected": injected, "per_context": per_context, "predictions": predictions})
        matrices = {m: [[float(v) for v in row] for row in matrix] for m in ("qa_f1", "acc")}
        records.append({"episode": episode, "context_ids": ids, "matrix": matrices, "steps": steps, "num_targets": 0})
    return records
