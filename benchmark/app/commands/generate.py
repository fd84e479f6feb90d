"""``bench generate``: write (and cache) the target sentences of a data set's contexts ahead of runs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from benchmark.config import DEFAULT_MODELS, RunParams
from benchmark.errors import BenchError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate target QA sentences for a data set's contexts (cached on disk)"
    )
    parser.add_argument("--dataset", default="fictional", help="registered QA data set or a .jsonl file")
    parser.add_argument(
        "--generator",
        default="local",
        help="dataset | cloze | local | openai | implications, optionally +grounded (e.g. local+grounded)",
    )
    parser.add_argument("--num-contexts", type=int, default=20, help="the first N contexts (0 = all)")
    parser.add_argument(
        "--count", type=int, default=0, help="sentences per context (0 = all the data set has / 10 for generators)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model", help="model for the local and implications generators (default: smollm2-135m-instruct)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-path", default="", help="data file or folder instead of the default")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (else $OPENAI_BASE_URL)")
    parser.add_argument("--api-model", help="endpoint model name (else $SELFPARAM_BENCH_OPENAI_MODEL)")
    parser.add_argument(
        "--temperature", type=float, help="sampling temperature of the local generator (default 1, the official value)"
    )
    parser.add_argument("--out", type=Path, help="also write {context_id, sentences} lines to this JSONL file")
    parser.add_argument("--show", type=int, default=3, help="print this many sentences per context (2 contexts)")
    parser.set_defaults(handler=cmd_generate, runs_a_model=True)


def cmd_generate(args: argparse.Namespace) -> int:
    from benchmark.grounding import grounding_counts, split_generator
    from benchmark.targets import NEEDS_MODEL, check_no_leakage, make_targets
    from tasks.qa import load_documents

    if args.base_url:
        os.environ["OPENAI_BASE_URL"] = args.base_url
    if args.api_model:
        os.environ["SELFPARAM_BENCH_OPENAI_MODEL"] = args.api_model
    if args.temperature is not None:
        os.environ["SELFPARAM_BENCH_LOCAL_TEMPERATURE"] = str(args.temperature)
    if args.num_contexts < 0 or args.count < 0:
        raise BenchError("--num-contexts and --count must be >= 0")
    documents = load_documents(args.dataset, args.data_path, args.num_contexts or None, 0)
    lm = None
    if split_generator(args.generator)[0] in NEEDS_MODEL:
        from benchmark.models import load_lm

        lm = load_lm(
            args.model or DEFAULT_MODELS["quick"], device=args.device, precision="bf16-autocast", seed=args.seed
        )
    run = RunParams(targets=args.generator, num_targets=args.count)
    targets = make_targets(documents, run, lm, args.seed)
    check_no_leakage(documents, targets)
    total = sum(len(v) for v in targets.values())
    grounded = sum(grounding_counts(doc.text, targets[doc.id])["grounded"] for doc in documents)
    print(
        f"{total} target sentences for {len(documents)} contexts of {args.dataset} "
        f"(generator {args.generator}, seed {args.seed}); no probe question among them; "
        f"{grounded} ({grounded / total if total else 0:.0%}) grounded in their context"
    )
    for doc in documents[:2]:
        print(f"\n{doc.id}: {doc.text[:120]}{'…' if len(doc.text) > 120 else ''}")
        for sentence in targets[doc.id][: args.show]:
            print(f"  {sentence}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", encoding="utf-8") as handle:
            for doc in documents:
                handle.write(json.dumps({"context_id": doc.id, "sentences": targets[doc.id]}) + "\n")
        print(f"\nwritten: {args.out}")
    return 0
