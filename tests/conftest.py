"""Shared fixtures: the tiny random model and a CLI runner that captures output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmark.paths import shared_data_dir
from benchmark.registry import DATASETS, METHODS, TASKS

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_lm():
    from benchmark.models import load_lm

    # On the CPU even where torch sees a GPU: the tests build their inputs on the CPU.
    return load_lm("tiny-random-llama", precision="fp32", device="cpu")


@pytest.fixture
def bench(capsys):
    """Run ``bench ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from benchmark.app.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def smoke_batch(bench, tmp_path):
    """Run ``method`` on a two-context smoke batch (three target sentences each, extra ``--set``
    values as given); returns its result file as a dict and what it printed. A failed run fails the
    test."""
    import json

    def run(method: str, *sets: str) -> tuple[dict, str]:
        extra = [arg for value in sets for arg in ("--set", value)]
        code, out, err = bench(
            "run", "--method", method, "--task", "batch", "--profile", "smoke",
            "--set", "num_contexts=2", "--set", "num_targets=3", *extra, "--out", tmp_path,
        )  # fmt: skip
        assert code == 0, err
        return json.loads(next(tmp_path.rglob(f"{method}__*.json")).read_text()), out

    return run


@pytest.fixture
def registrations():
    """Registrations made during the test are undone after it: a method, task or data set it adds
    (with ``@register_method`` and the like, or ``REGISTRY.register(name)(cls)``) is unregistered,
    and a registered name it removed or replaced gets its class back."""
    registries = (METHODS, TASKS, DATASETS)
    before = {registry: dict(registry.items()) for registry in registries}  # the built-ins loaded first
    yield
    for registry, items in before.items():
        for name, cls in registry.items():
            if items.get(name) is not cls:
                registry.unregister(name)
        for name, cls in items.items():
            if name not in registry:
                registry.register(name)(cls)


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder; tests that need it skip cleanly when it is absent."""
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is absent")
    return folder
