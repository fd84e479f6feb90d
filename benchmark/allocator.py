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

Unless ``MALLOC_CONF`` is set, the preloaded jemalloc runs with ``JEMALLOC_CONF``: freed pages are
kept (never given back to the kernel), and a cached free extent may serve a request of any smaller
size. With jemalloc's defaults a training step faulted in and zeroed about 3 GiB of pages again
(pages unused for up to 10 s are returned); keeping them alone made the heap grow by 55-600 MB a
step, because freed neighbours coalesce into extents more than 64 times (``lg_extent_max_active_fit``
6) the size of the next requests, which jemalloc then will not split. With both settings a quick
SELF-PARAM step on a 2-core AVX2 CPU faulted 440 pages instead of 790,000, the resident size stayed
flat from the second step on (2.8 GiB), and steps took about three quarters of the time.

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
# Keep freed pages, and let any cached extent be split for a smaller request (2**20 times smaller).
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1,lg_extent_max_active_fit:20"
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
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)  # a user's own wins, whole
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


def _jemalloc_option(name: str) -> int | None:
    """A numeric ``opt.<name>`` of the jemalloc in this process; None without jemalloc."""
    if malloc_in_use() != "jemalloc":
        return None
    try:
        mallctl = ctypes.CDLL(None).mallctl  # the preloaded library's symbol
    except (OSError, AttributeError):
        return None
    value, size = ctypes.c_ssize_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
    if mallctl(f"opt.{name}".encode(), ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
        return None
    return value.value


def jemalloc_decay_ms() -> tuple[int, int] | None:
    """jemalloc's (dirty, muzzy) page decay times in this process (-1: never returned to the kernel);
    None when jemalloc is not in use. Recorded with the cost figures because ``MALLOC_CONF`` moves
    them (``JEMALLOC_CONF`` above)."""
    dirty, muzzy = _jemalloc_option("dirty_decay_ms"), _jemalloc_option("muzzy_decay_ms")
    return None if dirty is None or muzzy is None else (dirty, muzzy)


def jemalloc_max_active_fit() -> int | None:
    """log2 of how many times larger than a request a cached free extent may be and still serve it
    (jemalloc's default 6; ``JEMALLOC_CONF`` sets 20); None when jemalloc is not in use."""
    return _jemalloc_option("lg_extent_max_active_fit")


def malloc_record() -> dict[str, object]:
    """The malloc in use and the jemalloc settings that cost figures depend on, as results and
    ``bench perf`` record them: decay (dirty, muzzy; -1: pages kept) and the extent fit."""
    return {
        "malloc": malloc_in_use(),
        "malloc_decay_ms": jemalloc_decay_ms(),
        "malloc_lg_max_active_fit": jemalloc_max_active_fit(),
    }


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
