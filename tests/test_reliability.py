"""Issue #20: bad input never starts work, a run stops cleanly on SIGTERM, one run per result file,
and a failed write loses no result file.

Every refusal is one line on stderr, exit code 2, no traceback, and no file written.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slow_method

from benchmark.config import RunParams, declared_ranges, in_range
from benchmark.registry import METHODS, TASKS
from benchmark.results import RunLock, lock_path, partial_path
from benchmark.runner import RunRequest, resolve

REPO = Path(__file__).resolve().parents[1]
GOOD = {
    "id": "c1",
    "context": "Ann lives in Rome.",
    "probes": [{"question": "Where does Ann live?", "answers": ["Rome"]}],
    "train_qa": [{"question": "Ann's home city?", "answer": "Rome"}],
}


def assert_refused(result, *needles, out: Path) -> str:
    """Exit 2, exactly one line on stderr naming the problem, no traceback, no file under ``out``."""
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not [p for p in out.rglob("*") if p.is_file()]
    return lines[0]


def non_utf8_file(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.jsonl"
    bad = dict(GOOD, id="c2", context="Zoë lives in Köln.")
    path.write_bytes((json.dumps(GOOD) + "\n" + json.dumps(bad, ensure_ascii=False) + "\n").encode("latin-1"))
    return path


def run_args(method: str = "base_q", task: str = "batch", *extra: str) -> list[str]:
    return ["run", "--profile", "smoke", "--method", method, "--task", task, *extra]


# (arguments after `bench`, or a function of tmp_path giving them; words the one line must hold)
BAD_INPUTS = {
    "lr negative": (run_args("selfparam", "batch", "--set", "lr=-1"), ["method.lr = -1.0", "> 0"]),
    "lr zero": (run_args("ft_context", "batch", "--set", "lr=0"), ["method.lr = 0.0", "> 0"]),
    "lr nan": (run_args("selfparam", "batch", "--set", "lr=nan"), ["method.lr = nan"]),
    "lr inf": (run_args("selfparam", "batch", "--set", "lr=inf"), ["method.lr = inf"]),
    "lora_dropout 1.5": (
        run_args("selfparam", "batch", "--set", "lora_dropout=1.5"),
        ["method.lora_dropout = 1.5", "in [0, 1)"],
    ),
    "lora_dropout 1": (run_args("selfparam", "batch", "--set", "lora_dropout=1"), ["method.lora_dropout = 1.0"]),
    "epochs negative": (run_args("selfparam", "batch", "--set", "epochs=-3"), ["method.epochs = -3", ">= 0"]),
    "lora_r zero": (run_args("selfparam", "batch", "--set", "lora_r=0"), ["method.lora_r = 0", ">= 1"]),
    "batch_size zero": (run_args("selfparam", "batch", "--set", "batch_size=0"), ["method.batch_size = 0"]),
    "temperature zero": (run_args("selfparam", "batch", "--set", "temperature=0"), ["method.temperature = 0.0"]),
    "teacher_topk negative": (run_args("selfparam", "batch", "--set", "teacher_topk=-1"), ["method.teacher_topk = -1"]),
    "num_contexts zero": (run_args("base_q", "batch", "--set", "num_contexts=0"), ["task.num_contexts = 0", ">= 1"]),
    "episodes zero": (run_args("base_q", "batch", "--set", "episodes=0"), ["task.episodes = 0"]),
    "first_context negative": (run_args("base_q", "batch", "--set", "first_context=-5"), ["task.first_context = -5"]),
    "num_sequences zero": (run_args("base_q", "sequential", "--set", "num_sequences=0"), ["task.num_sequences = 0"]),
    "sequence_length negative": (
        run_args("base_q", "sequential", "--set", "sequence_length=-1"),
        ["task.sequence_length = -1"],
    ),
    "bm25 top_k zero": (run_args("bm25", "batch", "--set", "top_k=0"), ["method.top_k = 0", ">= 1"]),
    "bm25 b above 1": (run_args("bm25", "batch", "--set", "b=1.5"), ["method.b = 1.5", "in [0, 1]"]),
    "infllm n_local zero": (run_args("infllm", "batch", "--set", "n_local=0"), ["method.n_local = 0"]),
    "fewshot beyond the demonstrations": (
        run_args("base_q", "batch", "--set", "fewshot=4"),
        ["run.fewshot = 4", "in [0, 3]"],
    ),
    "max_new_tokens zero": (run_args("base_q", "batch", "--set", "max_new_tokens=0"), ["run.max_new_tokens = 0"]),
    "eval_batch_size zero": (run_args("base_q", "batch", "--set", "eval_batch_size=0"), ["run.eval_batch_size = 0"]),
    "two violations, one line": (
        run_args("selfparam", "batch", "--set", "lr=-1", "--set", "epochs=-1"),
        ["method.lr = -1.0", "method.epochs = -1"],
    ),
    "epochs not an integer": (run_args("selfparam", "batch", "--set", "epochs=2.5"), ["not an integer"]),
    "no such model directory": (
        run_args("base_q", "batch", "--model", "/no/such/dir"),
        ["'/no/such/dir'", "no such local model directory and not a known hub id"],
    ),
    "relative model path": (
        run_args("base_q", "batch", "--model", "./models/none"),
        ["no such local model directory and not a known hub id"],
    ),
    "data file not UTF-8": (
        lambda tmp: run_args("base_q", "batch", "--dataset", str(non_utf8_file(tmp)), "--set", "num_contexts=2"),
        ["latin1.jsonl:2:", "not UTF-8 text (byte 0xeb)"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_matrix(bench, tmp_path, case):
    args, needles = BAD_INPUTS[case]
    args = args(tmp_path) if callable(args) else args
    out = tmp_path / "out"
    assert_refused(bench(*args, "--out", out), *needles, out=out)
    assert not out.exists()  # not even an empty folder


def test_the_matrix_is_large_enough():
    assert len(BAD_INPUTS) >= 20


def test_every_declared_range_names_a_field_and_parses():
    classes = [
        RunParams,
        *(cls.Params for _, cls in METHODS.items()),
        *(cls.Params for _, cls in TASKS.items()),
        *(cls.TrainParams for _, cls in METHODS.items() if hasattr(cls, "TrainParams")),
    ]
    for params_cls in classes:
        fields = {f.name: f for f in dataclasses.fields(params_cls)}
        defaults = params_cls()
        for name, spec in declared_ranges(params_cls).items():
            assert name in fields, f"{params_cls.__name__}.RANGES names no field {name!r}"
            in_range(spec, 0)  # parses
            assert in_range(spec, getattr(defaults, name)), f"{params_cls.__name__}.{name}'s default is outside {spec}"


def test_fewshot_range_matches_the_demonstrations():
    from benchmark.models import DEMONSTRATIONS

    assert declared_ranges(RunParams)["fewshot"] == f"[0, {len(DEMONSTRATIONS)}]"


@pytest.mark.parametrize(
    "spec, inside, outside",
    [
        ("> 0", [1e-9, 3], [0, -1]),
        (">= 0", [0, 2], [-1]),
        ("<= 1", [1, -5], [1.5]),
        ("< 1", [0.99], [1]),
        ("[0, 1)", [0, 0.5], [1, -0.1]),
        ("(0, 1]", [1, 0.5], [0, 1.1]),
        ("[0, 3]", [0, 3], [4]),
    ],
)
def test_in_range(spec, inside, outside):
    assert all(in_range(spec, v) for v in inside)
    assert not any(in_range(spec, v) for v in outside)


def test_profiles_are_within_range():
    """No profile of a registered method or task sets a value its own ranges refuse."""
    from benchmark.config import PROFILES, RUN_PROFILES, build_params

    for _, method in METHODS.items():
        for _, task in TASKS.items():
            for profile in PROFILES:
                build_params(
                    {
                        "run": (RunParams, RUN_PROFILES),
                        "task": (task.Params, task.profiles),
                        "method": (method.Params, method.profiles),
                    },
                    profile,
                    {},
                    task=task.name,
                )


@pytest.mark.parametrize("rival", ["ft_context", "ft_sentences", "cartridge", "dcd"])
def test_trained_rivals_train_selfparams_epochs_per_injection(rival):
    """Same budget for rivals: each trained rival trains as many epochs per injection as SELF-PARAM
    in both profiles, batch and sequential (the paper's: 50 and 20)."""
    from benchmark.config import build_params

    def epochs(name: str, profile: str, task: str) -> int:
        method = METHODS.get(name)
        return build_params({"method": (method.Params, method.profiles)}, profile, {}, task=task)["method"].epochs

    assert epochs("selfparam", "paper", "sequential") == 20
    for profile in ("quick", "paper"):
        assert epochs(rival, profile, "sequential") == epochs("selfparam", profile, "sequential"), profile
    assert epochs(rival, "paper", "batch") == epochs("selfparam", "paper", "batch") == 50


def test_ft_sentences_takes_selfparams_recommendation_regime_where_it_applies():
    """Same budget for rivals: SELF-PARAM's recommendation settings were searched on dev points;
    FT(S), trained on the same targets, gets the settings of that search it has."""
    from benchmark.config import build_params

    def resolved(name: str) -> dict:
        method = METHODS.get(name)
        params = build_params({"method": (method.Params, method.profiles)}, "quick", {}, task="recommendation")
        return dataclasses.asdict(params["method"])

    selfparam, rival = resolved("selfparam"), resolved("ft_sentences")
    shared = ("lr", "prompt_style", "epochs", "attn_implementation")
    assert {k: rival[k] for k in shared} == {k: selfparam[k] for k in shared}
    assert (rival["lr"], rival["prompt_style"]) == (1e-3, "chat")  # not the batch regime's
    # Both score the answer's list marker: SELF-PARAM against the model without the conversation,
    # FT(S), which has no teacher, against the gold "1." with the rest of the answer.
    assert (selfparam["sentence_loss"], selfparam["marker_retain"]) == ("content", True)
    assert rival["sentence_loss"] == "answer"


def test_not_utf8_names_the_line_of_the_first_bad_byte(tmp_path):
    from tasks.data.base import not_utf8

    path = tmp_path / "x.txt"
    path.write_bytes(b"ok\nfine\nbad \xff here\n")
    assert str(not_utf8(path)) == f"{path}:3: not UTF-8 text (byte 0xff); save the file as UTF-8"


# ---- one run per result file ---------------------------------------------------------------------

SLOW_ARGS = [
    "run",
    "--profile",
    "smoke",
    "--method",
    slow_method.NAME,
    "--task",
    "batch",
    "--set",
    "num_contexts=1",
    "--set",
    "episodes=3",
]


@pytest.fixture
def slow(registrations):
    slow_method.register()


def result_file(out: Path) -> Path:
    request = RunRequest(
        method=slow_method.NAME,
        task="batch",
        profile="smoke",
        out=out,
        overrides={"num_contexts": "1", "episodes": "3"},
    )
    return resolve(request).path


def test_a_held_lock_stops_a_second_run_naming_its_pid(bench, tmp_path, slow):
    out = tmp_path / "out"
    path = result_file(out)
    with RunLock(lock_path(path), path):
        line = assert_refused(
            bench(*SLOW_ARGS, "--out", out), f"pid {os.getpid()}", str(path), out=tmp_path / "nothing"
        )
        assert "another bench run" in line
        assert not path.exists() and not partial_path(path).exists()
    assert not lock_path(path).exists()  # released and removed


def test_a_stale_lock_is_taken_over(bench, tmp_path, slow):
    out = tmp_path / "out"
    path = result_file(out)
    path.parent.mkdir(parents=True)
    lock_path(path).write_text("999999999 a-host-that-died\n")  # no process holds it
    code, _, err = bench(*SLOW_ARGS, "--out", out)
    assert code == 0, err
    assert path.exists() and not lock_path(path).exists()


def wait_for(marker: Path, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"the slow run ended early: {process.communicate()[1]}")
        assert time.monotonic() < deadline, "the slow run never reached its second batch"
        time.sleep(0.2)


def test_second_identical_run_stops_and_sigterm_keeps_the_partial_log(bench, tmp_path, slow):
    """Run A (another process) waits in its second batch: an identical run B stops naming A's PID;
    SIGTERM stops A like Ctrl-C (partial log kept, lock removed, one line, exit 143); B then resumes."""
    out = tmp_path / "out"
    path = result_file(out)
    marker = tmp_path / "waiting"
    env = {**os.environ, slow_method.MARKER_ENV: str(marker)}
    first = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "slow_method.py"), *SLOW_ARGS, "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(marker, first)
        code, _, err = bench(*SLOW_ARGS, "--out", out)
        assert code == 2 and err.strip().splitlines() == [err.strip()], err
        assert f"pid {first.pid} " in err and "Traceback" not in err
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGTERM, first_err
    last = first_err.strip().splitlines()[-1]
    assert last == (
        "bench: terminated by SIGTERM; finished episodes and the last training checkpoint are saved; "
        "run the same command to resume"
    )
    assert "Traceback" not in first_err
    assert not lock_path(path).exists() and not path.exists()
    kept = partial_path(path).read_text().splitlines()
    assert len(kept) == 2  # the header and the first batch

    code, out_text, err = bench(*SLOW_ARGS, "--out", out)
    assert code == 0, err
    assert "resumed: 1 episodes" in out_text
    assert path.exists() and not partial_path(path).exists() and not lock_path(path).exists()


