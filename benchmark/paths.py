"""Where the harness finds local copies of the public data sets, and where it keeps its cache."""

from __future__ import annotations

import os
from pathlib import Path

from benchmark.results import REPO_ROOT


def cache_dir() -> Path:
    """Where converted models and generated sentences live (``$SELFPARAM_BENCH_CACHE``)."""
    root = os.environ.get("SELFPARAM_BENCH_CACHE") or Path.home() / ".cache" / "selfparam-bench"
    return Path(root)


def shared_data_dir() -> Path:
    """``$SELFPARAM_BENCH_DATA``, else ``shared/data`` beside the repository checkout."""
    env = os.environ.get("SELFPARAM_BENCH_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def shared_data(*parts: str) -> Path | None:
    """A file or folder under the shared data folder, or None when it is not there."""
    path = shared_data_dir().joinpath(*parts)
    return path if path.exists() else None
