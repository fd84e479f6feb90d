import json

import pytest

from benchmark.registry import register_method
from benchmark.runner import RunRequest, run
from methods.base import Method

CALLS: dict[str, list] = {"inject": [], "instances": []}


@pytest.fixture
def counting_method(registrations):
    """A method that records every instance and injection, and can die mid-run on request."""

    @register_method("test-counting")
    class Counting(Method):
        description = "records calls"
        fail_on: set[str] = set()

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            CALLS["instances"].append(self)

        def inject(self, contexts):
            ids = [c.id for c in contexts]
            if set(ids) & Counting.fail_on:
                raise KeyboardInterrupt  # what Ctrl-C does in the middle of an episode
            CALLS["inject"].append(ids)

    CALLS["inject"].clear()
    CALLS["instances"].clear()
    yield Counting


def request(tmp_path, **overrides):
    return RunRequest(
        method="test-counting",
        task="batch",
        profile="smoke",
        out=tmp_path,
        overrides={"num_contexts": "1", "episodes": "3", **overrides},
    )


def test_result_file_schema(tmp_path, counting_method, tiny_lm):
    outcome = run(request(tmp_path), lm=tiny_lm)
    data = json.loads(outcome.path.read_text())
    for key in (
        "schema_version",
        "task",
        "method",
        "dataset",
        "model",
        "profile",
        "seed",
        "config",
        "versions",
        "git_commit",
        "started_at",
        "finished_at",
        "scores",
        "cost",
        "episodes",
        "model_info",
    ):
        assert key in data, key
    assert data["config"]["params"]["task"] == {
        "num_contexts": 1,
        "episodes": 3,
        "split": "test",
        "sample": "default",
        "first_context": 0,
    }
    assert data["model_info"]["prompt_format"] == "raw"
    for metric in ("qa_f1", "acc"):
        assert set(data["scores"][metric]) == {"mean", "ci_low", "ci_high", "n"}
        assert data["scores"][metric]["n"] == 3
    for key in ("wall_s", "inject_s", "eval_s", "peak_rss_bytes", "footprint_bytes", "train_tokens"):
        assert key in data["cost"], key
    prediction = data["episodes"][0]["predictions"][0]
    assert set(prediction) >= {"context_id", "question", "answers", "prediction", "f1", "acc"}
    assert "torch" in data["versions"]
    assert not list(tmp_path.rglob("*.partial.jsonl"))


def test_fresh_method_per_episode(tmp_path, counting_method, tiny_lm):
    run(request(tmp_path), lm=tiny_lm)
    assert len(CALLS["instances"]) == 3
    assert len({id(m) for m in CALLS["instances"]}) == 3
    assert [len(ids) for ids in CALLS["inject"]] == [1, 1, 1]


def test_resume_after_interrupt_recomputes_nothing_done(tmp_path, counting_method, tiny_lm):
    counting_method.fail_on = {"fictional-0001"}  # dies during the second episode
    with pytest.raises(KeyboardInterrupt):
        run(request(tmp_path), lm=tiny_lm)
    assert CALLS["inject"] == [["fictional-0000"]]
    assert list(tmp_path.rglob("*.partial.jsonl")) and not list(tmp_path.rglob("*__*.json"))

    counting_method.fail_on = set()
    CALLS["inject"].clear()
    outcome = run(request(tmp_path), lm=tiny_lm)
    assert CALLS["inject"] == [["fictional-0001"], ["fictional-0002"]]
    assert outcome.resumed_episodes == 1
    assert [e["episode"] for e in outcome.result["episodes"]] == ["batch-0", "batch-1", "batch-2"]

    CALLS["inject"].clear()
    again = run(request(tmp_path), lm=tiny_lm)
    assert again.reused and CALLS["inject"] == []  # complete: not recomputed
    forced = run(RunRequest(**{**request(tmp_path).__dict__, "force": True}), lm=tiny_lm)
    assert not forced.reused and len(CALLS["inject"]) == 3


def test_torn_last_line_after_kill_is_ignored(tmp_path, counting_method, tiny_lm):
    counting_method.fail_on = {"fictional-0002"}
    with pytest.raises(KeyboardInterrupt):
        run(request(tmp_path), lm=tiny_lm)
    partial = next(tmp_path.rglob("*.partial.jsonl"))
    with partial.open("a") as handle:
        handle.write('{"episode": "batch-2", "predi')  # kill -9 in the middle of a write
    counting_method.fail_on = set()
    CALLS["inject"].clear()
    outcome = run(request(tmp_path), lm=tiny_lm)
    assert CALLS["inject"] == [["fictional-0002"]]
    assert len(outcome.result["episodes"]) == 3


def test_resumed_result_equals_uninterrupted_result(tmp_path, tiny_lm):
    clean = run(
        RunRequest(
            "base_q", "batch", profile="smoke", out=tmp_path / "a", overrides={"num_contexts": "1", "episodes": "2"}
        ),
        lm=tiny_lm,
    )
    assert (
        clean.result["scores"]
        == run(
            RunRequest(
                "base_q", "batch", profile="smoke", out=tmp_path / "b", overrides={"num_contexts": "1", "episodes": "2"}
            ),
            lm=tiny_lm,
        ).result["scores"]
    )


def test_different_settings_get_different_files(tmp_path):
    from benchmark.runner import resolve

    a = resolve(RunRequest("base_q", "batch", out=tmp_path)).path
    b = resolve(RunRequest("base_q", "batch", out=tmp_path, overrides={"num_contexts": "7"})).path
    c = resolve(RunRequest("base_q", "batch", out=tmp_path, overrides={"num_contexts": "20"})).path
    assert a != b and a == c  # an override equal to the default is the same run


def test_task_specific_profile_values_resolve_and_are_recorded(tmp_path, counting_method, tiny_lm):
    from dataclasses import dataclass

    @dataclass
    class Steps:
        epochs: int = 1
        lr: float = 0.1

    counting_method.Params = Steps
    counting_method.profiles = {"smoke": {"epochs": 2}, "smoke@sequential": {"epochs": 5, "lr": 0.5}}
    batch = run(request(tmp_path), lm=tiny_lm).result
    assert batch["config"]["params"]["method"] == {"epochs": 2, "lr": 0.1}
    assert batch["profile_entries"]["method"] == ["smoke"]
    overrides = {"num_sequences": "1", "sequence_length": "1", "lr": "0.3"}
    sequential = run(
        RunRequest(method="test-counting", task="sequential", profile="smoke", out=tmp_path, overrides=overrides),
        lm=tiny_lm,
    ).result
    assert sequential["config"]["params"]["method"] == {"epochs": 5, "lr": 0.3}  # --set still wins
    assert sequential["profile_entries"]["method"] == ["smoke", "smoke@sequential"]
    assert CALLS["instances"][-1].params == Steps(epochs=5, lr=0.3)