class SigtermInSecondBatch(slow_method.SlowMethod):
    """Sends this process SIGTERM in its second batch: what a scheduler does to a running job."""

    def inject(self, contexts):
        if contexts[0].id == slow_method.WAITS_IN:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises during the wait


def test_sigterm_in_process_behaves_like_ctrl_c(bench, tmp_path, registrations):
    from benchmark.registry import register_method

    register_method("test-sigterm")(SigtermInSecondBatch)
    before = signal.getsignal(signal.SIGTERM)
    args = [*SLOW_ARGS, "--out", tmp_path]
    args[args.index(slow_method.NAME)] = "test-sigterm"
    code, _, err = bench(*args)
    assert code == 143
    assert err.strip().splitlines()[-1].startswith("bench: terminated by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) == before  # the CLI's handler is removed again
    assert len(list(tmp_path.rglob("*.partial.jsonl"))) == 1
    assert not list(tmp_path.rglob("*.lock")) and not list(tmp_path.rglob("*__*.json"))


# ---- writes that fail ----------------------------------------------------------------------------


def refuse_writes_under(monkeypatch, folder: Path, error: int = errno.EACCES) -> None:
    """Writes under ``folder`` fail as on a read-only (EACCES) or full (ENOSPC) file system. Faked:
    these tests run as root too, whom a read-only folder does not stop."""
    real_open, real_mkdir = os.open, os.mkdir

    def under(path) -> bool:
        return Path(os.fsdecode(path)).resolve().is_relative_to(folder.resolve())

    def fake_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(error, os.strerror(error), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path):
            raise OSError(error, os.strerror(error), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def finished_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("error, words", [(errno.EACCES, "Permission denied"), (errno.ENOSPC, "No space left")])
def test_unwritable_output_folder_stops_with_one_line(bench, tmp_path, monkeypatch, error, words):
    out = tmp_path / "out"
    code, _, err = bench(*run_args("base_q", "batch"), "--out", out)
    assert code == 0, err
    earlier = finished_files(out)
    refuse_writes_under(monkeypatch, out, error)
    code, _, err = bench(*run_args("base_q", "batch", "--seed", "1"), "--out", out)
    line = err.strip()
    assert code == 2 and len(line.splitlines()) == 1 and "Traceback" not in err, err
    assert line.startswith("bench: error: cannot write ") and words in line, line
    assert finished_files(out) == earlier  # the earlier result intact, nothing new


def test_disk_full_at_the_result_keeps_earlier_files_and_the_partial_log(bench, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert bench(*run_args("base_q", "batch"), "--out", out)[0] == 0
    earlier = finished_files(out)

    real_replace = os.replace

    def full(src, dst):  # the result file's atomic write fails; the partial log's writes go through
        if str(dst).endswith(".json"):  # not the .partial.jsonl
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    second = run_args("base_q", "batch", "--seed", "1", "--set", "episodes=2", "--set", "num_contexts=1")
    code, _, err = bench(*second, "--out", out)
    assert code == 2 and "Traceback" not in err, err
    messages = [line for line in err.splitlines() if line.startswith("bench: ")]  # after the progress bar
    assert len(messages) == 1 and "cannot write" in messages[0] and "No space left on device" in messages[0], err
    now = finished_files(out)
    assert {k: v for k, v in now.items() if k in earlier} == earlier
    new = sorted(set(now) - set(earlier))
    assert len(new) == 1 and new[0].endswith(".partial.jsonl")  # no temporary file left behind
    assert len((out / new[0]).read_text().splitlines()) == 3  # header and both episodes kept

    monkeypatch.undo()
    code, text, err = bench(*second, "--out", out)
    assert code == 0, err
    assert "resumed: 2 episodes" in text
