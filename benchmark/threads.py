"""How idle OpenMP threads wait: spin on an idle CPU, sleep on a busy one.

A training step is thousands of small operations. Between two of them libgomp's worker threads
either spin for a while (its default) or sleep at once (``OMP_WAIT_POLICY=PASSIVE``). Measured with
SELF-PARAM training of SmolLM2-135M on 2 cores:

- alone on the machine, spinning: 556 tok/s, both threads busy; sleeping: 372 tok/s, the worker
  idle half the time, waking up for each operation;
- two such runs at once, spinning: 99 tok/s each (spinning threads take the cores from working
  ones); sleeping: 322 tok/s each.

So the policy follows how busy the CPU is when the harness starts (measured over a tenth of a
second: a load average still counts a job that has just ended); setting ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` yourself always wins. Runs started together on an idle machine all spin: give
them ``OMP_NUM_THREADS`` that add up to the cores, or ``OMP_WAIT_POLICY=PASSIVE``.
"""

from __future__ import annotations

import os
import time

BUSY_CORES = 0.75  # cores used by other processes from which they compete with our threads


def choose_omp_wait_policy() -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when the machine is busy; returns the policy in effect."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return omp_wait_policy()
    if busy_cores() >= BUSY_CORES:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return omp_wait_policy()


def busy_cores(window_s: float = 0.1) -> float:
    """Cores in use right now (Linux ``/proc/stat``); elsewhere the one-minute load average."""
    try:
        first = _cpu_ticks()
        time.sleep(window_s)
        second = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (OSError, AttributeError):
            return float("inf")  # unknown: assume busy, the safe choice
    busy, total = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * busy / total if total > 0 else 0.0


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks since boot, over all cores."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user time
    return total - idle, total


def omp_wait_policy() -> str:
    """The policy in effect: the environment's, or libgomp's default (spin, then sleep)."""
    if "GOMP_SPINCOUNT" in os.environ:
        return f"GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"
    return os.environ.get("OMP_WAIT_POLICY", "default")
