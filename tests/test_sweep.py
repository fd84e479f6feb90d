"""Sweeps: spec expansion, resume, failures recorded per cell, and the Ray executor."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import benchmark.runner
from benchmark.app.sweep import LocalExecutor, executors, expand, load_spec, parse_resources, run_sweep, with_only
from benchmark.errors import BenchError
from benchmark.registry import METHODS, register_method
from benchmark.runner import RunRequest, episode_seed
from methods.base import Method

SMOKE = {"tasks": "batch", "profiles": "smoke", "set": {"num_contexts": 1}}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One thread, as in a 1-CPU Ray task: on a busy 2-core machine two threads run ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def checkout(monkeypatch):
    """The commit the sweep and the runner read (``checkout["commit"] = ...`` moves it): fixed, so that
    someone editing the checkout meanwhile does not stop a test's sweep."""
    state = {"commit": "a" * 40}
    monkeypatch.setattr("benchmark.results.git_commit", lambda root=None: state["commit"])
    monkeypatch.setattr("benchmark.runner.git_commit", lambda: state["commit"])
    return state


def cells_axes(sweep) -> list[tuple]:
    return [
        (
            c.request.method,
            c.request.task,
            c.request.profile,
            c.request.seed,
            tuple(sorted(c.request.overrides.items())),
        )
        for c in sweep.cells
    ]


# ---- expansion -----------------------------------------------------------------------------------


def test_lists_expand_to_their_product(tmp_path):
    sweep = expand(
        {
            "methods": ["base_q", "base_cq"],
            "tasks": "batch",
            "profiles": "smoke",
            "seeds": [0, 1, 2],
            "set": {"num_contexts": [1, 2], "episodes": 1},
        },
        out=tmp_path,
    )
    assert len(sweep.cells) == 2 * 3 * 2
    assert len({c.path for c in sweep.cells}) == 12  # every cell its own result file
    assert ("base_cq", "batch", "smoke", 2, (("episodes", "1"), ("num_contexts", "2"))) in cells_axes(sweep)
    assert all(c.path.is_relative_to(tmp_path) for c in sweep.cells)


def test_grid_entries_override_defaults_and_merge_set(tmp_path):
    spec = {
        "profile": "smoke",
        "seeds": [0],
        "set": {"num_contexts": 1, "episodes": 2},
        "resources": {"cpus": 2, "memory": "1GiB"},
        "grid": [
            {"method": "base_q", "task": "batch"},
            {
                "methods": ["base_cq"],
                "tasks": ["batch"],
                "seeds": [5, 6],
                "set": {"episodes": 1},
                "resources": {"gpus": 1},
            },
        ],
        "exclude": [{"method": "base_cq", "seed": 6}],
    }
    sweep = expand(spec, out=tmp_path)
    assert cells_axes(sweep) == [
        ("base_q", "batch", "smoke", 0, (("episodes", "2"), ("num_contexts", "1"))),
        ("base_cq", "batch", "smoke", 5, (("episodes", "1"), ("num_contexts", "1"))),
    ]
    first, second = sweep.cells
    assert (first.resources.cpus, first.resources.gpus, first.resources.memory) == (2, 0, 2**30)
    assert (second.resources.cpus, second.resources.gpus, second.resources.memory) == (2, 1, 2**30)
    assert second.resources.ray_options() == {"num_cpus": 2, "num_gpus": 1, "memory": 2**30}


def test_exclude_sees_the_defaults_filled_in(tmp_path):
    sweep = expand(
        {
            **SMOKE,
            "methods": ["base_q", "base_cq"],
            "seeds": [0, 1],
            "exclude": [{"dataset": "fictional", "seed": 1}, {"model": "tiny-random-llama", "method": "base_cq"}],
        },
        out=tmp_path,
    )
    assert [(c.request.method, c.request.seed) for c in sweep.cells] == [("base_q", 0)]


