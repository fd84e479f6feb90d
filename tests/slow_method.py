"""A method that waits in its second batch until it is stopped, for tests that stop or race a run
in another process: ``python tests/slow_method.py run ...`` is ``bench run ...`` with it registered.

It waits only where ``$SLOW_METHOD_MARKER`` names a file, which it creates when it starts waiting;
elsewhere (the test's own process) it is an instant method with the same result file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from benchmark.registry import register_method
from benchmark.types import Context
from methods.base import Method

NAME = "test-slow"
MARKER_ENV = "SLOW_METHOD_MARKER"
WAITS_IN = "fictional-0001"  # the context of the second batch with num_contexts=1


class SlowMethod(Method):
    description = "waits in the second batch until stopped (tests only)"

    def inject(self, contexts: list[Context]) -> None:
        marker = os.environ.get(MARKER_ENV)
        if marker and contexts[0].id == WAITS_IN:
            Path(marker).touch()
            time.sleep(300)


def register() -> type:
    return register_method(NAME)(SlowMethod)


if __name__ == "__main__":
    from benchmark.app.cli import main

    register()
    sys.exit(main(sys.argv[1:]))
