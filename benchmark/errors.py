"""One exception type for every user-facing problem.

The CLI prints a ``BenchError`` as a single line on stderr and exits with code 2; anything else
is a bug and keeps its traceback.
"""


class BenchError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class UnavailableError(BenchError):
    """A method or task that cannot run on this machine (missing checkpoint, GPU, package)."""