def test_same_run_reached_twice_is_one_cell(tmp_path):
    # smoke's num_contexts is 3 already: the override names the same run, hence the same file.
    sweep = expand(
        {"methods": "base_q", "tasks": "batch", "profiles": "smoke", "grid": [{}, {"set": {"num_contexts": [3, 4]}}]},
        out=tmp_path,
    )
    assert len(sweep.cells) == 2


def test_command_line_set_replaces_spec_values(tmp_path):
    sweep = expand(
        {**SMOKE, "methods": ["base_q", "base_cq"], "set": {"num_contexts": [1, 2]}},
        overrides={"num_contexts": "4"},
        out=tmp_path,
    )
    assert len(sweep.cells) == 2  # the two swept values collapse into the one given
    assert {c.request.overrides["num_contexts"] for c in sweep.cells} == {"4"}


def test_invalid_cells_carry_their_error(tmp_path):
    sweep = expand({**SMOKE, "methods": ["base_q", "no-such-method"]}, out=tmp_path)
    good, bad = sweep.cells
    assert good.error is None and good.path is not None
    assert bad.path is None and "unknown method 'no-such-method'" in bad.error


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"methods": "base_q", "tasks": "batch", "seedz": [1]}, "unknown key 'seedz'"),
        ({"methods": "base_q", "method": "base_cq", "tasks": "batch"}, "both 'method' and 'methods'"),
        ({"tasks": "batch"}, "names no methods"),
        ({"methods": "base_q", "tasks": "batch", "seeds": ["one"]}, "seeds must be integers"),
        ({"methods": "base_q", "tasks": "batch", "grid": {"methods": "x"}}, "grid must be a list"),
        ({"methods": "base_q", "tasks": "batch", "set": {"lr": {"a": 1}}}, "is a mapping"),
        ({"methods": "base_q", "tasks": "batch", "resources": {"memory": "lots"}}, "not a size"),
        ({"methods": "base_q", "tasks": "batch", "exclude": [{"colour": "red"}]}, "unknown key 'colour'"),
    ],
)
def test_bad_specs_are_one_line_errors(tmp_path, spec, message):
    with pytest.raises(BenchError, match=message):
        expand(spec, out=tmp_path)


def test_memory_units():
    assert parse_resources({"memory": "500MB"}).memory == 500 * 10**6
    assert parse_resources({"memory": "1.5GiB"}).memory == int(1.5 * 2**30)
    assert parse_resources({"memory": 1024}).memory == 1024


def test_shipped_specs_expand(tmp_path):
    root = Path(__file__).resolve().parents[1] / "sweeps"
    quick = load_spec(root / "quick.yaml", out=tmp_path)
    paper = load_spec(root / "paper.yaml", out=tmp_path)
    assert {c.request.profile for c in quick.cells} == {"quick"}
    assert {c.request.task for c in quick.cells} == {"batch", "sequential", "recommendation"}
    assert quick.ray["num_cpus"] == 2
    batch = [c for c in paper.cells if c.request.task == "batch" and c.request.method == "selfparam"]
    assert {(c.request.model, c.request.overrides["num_contexts"]) for c in batch} == {
        (m, n)
        for m in ("openlm-research/open_llama_3b_v2", "mistralai/Mistral-7B-v0.1", "meta-llama/Meta-Llama-3-8B")
        for n in ("100", "500")
    }
    assert {c.request.dataset for c in paper.cells if c.request.task == "recommendation"} == {"inspired", "redial"}
    assert all(c.resources.gpus == 1 for c in paper.cells)


# ---- methods: all, needs_data and the reference set (sweeps/reference.yaml) ----------------------


def runnable() -> set[str]:
    return {name for name, cls in METHODS.items() if not cls.unavailable_reason()}


