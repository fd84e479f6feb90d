"""``bench train METHOD``: train the learned part of a method that has one (memoryllm-mini).

A method opts in with a ``TrainParams`` dataclass, ``train_profiles`` and a classmethod
``train_mechanism(lm, method_params, train_params, seed)`` that saves what it learned (in the cache)
and returns a JSON-able summary; ``bench run`` then picks it up.
"""

from __future__ import annotations

import argparse
import json

from benchmark.app.cli import add_run_arguments, print_params
from benchmark.config import DEFAULT_MODELS, RunParams, parse_overrides
from benchmark.errors import BenchError
from benchmark.registry import METHODS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("train", help="train a method's learned mechanism (memoryllm-mini)")
    parser.add_argument("method")
    parser.add_argument("--model", help="built-in name, HF id or local path (default: the profile's)")
    add_run_arguments(parser, set_help="override a parameter (run.x, method.x, train.x or a unique bare name)")
    parser.add_argument("--params", action="store_true", help="show the training parameters and exit")
    parser.set_defaults(handler=cmd_train, runs_a_model=True)


def trainable_methods() -> list[str]:
    return [name for name, cls in METHODS.items() if hasattr(cls, "train_mechanism")]


def cmd_train(args: argparse.Namespace) -> int:
    from benchmark.runner import build_run_params, load_run_lm, seed_everything

    cls = METHODS.get(args.method)
    # The three parts a trainable method declares (see above).
    if not (hasattr(cls, "train_mechanism") and hasattr(cls, "TrainParams") and hasattr(cls, "train_profiles")):
        raise BenchError(f"method {args.method!r} has nothing to train; trainable: {', '.join(trainable_methods())}")
    if args.params:
        print_params(f"train {args.method}", cls.TrainParams, cls.train_profiles)
        return 0
    reason = cls.unavailable_reason()
    if reason:
        raise BenchError(f"method {args.method!r} cannot run here: {reason}")
    params = build_run_params(
        args.profile,
        parse_overrides(args.overrides),
        method_cls=cls,
        extra={"train": (cls.TrainParams, cls.train_profiles)},
    )
    run: RunParams = params["run"]
    seed_everything(args.seed)
    lm = load_run_lm(args.model or DEFAULT_MODELS[args.profile], run, args.device, args.seed)
    summary = cls.train_mechanism(lm, params["method"], params["train"], args.seed)
    print(json.dumps(summary, indent=2, default=str))
    return 0
