"""The peak resident size of one run, also when several runs share a process.

``getrusage``'s ``ru_maxrss`` is the process's peak since it started: a second run in the same
process (an in-process sweep, a script calling ``runner.run`` twice) would report the first one's
peak as its own. Linux (4.0 and later) lets a process reset its high-water mark, so each run resets
it when it starts and reads ``VmHWM`` at the end; where that is not possible the run reports the
process's peak and says so (``peak_rss_scope``).
"""

from __future__ import annotations

import resource
import sys


def reset_peak_rss() -> bool:
    """Start a new peak for this process: True where the system allows it (Linux), else False."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak resident set size to the current one
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's resident-size high-water mark: since the last ``reset_peak_rss``, else since it
    started. ``VmHWM`` rather than ``ru_maxrss``, which also keeps the peak at the exit of any thread
    that ended earlier and so survives the reset."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


def reset_peak_gpu_memory() -> None:
    """Start a new peak of GPU memory allocated by torch, on every visible GPU."""
    import torch

    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        torch.cuda.reset_peak_memory_stats(index)
