"""Issue #20 item 1: a batch injection killed mid-training resumes at its last checkpoint.

The kill is a real SIGKILL of a ``bench run`` process, at a step drawn at random; the rerun must
print where it resumed, train only the steps after that checkpoint, and end with exactly the
weights, losses and predictions of an uninterrupted run.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark.checkpoint import Checkpoints, InjectionCheckpoint

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI with two observers: it SIGKILLs itself when Trainer.step is called for the
# KILL_AT-th time, and appends each injection's final weights digest and losses to STEP_LOG.
DRIVER = """
import hashlib, json, os, signal, sys
import methods.training as training

kill_at = int(os.environ.get("KILL_AT", "0"))
calls = 0
step = training.Trainer.step

def counted_step(self, batch, targets=None):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batch, targets)

record = training.TrainedMethod.record

def logged_record(self, report, wall_s):
    student = self.student
    weights = student.parameters() if os.environ.get("ALL_WEIGHTS") else training.trainable_parameters(student)
    blob = b"".join(p.detach().float().numpy().tobytes() for p in weights)
    with open(os.environ["STEP_LOG"], "a") as f:
        f.write(json.dumps({"trained": calls, "steps": report.steps, "losses": report.losses,
                            "weights": hashlib.sha256(blob).hexdigest()}) + "\\n")
    record(self, report, wall_s)

