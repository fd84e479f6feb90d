"""``bench train METHOD``: train the learned part of a method that has one (memoryllm-mini).

A method opts in with a ``TrainParams`` dataclass, ``train_profiles`` and two classmethods:
``train_mechanism(lm, method_params, train_params, seed)`` saves what it learned (in the cache) and
returns a JSON-able summary, which ``bench run`` then picks up; ``cached_mechanism_problem(lm,
method_params, train_params)`` says why the cache holds no mechanism trained with these settings
(None when it does), so that ``--if-needed`` (``make reference``) trains only what is missing.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmark.app.cli import add_run_arguments, print_params
from benchmark.config import DEFAULT_MODELS, RunParams, parse_overrides
from benchmark.errors import BenchError
from benchmark.registry import METHODS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("train", help="train a method's learned mechanism (memoryllm-mini)")
    parser.add_argument("method", help="a trainable method, or all of them: all")
    parser.add_argument("--model", help="built-in name, HF id or local path (default: the profile's)")
    add_run_arguments(parser, set_help="override a parameter (run.x, method.x, train.x or a unique bare name)")
    parser.add_argument("--params", action="store_true", help="show the training parameters and exit")
    parser.add_argument(
        "--if-needed",
        action="store_true",
        help="train only where the cache holds no mechanism trained with these settings",
    )
    parser.set_defaults(handler=cmd_train, runs_a_model=True)


def trainable_methods() -> list[str]:
    return [name for name, cls in METHODS.items() if is_trainable(cls)]


def is_trainable(cls: type | None) -> bool:
    """Whether the method declares the parts listed above."""
    parts = ("train_mechanism", "cached_mechanism_problem", "TrainParams", "train_profiles")
    return cls is not None and all(hasattr(cls, part) for part in parts)


def cmd_train(args: argparse.Namespace) -> int:
    names = trainable_methods() if args.method == "all" else [args.method]
    for name in names:
        train_one(name, args)
    return 0


def train_one(name: str, args: argparse.Namespace) -> None:
    from benchmark.runner import build_run_params, load_run_lm, seed_everything

    cls: Any = METHODS.get(name)  # its training parts are checked here, not declared on Method
    if not is_trainable(cls):
        raise BenchError(f"method {name!r} has nothing to train; trainable: {', '.join(trainable_methods())}, all")
    if args.params:
        print_params(f"train {name}", cls.TrainParams, cls.train_profiles)
        return
    reason = cls.unavailable_reason()
    if reason:
        raise BenchError(f"method {name!r} cannot run here: {reason}")
    params = build_run_params(
        args.profile,
        parse_overrides(args.overrides),
        method_cls=cls,
        extra={"train": (cls.TrainParams, cls.train_profiles)},
    )
    run: RunParams = params["run"]
    seed_everything(args.seed)
    lm = load_run_lm(args.model or DEFAULT_MODELS[args.profile], run, args.device, args.seed)
    if args.if_needed:
        problem = cls.cached_mechanism_problem(lm, params["method"], params["train"])
        if problem is None:
            print(f"{name}: the cache already holds a mechanism trained with these settings; not trained again")
            return
        print(f"{name}: training ({problem})")
    summary = cls.train_mechanism(lm, params["method"], params["train"], args.seed)
    print(json.dumps(summary, indent=2, default=str))
