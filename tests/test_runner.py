import json
import subprocess

import pytest

from benchmark.registry import register_method
from benchmark.runner import RunRequest, run
from methods.base import Method

CALLS: dict[str, list] = {"inject": [], "instances": []}
COMMIT = "c" * 40


@pytest.fixture(autouse=True)
def pinned_commit(monkeypatch):
    """The runner sees one fixed commit, so a resume test does not start over when someone edits the
    checkout meanwhile; ``checkout`` below changes it on purpose."""
    monkeypatch.setattr("benchmark.runner.git_commit", lambda: COMMIT)


@pytest.fixture
def checkout(monkeypatch):
    """The commit the runner reads: ``checkout["commit"] = ...`` moves it."""
    state = {"commit": "a" * 40}
    monkeypatch.setattr("benchmark.runner.git_commit", lambda: state["commit"])
    return state


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


def test_the_commit_is_read_at_the_start_and_a_change_during_the_run_is_recorded(
    tmp_path, counting_method, tiny_lm, monkeypatch, capsys
):
    commits = iter(["a" * 40, "b" * 40 + "-dirty"])
    monkeypatch.setattr("benchmark.runner.git_commit", lambda: next(commits))
    data = json.loads(run(request(tmp_path), lm=tiny_lm).path.read_text())
    assert data["git_commit"] == "a" * 40
    assert data["git_commit_at_end"] == "b" * 40 + "-dirty"
    assert "the checkout changed during the run" in capsys.readouterr().err


def test_an_unchanged_checkout_records_one_commit(tmp_path, counting_method, tiny_lm, monkeypatch):
    monkeypatch.setattr("benchmark.runner.git_commit", lambda: "c" * 40)
    data = json.loads(run(request(tmp_path), lm=tiny_lm).path.read_text())
    assert data["git_commit"] == "c" * 40 and "git_commit_at_end" not in data


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


# ---- the pipeline: the runner carries out a task's plan ----------------------------------------


@pytest.fixture
def plan_task(registrations):
    """A task that only plans and scores: a setup injection, then two steps, the second injecting."""
    from benchmark.api import EpisodePlan, Step, Task
    from benchmark.metrics import summarize
    from benchmark.registry import register_task
    from benchmark.task_info import MetricInfo
    from benchmark.types import Context, Prompt

    @register_task("test-plan")
    class PlanTask(Task):
        description = "a setup injection shared by two episodes, then two steps each"
        metrics = (MetricInfo("hit", "hit", primary=True),)
        shared = True

        def prepare(self, lm):
            pass

        def episodes(self):
            return ["a", "b"]

        def method_key(self, episode):
            return "shared" if PlanTask.shared else episode

        def plan(self, episode, method):
            ask = [Prompt("p", "Which?")]
            return EpisodePlan(
                setup=[Context("s", "set-up text", ["t1", "t2"])],
                steps=[
                    Step(ask, expected=["x"], info={"step": 0}),
                    Step(ask, inject=[Context(f"c-{episode}", "more text")], expected=["x"], info={"step": 1}),
                ],
                record={"which": episode},
            )

        def score(self, step, answers):
            return {"hit": float(answers[0].text == step.expected[0])}

        def aggregate(self, records):
            return {"hit": summarize([s["hit"] for r in records for s in r["steps"]], seed=self.seed)}

        @classmethod
        def summary(cls, scores):
            return f"hit {scores['hit']['mean']}"

    yield PlanTask


@pytest.fixture
def answering_method(registrations):
    @register_method("test-answering")
    class Answering(Method):
        answers = ["x"]

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            CALLS["instances"].append(self)

        def inject(self, contexts):
            CALLS["inject"].append([c.id for c in contexts])

        def generate(self, prompts):
            return Answering.answers[: len(prompts)]  # one "x" per prompt, or too few

    CALLS["inject"].clear()
    CALLS["instances"].clear()
    yield Answering


def plan_request(tmp_path):
    return RunRequest(method="test-answering", task="test-plan", profile="smoke", out=tmp_path)


def test_episodes_sharing_a_method_key_share_one_method_and_its_setup(tmp_path, plan_task, answering_method, tiny_lm):
    result = run(plan_request(tmp_path), lm=tiny_lm).result
    assert len(CALLS["instances"]) == 1  # built once, by the first episode
    assert CALLS["inject"] == [["s"], ["c-a"], ["c-b"]]  # the setup once, then each episode's step
    first, second = result["episodes"]
    assert (first["which"], first["num_contexts"], first["num_targets"]) == ("a", 2, 2)
    assert (second["which"], second["num_contexts"], second["num_targets"]) == ("b", 1, 0)
    assert [s["step"] for s in first["steps"]] == [0, 1] and all("footprint_bytes" in s for s in first["steps"])
    assert {"inject_s", "eval_s", "score_s", "wall_s"} <= set(first["cost"])
    assert "inject_s" in second["cost"] and result["scores"]["hit"]["mean"] == 1.0


