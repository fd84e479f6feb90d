"""A run's peak memory is its own, also after a larger run in the same process."""

from __future__ import annotations

import mmap
import sys

import pytest

from benchmark.peak_memory import peak_rss_bytes, reset_peak_rss

MiB = 2**20


def touched(size: int) -> mmap.mmap:
    """Fresh resident memory outside malloc's heap (which may hold freed pages resident)."""
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    return block


@pytest.mark.skipif(sys.platform != "linux", reason="the high-water mark can be reset on Linux only")
def test_reset_starts_a_new_peak():
    big = touched(400 * MiB)
    before = peak_rss_bytes()
    big.close()
    assert reset_peak_rss()
    after = peak_rss_bytes()
    assert before - after > 300 * MiB  # the freed 400 MiB no longer count
    small = touched(100 * MiB)
    assert peak_rss_bytes() >= after + 80 * MiB  # and the new peak grows with new use
    small.close()
