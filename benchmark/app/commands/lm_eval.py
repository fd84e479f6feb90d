"""``bench lm-eval``: evaluate a model after injection with lm-evaluation-harness.

The method is built and injected exactly as the first episode of ``bench run`` injects it (the
first batch of a QA data set, or the training conversations of a recommendation one), through the
runner's own set-up of that episode; the injected contexts' probes are exported for the lm-eval
tasks in ``tasks/lm_eval``, and ``method.model`` is wrapped in lm-eval's HFLM in memory. Printed
side by side: lm-eval's scores, the harness's scorer on lm-eval's predictions, and (unless
``--no-harness``) the harness's own answers from the same model with the number of identical
predictions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmark.app.cli import add_run_arguments
from benchmark.config import parse_overrides
from benchmark.errors import BenchError
from benchmark.types import Prompt


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "lm-eval",
        help="evaluate a model after injection on the lm-eval tasks",
        description="Inject a batch of contexts with a method, then evaluate the injected model with "
        "lm-evaluation-harness on the harness's tasks (registered in tasks/lm_eval).",
    )
    parser.add_argument("--method", help="injection method (default: the reference floor, Base without context)")
    parser.add_argument(
        "--dataset", default="fictional", help="fictional, squad, pwc, inspired or redial (default: fictional)"
    )
    parser.add_argument("--model", help="built-in name, HF id or local path (default: the profile's)")
    add_run_arguments(parser, set_help="override a parameter, as in bench run")
    parser.add_argument("--tasks", help="comma-separated lm-eval tasks (default: selfparam_<dataset>)")
    parser.add_argument("--limit", type=int, help="only the first N questions of each task")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where the tasks' data files are written (default: a temporary folder; "
        "with --export: the folder lm-eval reads by default)",
    )
    parser.add_argument(
        "--export",
        action="store_true",
        help="only write the data files of --dataset for lm-eval (no model, no injection)",
    )
    parser.add_argument(
        "--contexts",
        type=int,
        help="with --export: how many contexts, or recommendation points (0 = all; default: the task's quick size)",
    )
    parser.add_argument("--list", action="store_true", help="list the tasks lm-eval finds and exit")
    parser.add_argument(
        "--no-harness", action="store_true", help="skip the harness's own generation on the same questions"
    )
    parser.add_argument("--output", type=Path, help="also write the scores as JSON to this file")
    parser.set_defaults(handler=cmd_lm_eval, runs_a_model=True)


def cmd_lm_eval(args: argparse.Namespace) -> int:
    if args.list:
        return list_tasks()
    if args.export:
        return export(args)
    return evaluate(args)


def task_manager(data_dir: Path | None = None) -> Any:
    """lm-eval's TaskManager over this package's task folder only (fast: no built-in index)."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.tasks import TaskManager

    from tasks.lm_eval import TASKS_DIR

    metadata = {"data_dir": str(data_dir)} if data_dir else None
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)


def list_tasks() -> int:
    from tasks.lm_eval import TASKS_DIR

    manager = task_manager()
    print(f"include path: {TASKS_DIR}")
    print("tasks: " + ", ".join(sorted(manager.all_subtasks)))
    print("tags: " + ", ".join(sorted(set(manager.all_tags))))
    return 0


def export(args: argparse.Namespace) -> int:
    from tasks.lm_eval.export import export_qa, read_export

    if _kind(args.dataset) == "crs":
        from tasks.lm_eval.export_rec import export_recommendation

        path = export_recommendation(args.dataset, args.data_dir, limit=args.contexts)
        print(f"wrote {path}: {len(read_export(path)['rows'])} recommendation points")
    else:
        path = export_qa(args.dataset, args.data_dir, limit=args.contexts)
        payload = read_export(path)
        print(f"wrote {path}: {len(payload['rows'])} questions on {payload['contexts']} contexts")
    return 0


def _kind(dataset: str) -> str:
    from tasks.lm_eval import QA_TASKS, REC_TASKS

    if dataset in QA_TASKS.values():
        return "qa"
    if dataset in REC_TASKS.values():
        return "crs"
    known = ", ".join([*QA_TASKS.values(), *REC_TASKS.values()])
    raise BenchError(f"no lm-eval task reads dataset {dataset!r}; bench lm-eval evaluates: {known}")