def test_methods_all_is_every_method_that_runs_here_where_the_task_applies(tmp_path, registrations):
    @register_method("test-sweep-new")
    class New(Method):
        pass

    @register_method("test-sweep-oracle")
    class Oracle(Method):
        sees_gold_context = True  # recommendation has no gold context to show it

    @register_method("test-sweep-absent")
    class Absent(Method):
        @classmethod
        def unavailable_reason(cls):
            return "its checkpoint is not here"

    sweep = expand({"methods": "all", "tasks": ["batch", "recommendation"], "profiles": "smoke"}, out=tmp_path)
    by_task = {t: {c.request.method for c in sweep.cells if c.request.task == t} for t in ("batch", "recommendation")}
    assert "test-sweep-new" in by_task["batch"] and "test-sweep-absent" not in by_task["batch"]
    assert by_task["batch"] == runnable()
    assert by_task["recommendation"] == runnable() - {"base_cq", "test-sweep-oracle"}
    assert all(c.error is None for c in sweep.cells)  # the pairs that do not apply are left out, not invalid
    assert "method test-sweep-absent: not run here (its checkpoint is not here)" in sweep.notes
    assert len(sweep.notes) == len(METHODS.names()) - len(runnable())  # one per method left out

    # Named explicitly, a pair that does not apply is still an invalid cell: the spec asked for it.
    named = expand({"methods": "test-sweep-oracle", "tasks": "recommendation", "profiles": "smoke"}, out=tmp_path)
    assert "does not apply to the recommendation task" in named.cells[0].error


REFERENCE = Path(__file__).resolve().parents[1] / "sweeps" / "reference.yaml"
MAIN_METHODS = {"base_q", "base_cq", "bm25", "selfparam", "ft_sentences", "cartridge"}


def test_reference_set_covers_every_task_and_data_set(tmp_path):
    sweep = load_spec(REFERENCE, out=tmp_path)
    assert load_spec(REFERENCE).out == Path.cwd() / "results"  # run from the repository root
    assert all(c.error is None and c.request.profile == "quick" for c in sweep.cells)
    seed0: dict[tuple[str, str], set[str]] = {}
    settings: dict[tuple[str, str], set[tuple]] = {}
    for c in sweep.cells:
        pair = (c.request.task, c.request.dataset)
        settings.setdefault(pair, set()).add(tuple(sorted(c.request.overrides.items())))
        if c.request.seed == 0:
            seed0.setdefault(pair, set()).add(c.request.method)
    every = runnable()
    assert seed0 == {
        ("batch", "fictional"): every,
        ("sequential", "fictional"): every,
        ("batch", "squad"): every,
        ("sequential", "squad"): every,
        ("recommendation", "inspired"): every - {"base_cq"},
        ("recommendation", "redial"): every - {"base_cq"},
    }
    assert settings == {
        ("batch", "fictional"): {()},
        ("sequential", "fictional"): {()},
        ("batch", "squad"): {(("num_contexts", "50"),)},
        ("sequential", "squad"): {()},  # the task's default sizes
        ("recommendation", "inspired"): {(("num_probes", "0"),)},  # all of its test points
        ("recommendation", "redial"): {(("num_probes", "320"),)},
    }
    more_seeds = {(c.request.method, c.request.task, c.request.dataset, c.request.seed) for c in sweep.cells}
    more_seeds = {cell for cell in more_seeds if cell[3] != 0}
    assert more_seeds == {
        (m, t, d, s)
        for m in MAIN_METHODS
        for t, d in (("batch", "fictional"), ("batch", "squad"), ("sequential", "fictional"))
        for s in (1, 2)
    }
    needs = {(c.request.dataset, c.needs_data) for c in sweep.cells}
    assert needs == {
        ("fictional", ()),
        ("squad", ("squad",)),
        ("inspired", ("inspired", "crs/inspired")),
        ("redial", ("redial", "crs/redial")),
    }


def test_reference_dry_run_lists_every_cell(tmp_path, bench, monkeypatch):
    monkeypatch.chdir(tmp_path)  # out: results, relative to the current folder
    monkeypatch.setenv("SELFPARAM_BENCH_DATA", str(tmp_path / "no-data"))
    code, out, err = bench("sweep", REFERENCE, "--dry-run")
    assert code == 0, err
    every = runnable()
    cells = 4 * len(every) + 2 * len(every - {"base_cq"}) + 3 * 2 * len(MAIN_METHODS)
    assert f"sweep reference: {cells} cells; results in {tmp_path / 'results'}" in out
    assert "skipped: data not present (squad under" in out  # said once, with how many cells
    without = cells - 2 * len(every) - 2 * 2 * len(MAIN_METHODS)  # all but the fictional cells
    assert f"{cells - without} to run, 0 already done, {without} without their data, 0 invalid" in out
    assert not (tmp_path / "results").exists()


