"""Which malloc serves tensor memory while training on a CPU.

PyTorch's CPU allocator hands every tensor to the C library's malloc. glibc's malloc does poorly with
a training loop's thousands of large blocks of many sizes a step: freed blocks fragment its heap,
finding a fit takes longer (``_int_malloc`` was 13% of the CPU samples of a SELF-PARAM run on
``squad``, the other OpenMP thread spinning meanwhile) and the heap grows. jemalloc, which PyTorch's
CPU tuning guide recommends, keeps blocks in size classes. Quick SELF-PARAM on 10 ``fictional``
contexts, two pairs of runs alternating the two, same answers: peak RSS 3.2 GiB instead of 4.1 both
times (2.5 instead of 3.9 GiB while training), wall time 267 s vs 357 s and 290 s vs 304 s. The
demo (sequential, 4 x 3 contexts), jemalloc, glibc, jemalloc in a row: 5.1, 10.3 and 6.4 min.
A process cannot change its malloc once running, so ``preload_jemalloc`` starts ``bench``
again with jemalloc preloaded (``LD_PRELOAD``) when it finds one: ``$SELFPARAM_BENCH_MALLOC`` (a
library's path, or ``glibc`` to keep glibc's), else the copy the ``ray`` package ships (installed
by ``make``), else the system's ``libjemalloc.so.2``. Result files record the malloc in use.

Without jemalloc, ``keep_freed_memory`` tunes glibc's malloc: blocks above its
mmap threshold (128 KiB by default, adapting only up to 32 MiB) are unmapped when freed and mapped
again, zero-filled page by page, at the next step. Training SELF-PARAM on SmolLM2-135M spent about a
tenth of its time in the kernel this way; with the thresholds raised, freed blocks are reused and
training ran about 7% faster on the same machine. The peak memory stays the same: the heap keeps at
most what the process needed at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import sys
from pathlib import Path

from benchmark.errors import BenchError

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap: a step's largest tensors are its full-vocabulary
# logits (~40 MB). Some glibc builds cap the threshold at 32 MiB; that is the fallback.
MMAP_THRESHOLDS = (256 << 20, 32 << 20)
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap kept for reuse

MALLOC_ENV = "SELFPARAM_BENCH_MALLOC"
_PRELOADED_ENV = "_SELFPARAM_BENCH_PRELOADED"  # set on the re-executed process: never twice
SYSTEM_JEMALLOC = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)


def jemalloc_library() -> Path | None:
    """The jemalloc to preload: ``$SELFPARAM_BENCH_MALLOC``, Ray's bundled copy, or the system's."""
    chosen = os.environ.get(MALLOC_ENV, "")
    if chosen == "glibc":
        return None
    if chosen:
        if not Path(chosen).is_file():
            raise BenchError(f"{MALLOC_ENV}={chosen!r}: no such file (a malloc library's path, or glibc)")
        return Path(chosen)
    ray = importlib.util.find_spec("ray")  # locates the package without importing it
    if ray is not None and ray.submodule_search_locations:
        for folder in ray.submodule_search_locations:
            bundled = Path(folder) / "core" / "libjemalloc.so"
            if bundled.is_file():
                return bundled
    return next((Path(p) for p in SYSTEM_JEMALLOC if Path(p).is_file()), None)


def preload_jemalloc() -> None:
    """Run this process again, from the start, with jemalloc preloaded; a no-op when it is loaded
    already, has been tried, or none is found (off Linux, always). Call it first thing in a
    command-line entry point: whatever ran before it runs twice."""
    if not sys.platform.startswith("linux") or os.environ.get(_PRELOADED_ENV) or malloc_in_use() != "glibc":
        return
    library = jemalloc_library()
    if library is None:
        log.info("no jemalloc found: glibc's malloc with raised thresholds (slower, see benchmark/allocator.py)")
        return
    preload = f"{library}:{os.environ['LD_PRELOAD']}" if os.environ.get("LD_PRELOAD") else str(library)
    env = {**os.environ, _PRELOADED_ENV: str(library), "LD_PRELOAD": preload}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def malloc_in_use() -> str:
    """``jemalloc`` when a jemalloc is mapped into this process, else the C library's name."""
    try:
        with open("/proc/self/maps") as maps:
            if "jemalloc" in maps.read():
                return "jemalloc"
    except OSError:
        pass
    return "glibc" if sys.platform.startswith("linux") else "system"


def jemalloc_decay_ms() -> tuple[int, int] | None:
    """jemalloc's (dirty, muzzy) page decay times in this process (-1: never returned to the kernel);
    None when jemalloc is not in use. Recorded with the cost figures because ``MALLOC_CONF`` moves
    them: jemalloc gives pages unused for ``dirty_decay_ms`` (10 s by default) back to the kernel,
    and a training step that reuses them faults them in and zeroes them again (about 210,000
    page faults and a seventh of the CPU time a quick SELF-PARAM step). Keeping every freed page
    (``MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1``) cut the faults to 84,000 a step but was
    slower (2.0 and 2.2 s against 1.65 and 1.79 s a step, alternating runs) and grew the process
    to 12.6 GiB peak instead of 2.8 (why it grows was not looked into). The default is kept."""
    if malloc_in_use() != "jemalloc":
        return None
    try:
        mallctl = ctypes.CDLL(None).mallctl  # the preloaded library's symbol
    except (OSError, AttributeError):
        return None
    values = []
    for name in (b"opt.dirty_decay_ms", b"opt.muzzy_decay_ms"):
        value, size = ctypes.c_ssize_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
        if mallctl(name, ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
            return None
        values.append(value.value)
    return values[0], values[1]


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True if they were set.

    A no-op off Linux/glibc, under jemalloc, and when the user has set malloc tunables in the
    environment.
    """
    if malloc_in_use() != "glibc" or any(
        name in os.environ for name in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = any(mallopt(_M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS)
    ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and ok
    log.debug("malloc thresholds raised: %s", ok)
    return ok
