"""How idle OpenMP threads wait: spin on an idle CPU, sleep on a busy one.

A training step is thousands of small operations. Between two of them libgomp's worker threads
either spin for a while (its default) or sleep at once (``OMP_WAIT_POLICY=PASSIVE``). Measured with
SELF-PARAM training of SmolLM2-135M on 2 cores:

- alone on the machine, spinning: 556 tok/s, both threads busy; sleeping: 372 tok/s, the worker
  idle half the time, waking up for each operation;
- two such runs at once, spinning: 99 tok/s each (spinning threads take the cores from working
  ones); sleeping: 322 tok/s each.

So the policy follows the CPU's load when the harness starts; setting ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` yourself always wins. Runs started together on an idle machine all spin: give
them ``OMP_NUM_THREADS`` that add up to the cores, or ``OMP_WAIT_POLICY=PASSIVE``.
"""

from __future__ import annotations

import os

BUSY_LOAD = 1.0  # one-minute load average from which another job competes for the cores


def choose_omp_wait_policy() -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when the machine is busy; returns the policy in effect."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return omp_wait_policy()
    try:
        busy = os.getloadavg()[0] >= BUSY_LOAD
    except (OSError, AttributeError):  # no load average on this platform
        busy = True
    if busy:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return omp_wait_policy()


def omp_wait_policy() -> str:
    """The policy in effect: the environment's, or libgomp's default (spin, then sleep)."""
    if "GOMP_SPINCOUNT" in os.environ:
        return f"GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"
    return os.environ.get("OMP_WAIT_POLICY", "default")