def evaluate(args: argparse.Namespace) -> int:
    from benchmark.api import Method
    from benchmark.runner import (
        MethodPool,
        RunRequest,
        Stopwatch,
        episode_seed,
        resolve,
        seed_everything,
        set_up,
        start_episode,
    )
    from tasks.lm_eval import INJECTING_TASK

    dataset = args.dataset
    kind = _kind(dataset)
    tasks = [t.strip() for t in (args.tasks or f"selfparam_{dataset}").split(",") if t.strip()]
    request = RunRequest(
        method=args.method or floor_method(),
        task=INJECTING_TASK[kind],
        dataset=dataset,
        model=args.model,
        profile=args.profile,
        seed=args.seed,
        device=args.device,
        overrides=parse_overrides(args.overrides),
    )
    resolved = resolve(request)
    run = resolved.params["run"]
    lm, resolved_task = set_up(resolved)
    task: Any = resolved_task  # a QA or a recommendation task: each branch below uses its own attributes
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="selfparam-lmeval-"))

    # Injection as the runner does it: the task's first episode, its method built and set up under
    # the same seeds.
    episode = task.episodes()[0]
    seed_everything(episode_seed(args.seed, episode))
    watch = Stopwatch()
    started = start_episode(task, episode, MethodPool(resolved, lm), watch)
    method, plan = started.method, started.plan
    contexts = plan.setup
    inject_s = watch.seconds.get("inject_s", 0.0)
    if kind == "qa":
        from tasks.lm_eval.export import export_qa

        doc_ids = plan.record["context_ids"]
    if type(method).generate is not Method.generate:
        print(
            f"note: {resolved.method_cls.name} answers through its own generate(); lm-eval sees only its model's "
            "weights, not what it retrieves or remembers outside them",
            file=sys.stderr,
        )

    if kind == "qa":
        export_qa(dataset, data_dir, documents=[task.by_id[d] for d in doc_ids], lm=lm)
        gen_kwargs = None
    else:
        from tasks.lm_eval.export_rec import export_task

        export_task(task, data_dir, lm)
        gen_kwargs = {"max_gen_toks": task.params.max_list_tokens}
    results = run_lm_eval(method.model, lm, tasks, data_dir, run.eval_batch_size, args.limit, gen_kwargs)

    report: dict[str, Any] = {
        "method": resolved.method_cls.name,
        "model": resolved.model,
        "dataset": dataset,
        "profile": args.profile,
        "seed": args.seed,
        "injected": len(contexts),
        "inject_s": inject_s,
        "tasks": {},
    }
    for name in tasks:
        samples = results["samples"].get(name, [])
        entry: dict[str, Any] = {
            "lm_eval": _lm_eval_scores(results["results"].get(name, {})),
            "questions": len(samples),
        }
        if kind == "qa":
            entry["harness_on_lm_eval_predictions"] = harness_scores(samples, args.seed)
            if not args.no_harness and name == f"selfparam_{dataset}":
                entry.update(harness_generation(task, method, doc_ids, samples, args.seed))
        else:
            entry["harness_on_lm_eval_predictions"] = rec_scores(task, samples, [_response(s) for s in samples])
            if not args.no_harness:
                entry.update(rec_harness_generation(task, method, samples))
        report["tasks"][name] = entry
    print_report(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"scores: {args.output}")
    return 0


def floor_method() -> str:
    """The registered method every gain is measured against (its class declares role "floor")."""
    from benchmark.registry import METHODS

    floors = [name for name, cls in METHODS.items() if cls.role == "floor"]
    if not floors:
        raise BenchError("no registered method declares role 'floor'; name one with --method")
    return floors[0]