def test_needs_data_is_checked_when_given(tmp_path):
    with pytest.raises(BenchError, match="needs_data in the spec must be a folder"):
        expand({**SMOKE, "methods": "base_q", "needs_data": [""]}, out=tmp_path)


# ---- running: resume and failures (local executor) -----------------------------------------------


@pytest.fixture
def counted_runs(monkeypatch, tiny_lm):
    """Counts the runs the sweep starts; every run shares the session's tiny model to stay fast."""
    calls: list[tuple[str, int]] = []
    real_run = benchmark.runner.run

    def counting_run(request, lm=None):
        calls.append((request.method, request.seed))
        return real_run(request, lm=tiny_lm)

    monkeypatch.setattr(benchmark.runner, "run", counting_run)
    return calls


@pytest.fixture
def flaky_method(registrations):
    """A method that fails (a bug, not a user error) for seed 1 only."""

    @register_method("test-sweep-flaky")
    class Flaky(Method):
        description = "fails for seed 1"

        def inject(self, contexts):
            if self.seed == episode_seed(1, "batch-0"):  # the stream of the run with seed 1
                raise RuntimeError("flaky method broke on purpose")

    return Flaky


def test_resume_skips_finished_cells(tmp_path, counted_runs):
    spec = {**SMOKE, "methods": ["base_q"], "seeds": [0, 1, 2]}
    first = run_sweep(expand(spec, out=tmp_path), LocalExecutor(isolate=False), echo=lambda s: None)
    assert first.counts() == {"done": 3, "skipped": 0, "failed": 0, "pending": 0}
    assert len(counted_runs) == 3

    counted_runs.clear()
    again = run_sweep(expand(spec, out=tmp_path), LocalExecutor(isolate=False), echo=lambda s: None)
    assert again.counts()["skipped"] == 3 and counted_runs == []

    removed = next(c for c in expand(spec, out=tmp_path).cells if c.request.seed == 1)
    removed.path.unlink()
    third = run_sweep(expand(spec, out=tmp_path), LocalExecutor(isolate=False), echo=lambda s: None)
    assert counted_runs == [("base_q", 1)]
    assert third.counts() == {"done": 1, "skipped": 2, "failed": 0, "pending": 0}

    counted_runs.clear()
    forced = with_only(expand(spec, out=tmp_path, force=True), {"seed": "2"})
    assert run_sweep(forced, LocalExecutor(isolate=False), echo=lambda s: None).counts()["done"] == 1
    assert counted_runs == [("base_q", 2)]  # --force recomputes a finished cell


def test_failing_cell_is_recorded_and_the_rest_complete(tmp_path, counted_runs, flaky_method, bench):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                **SMOKE,
                "name": "mixed",
                "out": str(tmp_path / "out"),
                "methods": ["test-sweep-flaky", "base_q", "no-such-method"],
                "seeds": [1, 2],
            }
        )
    )
    code, out, err = bench("sweep", spec_file, "--in-process")
    assert code == 1  # some cell failed
    assert "3 done, 0 skipped, 3 failed" in out
    # base_q's cell after the flaky failure still ran: the failure did not stop the sweep.
    assert counted_runs == [("test-sweep-flaky", 1), ("test-sweep-flaky", 2), ("base_q", 1), ("base_q", 2)]

    header, *rows = [json.loads(line) for line in (tmp_path / "out" / "mixed.sweep.jsonl").read_text().splitlines()]
    assert header["counts"] == {"done": 3, "skipped": 0, "failed": 3, "pending": 0}
    status = {(r["method"], r["seed"]): r for r in rows}
    assert status[("test-sweep-flaky", 1)]["error"] == "RuntimeError: flaky method broke on purpose"
    assert "in inject" in status[("test-sweep-flaky", 1)]["traceback"]  # for debugging a bug
    assert status[("test-sweep-flaky", 2)]["status"] == "done"
    assert "unknown method 'no-such-method'" in status[("no-such-method", 1)]["error"]
    for seed in (1, 2):
        done = status[("base_q", seed)]
        assert done["status"] == "done" and Path(done["path"]).is_file()
        assert json.loads(Path(done["path"]).read_text())["seed"] == seed

    # Run again: the finished cells are skipped, only the failing ones are tried again.
    counted_runs.clear()
    code, out, _ = bench("sweep", spec_file, "--in-process")
    assert code == 1 and "0 done, 3 skipped, 3 failed" in out, out
    assert counted_runs == [("test-sweep-flaky", 1)]