def test_episodes_with_their_own_keys_get_fresh_methods_set_up_each(tmp_path, plan_task, answering_method, tiny_lm):
    plan_task.shared = False
    run(plan_request(tmp_path), lm=tiny_lm)
    assert len({id(m) for m in CALLS["instances"]}) == 2
    assert CALLS["inject"] == [["s"], ["c-a"], ["s"], ["c-b"]]


def test_a_method_that_drops_answers_stops_the_run(tmp_path, plan_task, answering_method, tiny_lm):
    answering_method.answers = []
    with pytest.raises(RuntimeError, match="test-answering returned 0 answers for 1 prompts"):
        run(plan_request(tmp_path), lm=tiny_lm)
    assert not list(tmp_path.rglob("*.json"))


def test_a_task_refuses_a_method_before_anything_loads(tmp_path):
    from benchmark.errors import BenchError
    from benchmark.runner import resolve

    refused = RunRequest(method="base_cq", task="recommendation", dataset="redial", out=tmp_path)
    with pytest.raises(BenchError, match="no gold context"):
        resolve(refused)


# ---- provenance of resumed work: which commit computed it --------------------------------------


def test_a_partial_log_of_another_commit_is_not_resumed(tmp_path, counting_method, tiny_lm, checkout, capsys):
    from benchmark.checkpoint import checkpoint_folder
    from benchmark.results import partial_path
    from benchmark.runner import resolve

    counting_method.fail_on = {"fictional-0001"}
    with pytest.raises(KeyboardInterrupt):
        run(request(tmp_path), lm=tiny_lm)  # episode batch-0 done at commit a…
    path = resolve(request(tmp_path)).path
    stale = checkpoint_folder(path) / "batch-1@0.pt"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"training state of the old code")
    capsys.readouterr()

    checkout["commit"] = "b" * 40 + "-dirty"
    counting_method.fail_on = {"fictional-0000"}
    CALLS["inject"].clear()
    with pytest.raises(KeyboardInterrupt):
        run(request(tmp_path), lm=tiny_lm)  # starts over: dies in batch-0, not batch-1
    err = capsys.readouterr().err
    assert (
        f"partial log of {path.name} was written at commit aaaaaaa, this checkout is bbbbbbb-dirty: "
        "starting the cell over"
    ) in err
    assert not stale.exists()
    lines = [json.loads(line) for line in partial_path(path).read_text().splitlines()]
    assert lines == [{"config_hash": lines[0]["config_hash"], "git_commit": "b" * 40 + "-dirty"}]

    counting_method.fail_on = set()
    CALLS["inject"].clear()
    outcome = run(request(tmp_path), lm=tiny_lm)
    assert outcome.resumed_episodes == 0 and len(CALLS["inject"]) == 3
    assert outcome.result["git_commit"] == "b" * 40 + "-dirty"
    assert "starting the cell over" not in capsys.readouterr().err  # same commit now: nothing to say


def test_a_partial_log_without_a_commit_counts_as_another_commit(tmp_path, counting_method, tiny_lm, capsys):
    from benchmark.results import partial_path

    counting_method.fail_on = {"fictional-0002"}
    with pytest.raises(KeyboardInterrupt):
        run(request(tmp_path), lm=tiny_lm)
    partial = next(tmp_path.rglob("*.partial.jsonl"))
    header, *episodes = partial.read_text().splitlines()
    del (old := json.loads(header))["git_commit"]  # as written before the header named the commit
    partial.write_text("\n".join([json.dumps(old), *episodes]) + "\n")
    counting_method.fail_on = set()
    CALLS["inject"].clear()
    outcome = run(request(tmp_path), lm=tiny_lm)
    assert outcome.resumed_episodes == 0 and len(CALLS["inject"]) == 3
    assert "was written at commit unknown, this checkout is ccccccc: starting the cell over" in capsys.readouterr().err
    assert not partial_path(outcome.path).exists()


def test_a_partial_log_of_the_same_dirty_commit_resumes(tmp_path, counting_method, tiny_lm, checkout, capsys):
    checkout["commit"] = "d" * 40 + "-dirty"
    counting_method.fail_on = {"fictional-0001"}
    with pytest.raises(KeyboardInterrupt):
        run(request(tmp_path), lm=tiny_lm)
    counting_method.fail_on = set()
    CALLS["inject"].clear()
    outcome = run(request(tmp_path), lm=tiny_lm)
    assert outcome.resumed_episodes == 1 and CALLS["inject"] == [["fictional-0001"], ["fictional-0002"]]
    assert "starting the cell over" not in capsys.readouterr().err


