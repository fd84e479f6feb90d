"""The throughput benchmark runs end to end on the tiny model and reports consistent figures."""

from __future__ import annotations

import platform
import sys

from benchmark.allocator import keep_freed_memory
from benchmark.perf import report, run_perf


def test_perf_measures_both_loops_and_their_ratio():
    figures = run_perf(model="tiny-random-llama", profile="smoke", num_contexts=2, official_pairs=2, rounds=1,
                       overrides={"share_prefix": "8", "prompt_style": "run"})
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
    assert keep_freed_memory() is on_glibc