def test_unavailable_method_fails_its_cells_only(tmp_path, counted_runs, registrations):
    @register_method("test-sweep-needs-gpu")
    class NeedsGPU(Method):
        @classmethod
        def unavailable_reason(cls):
            return "no GPU on this test machine"

    sweep = expand({**SMOKE, "methods": ["test-sweep-needs-gpu", "base_q"]}, out=tmp_path)
    # The driver does not judge availability: a cluster's worker may have what it lacks.
    assert all(c.error is None and c.path for c in sweep.cells)
    log = run_sweep(sweep, LocalExecutor(isolate=False), echo=lambda s: None)
    assert log.counts() == {"done": 1, "skipped": 0, "failed": 1, "pending": 0}
    assert "cannot run here: no GPU on this test machine" in log.rows[0]["error"]
    assert counted_runs == [("test-sweep-needs-gpu", 0), ("base_q", 0)]


def test_absent_data_skips_its_cells_and_the_rest_run(tmp_path, counted_runs, bench, monkeypatch):
    data = tmp_path / "data"
    (data / "here").mkdir(parents=True)
    monkeypatch.setenv("SELFPARAM_BENCH_DATA", str(data))
    spec_file = tmp_path / "spec.yaml"
    spec = {
        **SMOKE,
        "name": "data",
        "out": str(tmp_path / "out"),
        "grid": [
            {"methods": "base_q", "needs_data": "here"},
            {"methods": "base_cq", "needs_data": ["here", "licensed/set"]},
        ],
    }
    spec_file.write_text(yaml.safe_dump(spec))
    code, out, err = bench("sweep", spec_file, "--in-process")
    assert code == 0, err  # a skip, not a failure
    assert f"skipped: data not present (licensed/set under {data}): 1 cell" in out
    assert "1 done, 1 skipped (1 without their data), 0 failed" in out
    assert counted_runs == [("base_q", 0)]
    header, *rows = [json.loads(line) for line in (tmp_path / "out" / "data.sweep.jsonl").read_text().splitlines()]
    skipped = next(r for r in rows if r["method"] == "base_cq")
    assert skipped["status"] == "skipped" and skipped["reason"].startswith("data not present (licensed/set")

    # Once the data is there, the skipped cell runs and the finished one is not redone.
    (data / "licensed" / "set").mkdir(parents=True)
    counted_runs.clear()
    code, out, _ = bench("sweep", spec_file, "--in-process")
    assert code == 0 and counted_runs == [("base_cq", 0)] and "1 done, 1 skipped, 0 failed" in out


def test_summary_ends_with_cpu_and_wall_time(tmp_path, counted_runs, bench):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**SMOKE, "name": "timed", "out": str(tmp_path / "out"), "methods": "base_q"}))
    code, out, err = bench("sweep", spec_file, "--in-process")
    assert code == 0, err
    header, row = [json.loads(line) for line in (tmp_path / "out" / "timed.sweep.jsonl").read_text().splitlines()]
    assert row["cpu_s"] > 0 and header["cpu_s"] == row["cpu_s"]
    assert header["wall_s"] >= row["wall_s"] > 0
    last = out.strip().splitlines()[-1]
    assert last.startswith("CPU time ") and "(1 cell run now" in last and "wall time " in last

    code, out, _ = bench("sweep", spec_file, "--in-process")  # resumed: nothing run, nothing counted
    assert code == 0 and "CPU time 0.0s (0 cells run now" in out


