"""Arrows point down: the foundations (every module of ``benchmark/`` outside ``benchmark.app``) import
nothing from methods/, tasks/, leaderboard/ or the application, and importing them does no work:
the CPU-load probe that picks OpenMP's wait policy runs where ``bench`` starts, not on import."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import benchmark

UPPER = ("methods", "tasks", "leaderboard", "benchmark.app")
FOUNDATIONS = ["benchmark"] + sorted(
    info.name
    for info in pkgutil.walk_packages(benchmark.__path__, "benchmark.")
    if not (info.name + ".").startswith("benchmark.app.")
)

# Runs in a fresh interpreter: third-party libraries are loaded once, then each foundation module is
# imported in a forked child that starts without any project module, and reports which project
# modules came with it and whether /proc/stat was read (the probe's doing).
CHECK = textwrap.dedent(r"""
    import json, os, sys

    PROBE_FILE = "/proc/stat"
    reads = []
    sys.addaudithook(lambda event, args: reads.append(1)
                     if event == "open" and str(args[0]) == PROBE_FILE else None)
    import numpy, torch, transformers, tqdm  # third-party only: no project module loads with them

    assert not [m for m in sys.modules if m.split(".")[0] in ("benchmark", "methods", "tasks", "leaderboard")]
    report = {}
    for module in json.loads(sys.argv[1]):
        read_end, write_end = os.pipe()
        if os.fork() == 0:
            os.close(read_end)
            reads.clear()
            try:
                __import__(module)
                loaded = sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[2].split(","))))
                result = {"loaded": loaded, "probe_reads": len(reads)}
            except BaseException as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(result).encode())
            os._exit(0)
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        os.wait()
        report[module] = json.loads(b"".join(chunks))
    print(json.dumps(report))
""")


def clean_env() -> dict[str, str]:
    """The environment without a user's wait policy, which would make the probe skip itself."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}


@pytest.fixture(scope="module")
def imports() -> dict[str, dict]:
    if not hasattr(os, "fork"):
        pytest.skip("the check forks one child per module")
    prefixes = ",".join(u + "." for u in UPPER) + "," + ",".join(UPPER)
    done = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(FOUNDATIONS), prefixes],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_foundations_are_the_modules_design_names():
    for module in (
        "benchmark.api",
        "benchmark.registry",
        "benchmark.config",
        "benchmark.models",
        "benchmark.metrics",
        "benchmark.results",
        "benchmark.runner",
        "benchmark.targets",
    ):
        assert module in FOUNDATIONS
    assert not [m for m in FOUNDATIONS if m.startswith("benchmark.app")]


@pytest.mark.parametrize("module", FOUNDATIONS)
def test_foundation_imports_nothing_from_above(imports, module):
    result = imports[module]
    assert "error" not in result, result.get("error")
    assert result["loaded"] == [], f"importing {module} loaded {', '.join(result['loaded'])}"


@pytest.mark.parametrize("module", FOUNDATIONS)
def test_importing_a_foundation_does_not_probe_the_cpu_load(imports, module):
    assert imports[module]["probe_reads"] == 0, f"importing {module} read /proc/stat"


def test_bench_probes_the_cpu_load_when_it_starts():
    """`bench` picks the wait policy itself, before anything loads torch (here: `bench --help`)."""
    if not os.path.exists("/proc/stat"):
        pytest.skip("the probe reads /proc/stat on Linux only")
    code = textwrap.dedent("""
        import sys
        reads = []
        sys.addaudithook(lambda event, args: reads.append(1)
                         if event == "open" and str(args[0]) == "/proc/stat" else None)
        from benchmark.app.cli import main
        assert not reads, "importing the CLI read /proc/stat"
        try:
            main(["--help"])
        except SystemExit:
            pass
        assert reads, "bench did not probe the CPU load"
        assert "torch" not in sys.modules
    """)
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_cell_process_sets_itself_up_before_torch_loads():
    """``worker.main`` imports these before ``run_cell`` chooses the wait policy: none may bring torch."""
    code = textwrap.dedent("""
        import sys
        import benchmark.app.worker, benchmark.allocator, benchmark.app.cli, benchmark.errors
        assert "torch" not in sys.modules, "the worker's set-up loads torch before the wait policy is chosen"
    """)
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
