"""The throughput benchmark runs end to end on the tiny model and reports consistent figures."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import pytest

from benchmark.allocator import keep_freed_memory, malloc_in_use
from benchmark.app.perf import report, run_perf


def test_perf_measures_both_loops_and_their_ratio():
    figures = run_perf(
        model="tiny-random-llama",
        profile="smoke",
        num_contexts=2,
        official_pairs=2,
        rounds=1,
        overrides={"share_prefix": "8", "prompt_style": "run"},
    )
    assert figures["official_tokens"] > 0 and figures["ours_tokens"] > 0
    assert figures["ratio"] == figures["ours_example_tok_s"] / figures["official_tok_s"]
    assert figures["ratio_computed"] == figures["ours_tok_s"] / figures["official_tok_s"]
    # The demonstration prefix is shared: run once per batch, so fewer tokens computed than trained on.
    assert figures["ours_example_tokens"] > figures["ours_tokens"]
    assert figures["ours_example_tok_s"] > figures["ours_tok_s"]
    text = report(figures)
    assert "whole sequence" in text and "ratio here / official" in text and f"{figures['ratio']:.2f}x" in text


def test_malloc_thresholds_are_raised_unless_the_user_tuned_malloc(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")
    assert keep_freed_memory() is False  # the user's own malloc settings win
    monkeypatch.delenv("GLIBC_TUNABLES")
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is (on_glibc and malloc_in_use() == "glibc")  # not jemalloc's to tune


def test_openmp_threads_sleep_on_a_busy_machine_and_the_users_choice_wins(monkeypatch):
    from benchmark import threads

    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.2)
    assert threads.choose_omp_wait_policy() == "default"  # idle: libgomp spins briefly, then sleeps
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.5)
    assert threads.choose_omp_wait_policy() == "PASSIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.choose_omp_wait_policy() == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    assert threads.choose_omp_wait_policy() == "GOMP_SPINCOUNT=1000"
    assert "OMP_WAIT_POLICY" not in os.environ


def test_busy_cores_sees_a_spinning_process():
    from benchmark.threads import busy_cores

    if not sys.platform.startswith("linux"):
        pytest.skip("busy_cores reads /proc/stat on Linux only")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(0.3) >= 0.6  # one core's worth, give or take what else runs
    finally:
        spinner.kill()
        spinner.wait()


def _malloc_of_child(env_value: str | None, **extra: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter that preloads jemalloc as ``bench`` does, then names its malloc,
    jemalloc's page decay times and its extent fit."""
    drop = ("LD_PRELOAD", "_SELFPARAM_BENCH_PRELOADED", "SELFPARAM_BENCH_MALLOC", "MALLOC_CONF")
    env = {k: v for k, v in os.environ.items() if k not in drop} | extra
    if env_value is not None:
        env["SELFPARAM_BENCH_MALLOC"] = env_value
    code = (
        "import sys\n"
        "from benchmark.allocator import preload_jemalloc, malloc_in_use, jemalloc_decay_ms, jemalloc_max_active_fit\n"
        "from benchmark.errors import BenchError\n"
        "try: preload_jemalloc()\n"
        "except BenchError as e: print(e); sys.exit(2)\n"
        "print(malloc_in_use(), jemalloc_decay_ms(), jemalloc_max_active_fit())"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_bench_restarts_itself_under_jemalloc_unless_told_glibc():
    from benchmark.allocator import jemalloc_library

    if jemalloc_library() is None:
        pytest.skip("no jemalloc on this machine (neither ray's nor the system's)")
    # bench's own settings: freed pages kept, any cached extent split for a smaller request
    assert _malloc_of_child(None).stdout.strip() == "jemalloc (-1, -1) 20"
    # a user's MALLOC_CONF replaces them whole, and what is recorded is what is in force
    user = _malloc_of_child(None, MALLOC_CONF="dirty_decay_ms:5000").stdout.split()
    assert user[:2] == ["jemalloc", "(5000,"] and user[-1] != "20"
    assert _malloc_of_child("glibc").stdout.strip() == "glibc None None"
    missing = _malloc_of_child("/nonexistent/libjemalloc.so")
    assert missing.returncode == 2 and "SELFPARAM_BENCH_MALLOC" in missing.stdout