def run_lm_eval(
    model: Any,
    lm: Any,
    tasks: list[str],
    data_dir: Path,
    batch_size: int,
    limit: int | None,
    gen_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """lm-eval's simple_evaluate on an in-memory model, under the harness's precision settings."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if not hasattr(model, "config") or not hasattr(model, "generate"):
        raise BenchError("this method's model is not a transformers model; lm-eval's HFLM cannot wrap it")
    manager = task_manager(data_dir)
    unknown = [t for t in tasks if t not in manager.all_subtasks]
    if unknown:
        raise BenchError(f"unknown lm-eval task(s) {', '.join(unknown)}; `bench lm-eval --list` shows them")
    import torch

    # HFLM runs its forward passes under its own autocast setting, which must match the harness's.
    autocast = torch.bfloat16 if lm.precision == "bf16-autocast" else None
    wrapped = HFLM(
        pretrained=model,
        tokenizer=lm.tokenizer,
        batch_size=batch_size,
        max_length=lm.max_length,
        mixed_precision_dtype=autocast,
    )
    with lm.autocast():
        results = lm_eval.simple_evaluate(
            model=wrapped,
            tasks=tasks,
            task_manager=manager,
            limit=limit,
            log_samples=True,
            verbosity="ERROR",
            bootstrap_iters=0,
            gen_kwargs=gen_kwargs,
        )
    if results is None:
        raise BenchError("lm-eval returned no results")
    scored: dict[str, Any] = results
    return scored


def _lm_eval_scores(block: dict[str, Any]) -> dict[str, float]:
    return {
        key.split(",")[0]: value
        for key, value in block.items()
        if "," in key and "stderr" not in key and isinstance(value, (int, float))
    }


def _response(sample: dict[str, Any]) -> str:
    """The generated text lm-eval logged for one sample."""
    response = sample["resps"][0]
    text: str = response[0] if isinstance(response, list) else response
    return text


def lm_eval_prediction(sample: dict[str, Any]) -> str:
    """The answer lm-eval's sample holds, cut as the harness cuts it (first line, no "Answer:")."""
    from benchmark.models import first_answer_line

    return first_answer_line(_response(sample))


def harness_scores(samples: list[dict[str, Any]], seed: int) -> dict[str, float]:
    """The harness's scorer (tasks.qa) on lm-eval's predictions: per-context means, then the mean."""
    from benchmark.metrics import qa_acc, qa_f1
    from tasks.qa import per_context, summarize_contexts

    if not samples:
        return {}
    records = []
    for sample in samples:
        prediction = lm_eval_prediction(sample)
        answers = sample["doc"]["answers"]
        records.append(
            {
                "context_id": sample["doc"]["context_id"],
                "f1": qa_f1(prediction, answers),
                "acc": qa_acc(prediction, answers),
            }
        )
    scores = summarize_contexts(list(per_context(records).values()), seed)
    return {"f1": scores["qa_f1"]["mean"], "acc": scores["acc"]["mean"]}


def harness_generation(
    task: Any, method: Any, doc_ids: list[str], samples: list[dict[str, Any]], seed: int
) -> dict[str, Any]:
    """The harness's own answers on the questions lm-eval asked, and how many predictions agree."""
    from tasks.qa import per_context, summarize_contexts

    asked = {(s["doc"]["context_id"], s["doc"]["question"]): lm_eval_prediction(s) for s in samples}
    step = task.probe_step(method, doc_ids)
    predictions = task.score(step, method.answer(step.prompts))["predictions"]
    records = [r for r in predictions if (r["context_id"], r["question"]) in asked]
    scores = summarize_contexts(list(per_context(records).values()), seed)
    same = sum(asked[(r["context_id"], r["question"])] == r["prediction"] for r in records)
    return {
        "harness_generation": {"f1": scores["qa_f1"]["mean"], "acc": scores["acc"]["mean"]},
        "identical_predictions": same,
    }


def rec_scores(task: Any, samples: list[dict[str, Any]], replies: list[str]) -> dict[str, float]:
    """Recall@1 r1..r4 of replies to the samples' points, by the recommendation task's own scorer."""
    from tasks.crs_scoring import FILTERS

    by_id = {p.id: p for p in task.probes}
    records = task.score_replies([by_id[s["doc"]["id"]] for s in samples], replies)
    scores = {}
    for name in FILTERS:
        hits = [h for r in records for h in r["hits"][name]["1"]]
        scores[f"recall@1_{name}"] = sum(hits) / len(hits) if hits else float("nan")
    return scores


def rec_harness_generation(task: Any, method: Any, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The harness's own replies to the points lm-eval asked, scored, and how many are identical."""
    prompts = [
        Prompt(
            s["doc"]["id"],
            task.prompts[s["doc"]["id"]],
            chat=True,
            max_new_tokens=task.params.max_list_tokens,
            multiline=True,
        )
        for s in samples
    ]
    replies = method.generate(prompts)
    same = sum(reply.strip() == _response(s).strip() for reply, s in zip(replies, samples))
    return {"harness_generation": rec_scores(task, samples, replies), "identical_predictions": same}


def print_report(report: dict[str, Any]) -> None:
    from tabulate import tabulate

    print(
        f"{report['method']} on {report['dataset']} (model {report['model']}, profile {report['profile']}, "
        f"seed {report['seed']}): {report['injected']} contexts injected in {report['inject_s']:.1f}s"
    )
    for name, entry in report["tasks"].items():
        n = entry["questions"]
        sources = [
            ("lm-eval", entry["lm_eval"]),
            ("harness scorer, lm-eval's answers", entry["harness_on_lm_eval_predictions"]),
        ]
        if "harness_generation" in entry:
            sources.append(("harness answers and scorer", entry["harness_generation"]))
        columns = list(dict.fromkeys(k for _, scores in sources for k in scores))
        rows = [[source, *(_f(scores.get(c)) for c in columns)] for source, scores in sources]
        print()
        print(
            tabulate(
                rows,
                headers=[f"{name} ({n} questions)", *(COLUMN_NAMES.get(c, c) for c in columns)],
                tablefmt="github",
                disable_numparse=True,
            )
        )
        if "identical_predictions" in entry:
            print(f"identical answers, lm-eval vs harness: {entry['identical_predictions']}/{n}")


COLUMN_NAMES = {"f1": "QA-F1", "acc": "acc", "em": "EM"}


def _f(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{value:.4f}"