def test_interrupted_sweep_resumes(tmp_path, counted_runs, bench, registrations):
    @register_method("test-sweep-ctrl-c")
    class CtrlC(Method):
        armed = True

        def inject(self, contexts):
            if CtrlC.armed:
                raise KeyboardInterrupt  # what Ctrl-C does in the middle of a cell

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                **SMOKE,
                "name": "stop",
                "out": str(tmp_path / "out"),
                "methods": ["base_q", "test-sweep-ctrl-c", "base_cq"],
            }
        )
    )
    code, out, err = bench("sweep", spec_file, "--in-process")
    assert code == 130 and "run the same command to resume" in err
    header = json.loads((tmp_path / "out" / "stop.sweep.jsonl").read_text().splitlines()[0])
    assert header["counts"] == {"done": 1, "skipped": 0, "failed": 0, "pending": 2}

    CtrlC.armed = False
    counted_runs.clear()
    code, out, _ = bench("sweep", spec_file, "--in-process")
    assert code == 0 and "2 done, 1 skipped, 0 failed" in out
    assert counted_runs == [("test-sweep-ctrl-c", 0), ("base_cq", 0)]


def test_only_and_dry_run(tmp_path, counted_runs, bench):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump({**SMOKE, "out": str(tmp_path / "out"), "methods": ["base_q", "base_cq"], "seeds": [0, 1]})
    )
    code, out, _ = bench("sweep", spec_file, "--dry-run")
    assert code == 0 and "4 to run, 0 already done, 0 invalid" in out
    code, out, _ = bench("sweep", spec_file, "--in-process", "--only", "method=base_cq", "--only", "seed=1")
    assert code == 0 and counted_runs == [("base_cq", 1)] and "1 done, 0 skipped, 0 failed" in out
    code, out, _ = bench("sweep", spec_file, "--dry-run")
    assert "3 to run, 1 already done" in out
    rows = (tmp_path / "out" / "spec.sweep.jsonl").read_text().splitlines()[1:]
    assert [json.loads(r)["method"] for r in rows] == ["base_cq"]  # the status of the cells it ran


def test_a_changed_checkout_stops_the_sweep_before_the_next_cell(tmp_path, counted_runs, bench, checkout, monkeypatch):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {**SMOKE, "name": "moved", "out": str(tmp_path / "out"), "methods": "base_q", "seeds": [0, 1, 2]}
        )
    )
    real_run = benchmark.runner.run

    def commit_during_the_first_cell(request, lm=None):
        outcome = real_run(request, lm=lm)
        checkout["commit"] = "b" * 40 + "-dirty"  # someone commits (and edits) while the sweep runs
        return outcome

    monkeypatch.setattr(benchmark.runner, "run", commit_during_the_first_cell)
    code, out, err = bench("sweep", spec_file, "--in-process")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "bench: error: the checkout changed during the sweep (commit aaaaaaa when it started, bbbbbbb-dirty now): "
        "stopping before base_q batch/fictional tiny-random-llama smoke seed1 num_contexts=1; finished cells are "
        "kept, run the same command again to go on with the new code"
    ]
    assert counted_runs == [("base_q", 0)]
    header, *rows = [json.loads(line) for line in (tmp_path / "out" / "moved.sweep.jsonl").read_text().splitlines()]
    assert header["git_commit"] == "a" * 40
    assert header["counts"] == {"done": 1, "skipped": 0, "failed": 0, "pending": 2}
    assert rows[0]["git_commit"] == "a" * 40 and json.loads(Path(rows[0]["path"]).read_text())["git_commit"] == "a" * 40

    # The same command resumes at the new code, and says that the kept cell was written by the old one.
    code, out, err = bench("sweep", spec_file, "--in-process")
    assert code == 0, err
    assert "3 cells, 1 already done (1 at other commits: aaaaaaa x1), 0 invalid, 2 to run" in out
    assert counted_runs == [("base_q", 0), ("base_q", 1), ("base_q", 2)]
    code, out, _ = bench("sweep", spec_file, "--dry-run")
    assert code == 0 and "0 to run, 3 already done (1 at other commits: aaaaaaa x1), 0 invalid" in out