def _git(root, *args):
    import subprocess

    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def test_code_changes_make_the_checkout_dirty_and_documentation_does_not(tmp_path):
    from benchmark.results import CODE_FOLDERS, git_commit

    assert set(CODE_FOLDERS) == {"benchmark", "methods", "tasks", "leaderboard"}  # pyproject's packages
    root = tmp_path / "repo"
    for folder in CODE_FOLDERS:
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / ".gitignore").write_text("__pycache__/\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "code")
    clean = git_commit(root)
    assert clean is not None and len(clean) == 40

    (root / "results").mkdir()
    (root / "results" / "run.json").write_text("{}")
    (root / "notes.md").write_text("notes")
    (root / "tasks" / "__pycache__").mkdir()
    (root / "tasks" / "__pycache__" / "x.pyc").write_bytes(b"")
    assert git_commit(root) == clean  # results, notes and ignored files change no code

    for new in ("methods/new_method.py", "tasks/lm_eval/new.yaml", "leaderboard/pkg/__init__.py"):
        path = root / new
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        assert git_commit(root) == clean + "-dirty", new  # discovery would import it
        path.unlink()
    (root / "benchmark" / "__init__.py").write_text("changed = True\n")
    assert git_commit(root) == clean + "-dirty"
    (root / "benchmark" / "__init__.py").write_text("")
    assert git_commit(root) == clean

    # documentation, tests and the leaderboard's page change no code, committed or not, so a sweep
    # can go on beside them and its results keep the code's commit
    (root / "README.md").write_text("# v1\n")
    (root / "leaderboard" / "README.md").write_text("page v1\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "docs")
    assert git_commit(root) == clean
    (root / "README.md").write_text("# v2\n")
    (root / "leaderboard" / "README.md").write_text("page v2\n")
    assert git_commit(root) == clean
    _git(root, "mv", "leaderboard/__init__.py", "leaderboard/board.py")  # a staged rename of code
    assert git_commit(root) == clean + "-dirty"
    _git(root, "commit", "-q", "-m", "code")
    recoded = git_commit(root)
    assert recoded is not None and len(recoded) == 40 and recoded != clean
    _git(root, "commit", "-q", "--allow-empty", "-m", "nothing")
    assert git_commit(root) == recoded


def test_the_code_pathspec_names_the_files_is_code_names():
    """``git_commit`` finds the code's commit with git pathspecs, its dirty state with ``is_code``."""
    from benchmark.results import CODE_PATHSPEC, REPO_ROOT, is_code

    def tracked(*pathspec: str) -> set[str]:
        listed = subprocess.run(["git", "ls-files", "--", *pathspec], cwd=REPO_ROOT, capture_output=True, text=True)
        if listed.returncode != 0:
            pytest.skip("not a git checkout")
        return set(listed.stdout.splitlines())

    every = tracked()
    assert {p for p in every if is_code(p)} == tracked(*CODE_PATHSPEC)
    assert any(p.startswith("leaderboard/") and not is_code(p) for p in every)  # the page: not code


# ---- cost of a resumed run equals an uninterrupted run's ----------------------------------------


def test_a_resumed_run_counts_a_shared_setup_once(tmp_path, plan_task, answering_method, tiny_lm):
    import time

    def inject(self, contexts):
        ids = [c.id for c in contexts]
        if ids == ["c-b"] and answering_method.fail:
            raise KeyboardInterrupt  # Ctrl-C in episode b, after episode a recorded the shared setup
        if ids == ["s"]:
            time.sleep(0.3)  # the setup: what a resume must not count twice
        self.stats["train_tokens"] += 100 * len(ids)
        CALLS["inject"].append(ids)

    answering_method.inject = inject
    answering_method.fail = False
    clean = run(plan_request(tmp_path / "clean"), lm=tiny_lm).result

    answering_method.fail = True
    with pytest.raises(KeyboardInterrupt):
        run(plan_request(tmp_path / "resumed"), lm=tiny_lm)
    answering_method.fail = False
    CALLS["inject"].clear()
    resumed = run(plan_request(tmp_path / "resumed"), lm=tiny_lm).result
    assert CALLS["inject"] == [["s"], ["c-b"]]  # the method was built again, with its setup

    assert resumed["cost"]["train_tokens"] == clean["cost"]["train_tokens"] == 300
    for field in ("num_contexts", "num_targets"):
        assert [e.get(field) for e in resumed["episodes"]] == [e.get(field) for e in clean["episodes"]]
    second = resumed["episodes"][1]["cost"]
    assert second["train_tokens"] == 100 and second["resume_overhead_s"] >= 0.3
    assert second["inject_s"] < 0.3 and second["wall_s"] < 0.3  # the re-injection is not the method's cost
    assert resumed["cost"]["resume_overhead_s"] == second["resume_overhead_s"]
    assert "resume_overhead_s" not in clean["cost"]