training.Trainer.step = counted_step
training.TrainedMethod.record = logged_record
from benchmark.app.cli import main
sys.exit(main(sys.argv[1:]))
"""

ARGS = ["run", "--task", "batch", "--profile", "smoke", "--checkpoint-every", "0"]


def bench(
    tmp_path: Path, method: str, out: Path, log: Path, kill_at: int = 0, args: list[str] = ARGS, **env_extra: str
) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {"KILL_AT": str(kill_at), "STEP_LOG": str(log), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env_extra}
    return subprocess.run(
        [sys.executable, str(driver), *args, "--method", method, "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def predictions(out: Path) -> list[str]:
    (path,) = out.glob("batch/*/*/*.json")
    return [p["prediction"] for e in json.loads(path.read_text())["episodes"] for p in e["predictions"]]


@pytest.mark.parametrize("method", ["selfparam", "ft_sentences"])
def test_sigkill_mid_injection_resumes_to_identical_result(tmp_path: Path, method: str) -> None:
    whole = bench(tmp_path, method, tmp_path / "whole", tmp_path / "whole.log")
    assert whole.returncode == 0, whole.stderr
    (reference,) = [json.loads(line) for line in (tmp_path / "whole.log").read_text().splitlines()]
    total = reference["steps"]
    assert total >= 4, "the smoke injection is too short to interrupt"

    kill_at = random.randint(2, total)  # steps 1 .. kill_at - 1 finish and are checkpointed
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    killed = bench(tmp_path, method, out, log, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not list(out.glob("batch/*/*/*.json")), "a killed run wrote a result file"
    assert list(out.glob("batch/*/*/*.checkpoints/*.pt")), "no checkpoint was left to resume from"

    resumed = bench(tmp_path, method, out, log)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {kill_at - 1} of {total}" in resumed.stderr, (kill_at, resumed.stderr)
    (after,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert after["trained"] == total - (kill_at - 1), (
        f"recomputed more than the steps after the checkpoint ({kill_at=})"
    )
    assert after["steps"] == total
    assert after["losses"] == reference["losses"], f"{kill_at=}"
    assert after["weights"] == reference["weights"], f"{kill_at=}"
    assert predictions(out) == predictions(tmp_path / "whole")
    assert not list(out.glob("batch/*/*/*.checkpoints")), "checkpoints outlived the finished run"


def test_sigkill_mid_sequence_with_merged_adapters_resumes_to_identical_weights(tmp_path: Path) -> None:
    """Sequential injection with ``merge_adapter``: the earlier injections' updates live in the merged
    weights, not in the adapter a checkpoint saves; a resumed sequence must rebuild them exactly."""
    args = ["run", "--task", "sequential", "--profile", "smoke", "--checkpoint-every", "0"]
    args += ["--set", "merge_adapter=true", "--set", "num_sequences=1"]
    whole = bench(tmp_path, "selfparam", tmp_path / "whole", tmp_path / "whole.log", args=args, ALL_WEIGHTS="1")
    assert whole.returncode == 0, whole.stderr
    reference = [json.loads(line) for line in (tmp_path / "whole.log").read_text().splitlines()]
    assert len(reference) == 3 and len({r["weights"] for r in reference}) == 3
    first, second = reference[0]["steps"], reference[1]["steps"]
    kill_at = first + second + 2  # inside the third injection, after two merges
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    killed = bench(tmp_path, "selfparam", out, log, kill_at=kill_at, args=args, ALL_WEIGHTS="1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = bench(tmp_path, "selfparam", out, log, args=args, ALL_WEIGHTS="1")
    assert resumed.returncode == 0, resumed.stderr
    third = reference[2]["steps"]
    assert f"resumed at step 1 of {third}" in resumed.stderr, resumed.stderr
    after = [json.loads(line) for line in log.read_text().splitlines()]
    assert after[-1]["trained"] == third - 1  # only the third injection's steps after its checkpoint
    assert [r["weights"] for r in after[-3:]] == [r["weights"] for r in reference]
    (done,) = out.glob("sequential/*/*/*.json")
    (ref,) = (tmp_path / "whole").glob("sequential/*/*/*.json")
    assert json.loads(done.read_text())["details"]["matrix"] == json.loads(ref.read_text())["details"]["matrix"]


def test_a_checkpoint_of_another_injection_or_length_is_ignored(tmp_path: Path) -> None:
    tag = {"config_hash": "abc", "stream": "batch-0", "injection": 0}
    saved = InjectionCheckpoint(tmp_path / "batch-0@0.pt", tag, every_s=0)
    saved.save({"position": 3, "params": [torch.ones(2)]}, total_steps=10)
    assert saved.load(total_steps=10)["position"] == 3
    assert saved.load(total_steps=12) is None  # another data order
    other = InjectionCheckpoint(tmp_path / "batch-0@0.pt", {**tag, "config_hash": "def"}, every_s=0)
    assert other.load(total_steps=10) is None  # another run's settings
    (tmp_path / "cut.pt").write_bytes(b"not a checkpoint")
    assert InjectionCheckpoint(tmp_path / "cut.pt", tag, every_s=0).load(total_steps=10) is None


def test_checkpoints_are_per_injection_and_removed_per_episode(tmp_path: Path) -> None:
    folder = tmp_path / "run.checkpoints"
    checkpoints = Checkpoints(folder, "abc", every_s=0)
    stream = checkpoints.for_stream("seq-1")
    first, second = stream.next_injection(), stream.next_injection()
    assert first.path != second.path
    for c in (first, second, checkpoints.for_stream("seq-10").next_injection()):
        c.save({"position": 1}, total_steps=2)
    checkpoints.remove_stream("seq-1")
    assert sorted(p.name for p in folder.iterdir()) == ["seq-10@0.pt"]
    assert Checkpoints(folder, "abc", every_s=None).for_stream("seq-1") is None  # turned off


# ---- the cost of a resumed injection is an uninterrupted run's ----------------------------------


@pytest.mark.parametrize("kills", [(3,), (3, 3)], ids=["killed once", "killed twice"])
def test_a_resumed_injection_costs_what_an_uninterrupted_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tiny_lm, kills: tuple[int, ...]
) -> None:
    """On a fake clock, drawing a batch takes 1 s and a training step 10 s, nothing else any time.
    Each killed attempt dies on its ``kills[i]``-th step, after checkpointing the ones before. The
    finished run's train_s, inject_s and wall_s must be the uninterrupted 11 s a step: the replay of
    the checkpointed batches (1 s each, in the last attempt) goes to resume_overhead_s, and the
    killed attempts' training up to the last checkpoint, replays left out, is credited back."""
    import types

    import methods.training.loop as loop
    from benchmark.runner import RunRequest, run

    monkeypatch.setattr("benchmark.runner.git_commit", lambda: "c" * 40)  # others may edit the checkout
    clock = {"now": 0.0, "steps": 0, "kill_at": 0}
    fake_time = types.SimpleNamespace(perf_counter=lambda: clock["now"], monotonic=time.monotonic)
    for module in ("benchmark.runner", "methods.training.loop", "methods.finetune"):
        monkeypatch.setattr(f"{module}.time", fake_time)
    draw, step = loop.batches, loop.Trainer.step

    def slow_batches(*args, **kwargs):
        for batch in draw(*args, **kwargs):
            clock["now"] += 1.0
            yield batch

    def slow_step(self, batch, targets=None):
        clock["steps"] += 1
        if clock["steps"] == clock["kill_at"]:
            raise KeyboardInterrupt  # the kill: the steps before it are checkpointed (every_s=0)
        clock["now"] += 10.0
        return step(self, batch, targets)

    monkeypatch.setattr(loop, "batches", slow_batches)
    monkeypatch.setattr(loop.Trainer, "step", slow_step)

    def bench(out: Path) -> dict:
        overrides = {"num_contexts": "3", "batch_size": "1"}  # 2 epochs of 3 one-context steps
        request = RunRequest("ft_context", "batch", profile="smoke", out=out, overrides=overrides, checkpoint_every=0)
        return run(request, lm=tiny_lm).result

    clean = bench(tmp_path / "clean")["episodes"][0]["cost"]
    steps = clean["train_steps"]
    assert steps == 6
    assert clean["train_s"] == clean["inject_s"] == clean["wall_s"] == 11.0 * steps
    assert "resume_overhead_s" not in clean and "resumed_train_s" not in clean

    saved = 0  # steps checkpointed so far
    for kill_at in kills:
        clock.update(steps=0, kill_at=kill_at)
        with pytest.raises(KeyboardInterrupt):
            bench(tmp_path / "resumed")
        saved += kill_at - 1
    capsys.readouterr()
    clock.update(steps=0, kill_at=0)
    cost = bench(tmp_path / "resumed")["episodes"][0]["cost"]
    assert f"resumed at step {saved} of {steps}" in capsys.readouterr().err
    assert clock["steps"] == steps - saved
    assert cost["train_steps"] == steps and cost["train_tokens"] == clean["train_tokens"]
    assert cost["resume_overhead_s"] == 1.0 * saved  # this attempt's replay: one draw per saved step
    assert cost["resumed_train_s"] == 11.0 * saved  # the killed attempts' training, their replays left out
    for key in ("train_s", "inject_s", "wall_s"):
        assert cost[key] == clean[key], key
