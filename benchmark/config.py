"""Profiles and ``--set`` overrides.

Every tunable lives in a dataclass (``RunParams`` here, a ``Params`` class on each method and task).
A profile (``smoke``, ``quick``, ``paper``) replaces some defaults; ``--set key=value`` replaces any
field afterwards. Keys are ``run.x``, ``task.x``, ``method.x`` or a bare ``x`` found in exactly one
of those scopes. The resolved values are recorded in every result file.

A numeric field's allowed values are declared beside it in the class attribute ``RANGES``, e.g.
``RANGES: ClassVar[dict[str, str]] = {"lr": "> 0", "lora_dropout": "[0, 1)", "epochs": ">= 0"}``:
a bound (``>= 0``, ``> 0``, ``<= 1``, ``< 1``) or an interval (``[0, 1)``, ``(0, 1]``). A subclass adds
to its bases' ranges. ``build_params`` checks them once the values are resolved, so a setting out of
range stops the run before a model loads instead of failing (or silently running) deep inside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from benchmark.errors import BenchError

PROFILES = ("smoke", "quick", "paper")
SCOPES = ("run", "task", "method")


@dataclass
class RunParams:
    """Settings shared by every method and task."""

    prompt_format: str = "raw"  # "raw" (the paper's "Question: q Answer:") or "chat"
    fewshot: int = 1  # demonstrations before a raw prompt (0 = the paper's bare prompt)
    max_new_tokens: int = 10
    eval_batch_size: int = 16
    precision: str = "bf16-autocast"  # "fp32" | "bf16-autocast" | "bf16"
    # Target-sentence generator: dataset | cloze | local | openai | implications (statements, not QA
    # pairs), optionally "+grounded" (keep only grounded sentences: a QA pair's answer occurs in the
    # context, a statement's content words mostly do), e.g. "local+grounded".
    targets: str = "dataset"
    num_targets: int = 0  # target sentences per context; 0 = all the generator gives
    data_path: str = ""  # a data file or folder instead of the data set's default location

    # fewshot: at most the three DEMONSTRATIONS in benchmark/models/prompts.py (more would silently be three)
    RANGES: ClassVar[dict[str, str]] = {
        "fewshot": "[0, 3]",
        "max_new_tokens": ">= 1",
        "eval_batch_size": ">= 1",
        "num_targets": ">= 0",
    }


RUN_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"eval_batch_size": 8, "precision": "fp32"},
    # Three demonstrations: C+Q F1 0.58 instead of 0.52 with one on `fictional`, and a model
    # fine-tuned on raw contexts (FT(C)) keeps answering in the prompt's format.
    "quick": {"fewshot": 3},
    "paper": {"precision": "bf16", "targets": "openai", "fewshot": 0},
    # The official code trains on a fresh slice of 10 pairs per epoch: 50 epochs x 10 for batch
    # injection, 20 x 10 for sequential (methods take them in turn: ``targets_per_epoch``).
    "paper@batch": {"num_targets": 500},
    "paper@sequential": {"num_targets": 200},
}

DEFAULT_MODELS = {
    "smoke": "tiny-random-llama",
    "quick": "smollm2-135m-instruct",
    "paper": "mistralai/Mistral-7B-v0.1",
}


def parse_value(key: str, raw: str, default: Any, annotation: Any = None) -> Any:
    """Convert a ``--set`` string to the type of the field it replaces."""
    kind = type(default)
    try:
        if isinstance(default, bool):
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, str):
            return raw
        if isinstance(default, (list, tuple)):
            items = [s.strip() for s in raw.split(",") if s.strip()]
            inner = type(default[0]) if default else _inner_type(annotation)
            return kind(parse_value(key, s, inner()) for s in items) if inner else kind(items)
        if default is None:
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                return raw
    except ValueError:
        pass
    expected = {bool: "true/false", int: "an integer", float: "a number"}.get(kind, kind.__name__)
    raise BenchError(f"bad value for --set {key}: {raw!r} is not {expected}")


def _inner_type(annotation: Any) -> type | None:
    args = typing.get_args(annotation)
    return args[0] if args and isinstance(args[0], type) else None


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["a=1", "method.lr=2e-5"]`` -> ``{"a": "1", "method.lr": "2e-5"}``."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"bad --set {pair!r}: expected key=value")
        result[key.strip()] = value.strip()
    return result


TASK_SEP = "@"  # "profile@task" keys in a ``profiles`` table


def profile_values(profiles: Mapping[str, Mapping[str, Any]], profile: str, task: str | None) -> dict[str, Any]:
    """A profile's values, with its entry for the task (``"quick@sequential"``) layered on top.

    A method's best regime can differ by task (one context per injection in sequential injection,
    many at once in batch injection), so a profile may name task-specific values.
    """
    values = dict(profiles.get(profile, {}))
    if task is not None:
        values.update(profiles.get(f"{profile}{TASK_SEP}{task}", {}))
    return values


def build_params(
    scopes: Mapping[str, tuple[type, Mapping[str, Any]]],
    profile: str,
    overrides: Mapping[str, str],
    task: str | None = None,
) -> dict[str, Any]:
    """Instantiate each scope's dataclass with its profile defaults, then apply ``--set`` overrides.

    ``scopes`` maps a scope name to (dataclass, {profile or "profile@task": {field: value}}).
    """
    if profile not in PROFILES:
        raise BenchError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    values: dict[str, dict[str, Any]] = {}
    fields: dict[str, dict[str, dataclasses.Field[Any]]] = {}
    hints: dict[str, dict[str, Any]] = {}
    for scope, (cls, profiles) in scopes.items():
        fields[scope] = {f.name: f for f in dataclasses.fields(cls)}
        hints[scope] = typing.get_type_hints(cls)
        values[scope] = profile_values(profiles, profile, task)
        unknown = set(values[scope]) - set(fields[scope])
        if unknown:
            raise ValueError(f"profile {profile!r} sets unknown {scope} fields {sorted(unknown)}")
    for key, raw in overrides.items():
        scope, name = _locate(key, fields)
        instance_default = values[scope].get(name, field_default(fields[scope][name]))
        values[scope][name] = parse_value(key, raw, instance_default, hints[scope].get(name))
    params = {scope: cls(**values[scope]) for scope, (cls, _) in scopes.items()}
    problems = [p for scope, instance in params.items() for p in range_problems(scope, instance)]
    if problems:
        raise BenchError("; ".join(problems))
    return params


_BOUND = re.compile(r"(>=|>|<=|<)\s*(\S+)")
_INTERVAL = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])")


def in_range(spec: str, value: float) -> bool:
    """Whether ``value`` lies in a range written as ``>= 0``, ``> 0``, ``[0, 1)`` and the like."""
    if match := _BOUND.fullmatch(spec.strip()):
        op, bound = match.group(1), float(match.group(2))
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]
    if match := _INTERVAL.fullmatch(spec.strip()):
        opening, low, high, closing = match.groups()
        above = value >= float(low) if opening == "[" else value > float(low)
        below = value <= float(high) if closing == "]" else value < float(high)
        return above and below
    raise ValueError(f"malformed range {spec!r}: write '>= 0', '> 0', '[0, 1)' or the like")


def declared_ranges(cls: type) -> dict[str, str]:
    """The ``RANGES`` of a parameter class and of its bases (a subclass's entry wins)."""
    ranges: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        ranges.update(vars(klass).get("RANGES", {}))
    return ranges


def range_problems(scope: str, params: Any) -> list[str]:
    """One message per numeric field of ``params`` outside its declared range (NaN and inf included)."""
    problems = []
    for name, spec in declared_ranges(type(params)).items():
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # parse_value has already insisted on the field's type
        if not (math.isfinite(value) and in_range(spec, value)):
            allowed = spec if spec.strip()[0] in "<>" else f"in {spec}"
            problems.append(f"{scope}.{name} = {value!r} is out of range: it must be {allowed}")
    return problems


def field_default(field: dataclasses.Field[Any]) -> Any:
    """A dataclass field's default value (its factory called), or None when it has none."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _locate(key: str, fields: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    scope, dot, name = key.partition(".")
    if dot and scope in fields:
        if name not in fields[scope]:
            known = ", ".join(sorted(fields[scope]))
            raise BenchError(f"unknown --set key {key!r}: {scope} has no {name!r} (known: {known})")
        return scope, name
    owners = [s for s in fields if key in fields[s]]
    if not owners:
        raise BenchError(f"unknown --set key {key!r}; `bench list --params` shows the valid keys")
    if len(owners) > 1:
        choices = " or ".join(f"{s}.{key}" for s in owners)
        raise BenchError(f"ambiguous --set key {key!r}: write {choices}")
    return owners[0], key
