"""A run's peak memory is its own, also after a larger run in the same process."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmark.peak_memory import peak_rss_bytes, reset_peak_rss


@pytest.mark.skipif(sys.platform != "linux", reason="the high-water mark can be reset on Linux only")
def test_reset_starts_a_new_peak():
    big = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
    before = peak_rss_bytes()
    del big
    assert reset_peak_rss()
    after = peak_rss_bytes()
    assert before - after > 300 * 2**20  # the freed 400 MiB no longer count
    small = np.ones(100 * 2**20 // 8)
    assert peak_rss_bytes() >= after + 80 * 2**20  # and the new peak grows with new use
    del small
