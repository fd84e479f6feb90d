"""One exception type for every user-facing problem.

The CLI prints a ``BenchError`` as a single line on stderr and exits with code 2; anything else
is a bug and keeps its traceback.
"""


class BenchError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class UnavailableError(BenchError):
    """A method or task that cannot run on this machine (missing checkpoint, GPU, package)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers, Ray and ``kill`` send), raised where Ctrl-C raises KeyboardInterrupt.

    A subclass, so every ``except KeyboardInterrupt`` and ``finally`` that keeps a run's partial log
    and releases its lock on Ctrl-C does the same on SIGTERM.
    """