def test_each_local_cell_runs_in_a_fresh_process_with_its_own_peak_memory(tmp_path, monkeypatch):
    def not_here(request, lm=None):
        raise AssertionError("the cell ran in the sweep's own process")

    monkeypatch.setattr(benchmark.runner, "run", not_here)  # a monkeypatch does not reach a child process
    log = run_sweep(expand({**SMOKE, "methods": "base_q", "seeds": [0, 1]}, out=tmp_path), LocalExecutor(), echo=print)
    assert log.counts()["done"] == 2
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.rglob("base_q__*.json"))]
    assert len(results) == 2 and {r["seed"] for r in results} == {0, 1}
    if sys.platform == "linux":
        assert all(r["cost"]["peak_rss_scope"] == "run" for r in results)


@pytest.mark.parametrize(
    "script, message",
    [
        ("import os; os._exit(3)", "ended with exit code 3 before reporting"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "ended with signal 9 before reporting"),
    ],
)
def test_a_cell_process_that_dies_is_a_failed_cell_and_the_sweep_goes_on(tmp_path, monkeypatch, script, message):
    monkeypatch.setattr(executors, "child_command", lambda request, outcome: [sys.executable, "-c", script])
    log = run_sweep(expand({**SMOKE, "methods": "base_q", "seeds": [0, 1]}, out=tmp_path), LocalExecutor(), echo=print)
    assert log.counts()["failed"] == 2
    assert all(message in row["error"] for row in log.rows.values())


def test_ctrl_c_in_the_sweep_is_handed_to_the_cells_process_once(tmp_path, monkeypatch):
    marker = tmp_path / "child-saw-sigint"
    child = f"""
import json, signal, sys, time
def stop(signum, frame):
    open({str(marker)!r}, "a").write("SIGINT\\n")
    open(sys.argv[2], "w").write(json.dumps({{"status": "interrupted", "terminated": False}}))
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
open({str(tmp_path / "started")!r}, "w").write("")
time.sleep(60)
"""
    monkeypatch.setattr(
        executors, "child_command", lambda request, outcome: [sys.executable, "-c", child, str(request), str(outcome)]
    )

    def ctrl_c_once_the_child_runs() -> None:
        while not (tmp_path / "started").exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C reaches the sweep's process only

    # A shell starts a background job with Ctrl-C ignored, and Python keeps that: give this process the
    # handler a terminal's process has, whoever started the tests.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_once_the_child_runs, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            executors.run_in_child(RunRequest(method="base_q", task="batch", profile="smoke"))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert marker.read_text() == "SIGINT\n"


def test_an_unchanged_checkout_runs_every_cell(tmp_path, counted_runs, checkout):
    checkout["commit"] = "c" * 40 + "-dirty"  # dirty, but the same dirty state throughout
    sweep = expand({**SMOKE, "methods": "base_q", "seeds": [0, 1]}, out=tmp_path)
    log = run_sweep(sweep, LocalExecutor(isolate=False), echo=print)
    assert log.counts()["done"] == 2 and log.header["git_commit"] == "c" * 40 + "-dirty"


def test_existing_files_of_other_commits_are_counted_not_rerun(tmp_path, counted_runs, checkout):
    spec = {**SMOKE, "methods": "base_q", "seeds": [0, 1, 2, 3]}
    sweep = expand(spec, out=tmp_path)
    run_sweep(sweep, LocalExecutor(isolate=False), echo=lambda s: None)
    paths = [c.path for c in sweep.cells]
    for path, commit in zip(paths[1:], ("b" * 40, "b" * 40, None)):  # as if written by other code
        data = json.loads(path.read_text())
        data["git_commit"] = commit
        path.write_text(json.dumps(data) if commit is None else json.dumps(data, indent=1))
    counted_runs.clear()
    lines: list[str] = []
    log = run_sweep(expand(spec, out=tmp_path), LocalExecutor(isolate=False), echo=lines.append)
    assert counted_runs == [] and log.counts()["skipped"] == 4
    assert "4 already done (3 at other commits: bbbbbbb x2, unknown x1), 0 invalid, 0 to run" in lines[-1]


def test_a_result_files_commit_is_read_from_its_top_level(tmp_path):
    from benchmark.results import recorded_commit

    path = tmp_path / "r.json"
    written = {"task": "batch", "git_commit": "e" * 40, "scores": {}, "episodes": [{"git_commit": "f" * 40}]}
    path.write_text(json.dumps(written, indent=1)[:-40])  # cut short after the top: never parsed whole
    assert recorded_commit(path) == "e" * 40
    path.write_text(json.dumps(written))  # another layout: parsed whole
    assert recorded_commit(path) == "e" * 40
    path.write_text(json.dumps({**written, "git_commit": None}, indent=1))
    assert recorded_commit(path) is None
    path.write_text(json.dumps({"scores": {}, "episodes": [{"git_commit": "f" * 40}]}, indent=1))
    assert recorded_commit(path) is None  # an episode's value is not the file's


def test_ray_missing_says_how_to_install(tmp_path, bench, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**SMOKE, "methods": "base_q"}))
    code, out, err = bench("sweep", spec_file, "--executor", "ray")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "pip install 'selfparam-bench[ray]'" in err


# ---- the Ray executor on a local Ray instance ------------------------------------------------------


def test_ray_executor_matches_local(tmp_path, bench):
    pytest.importorskip("ray")
    spec = {
        **SMOKE,
        "methods": ["base_q", "base_cq"],
        "seeds": [3],
        "resources": {"cpus": 1},
        "grid": [
            {},
            {"methods": "base_q", "datasets": "no-such-data"},
            {"methods": "base_cq", "seeds": 9, "resources": {"cpus": 4}},
        ],
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))

    code, out, err = bench("sweep", spec_file, "--executor", "ray", "--num-cpus", "2", "--out", tmp_path / "ray")
    assert code == 1, err
    assert "2 done, 0 skipped, 2 failed" in out
    rows = [json.loads(line) for line in (tmp_path / "ray" / "spec.sweep.jsonl").read_text().splitlines()[1:]]
    errors = {(r["dataset"], r["seed"]): r.get("error", "") for r in rows if r["status"] == "failed"}
    assert "no-such-data" in errors[("no-such-data", 3)]  # raised inside a Ray worker, brought back
    assert "needs 4 CPU" in errors[("fictional", 9)]  # would never be scheduled: failed at once

    code, out, _ = bench(
        "sweep", spec_file, "--out", tmp_path / "local", "--only", "dataset=fictional", "--only", "seed=3"
    )
    assert code == 0 and "2 done" in out
    ray_files = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*__*.json"))
    local_files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*__*.json"))
    assert len(ray_files) == 2 and ray_files == local_files  # same cells, same result file names
    for rel in ray_files:
        from_ray = json.loads((tmp_path / "ray" / rel).read_text())
        from_local = json.loads((tmp_path / "local" / rel).read_text())
        assert from_ray["scores"] == from_local["scores"]
        assert [p["prediction"] for e in from_ray["episodes"] for p in e["predictions"]] == [
            p["prediction"] for e in from_local["episodes"] for p in e["predictions"]
        ]

    code, out, _ = bench(
        "sweep",
        spec_file,
        "--executor",
        "ray",
        "--num-cpus",
        "2",
        "--out",
        tmp_path / "ray",
        "--only",
        "dataset=fictional",
        "--only",
        "seed=3",
    )
    assert code == 0 and "0 done, 2 skipped, 0 failed" in out  # resumed: nothing dispatched
