"""The result contract (``benchmark.schema``): the runner writes schema 2, nothing of a task's aggregate
is lost, a schema-1 file reads the same, and an episode log written before schema 2 still resumes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from test_recommendation import PROBES, make_data_root

from benchmark.results import config_hash, partial_path
from benchmark.runner import RunRequest, resolve, run, set_up
from benchmark.schema import SCHEMA_VERSION, Result, nested_scores, upgrade
from leaderboard.board import board_table, boards
from leaderboard.load import load_results

TASKS = ("batch", "sequential", "recommendation")


def smoke(tmp_path: Path, task: str, method: str = "base_q", **overrides: str) -> RunRequest:
    dataset = None
    if task == "recommendation":  # fixture files, so that no shared data is needed
        root = tmp_path / "data"
        if not root.exists():
            make_data_root(root, PROBES)
        fixture = {"data_path": str(root), "num_probes": "0", "probes_per_episode": "2", "num_conversations": "0"}
        overrides = {**fixture, **overrides}
        dataset = "redial"
    return RunRequest(
        method=method, task=task, dataset=dataset, profile="smoke", out=tmp_path / "runs", overrides=overrides
    )


def schema_1(result: dict[str, Any]) -> dict[str, Any]:
    """The file the runner wrote before schema 2: the aggregate as ``scores``, the task's own records."""
    old = copy.deepcopy(result)
    old.update(schema_version=1, scores=nested_scores(result))
    del old["details"]
    for episode in old["episodes"]:
        del episode["per_unit"], episode["asked"]
    return old


@pytest.mark.parametrize("task", TASKS)
def test_the_runner_writes_schema_2_and_keeps_the_whole_aggregate(tmp_path, tiny_lm, task):
    request = smoke(tmp_path, task)
    outcome = run(request, lm=tiny_lm)
    written = json.loads(outcome.path.read_text())
    assert written["schema_version"] == SCHEMA_VERSION == 2
    # every key of the schema; git_commit_at_end only when the checkout changed during the run,
    # method_provenance only for a method that loads something from outside the repository
    assert set(written) == set(Result.__annotations__) - {"git_commit_at_end", "method_provenance"}
    assert all(set(s) == {"mean", "ci_low", "ci_high", "n"} for s in written["scores"].values())
    assert {"curves", "matrices"} <= set(written["details"])
    assert all("per_unit" in e and "asked" in e for e in written["episodes"])
    # what the task's aggregate returns, computed again from the episodes the file holds
    resolved = resolve(request)
    _, task_obj = set_up(resolved, tiny_lm)
    aggregate = task_obj.aggregate(written["episodes"])
    assert nested_scores(written) == aggregate
    assert resolved.task_cls.summary(nested_scores(written)) == resolved.task_cls.summary(aggregate)
    # a schema-1 file of the same run reads as this one
    old = schema_1(written)
    assert nested_scores(old) == aggregate
    assert upgrade(old) == written and upgrade(written) is written


def test_the_targets_section_and_sequential_details_survive(tmp_path, tiny_lm):
    outcome = run(smoke(tmp_path, "batch", "ft_sentences", targets="cloze"), lm=tiny_lm)
    written = json.loads(outcome.path.read_text())
    assert written["details"]["targets"]["generator"] == "cloze"
    assert written["scores"]["targets.grounding_rate"] == nested_scores(written)["targets"]["grounding_rate"]
    sequential = json.loads(run(smoke(tmp_path, "sequential"), lm=tiny_lm).path.read_text())
    nested = nested_scores(sequential)
    assert nested["efficacy"]["qa_f1"] == sequential["scores"]["efficacy.qa_f1"]
    assert sequential["details"]["curves"]["qa_f1"] == [row["qa_f1"]["mean"] for row in nested["steps"]]
    assert "curves" not in nested and "matrices" not in nested


@pytest.mark.parametrize("task", TASKS)
def test_a_schema_2_file_gives_the_leaderboard_row_of_its_schema_1_form(tmp_path, tiny_lm, task):
    outcome = run(smoke(tmp_path, task), lm=tiny_lm)
    written = json.loads(outcome.path.read_text())
    tables = []
    for name, data in (("new", written), ("old", schema_1(written))):
        folder = tmp_path / name
        path = folder / outcome.path.relative_to(tmp_path / "runs")
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(data, indent=1))
        (board,) = boards(load_results([folder]).results)
        table = board_table(board, link_from=folder)
        tables.append((board.title, board.metrics, table.headers, table.rows))
    assert tables[0] == tables[1]


def test_an_episode_log_from_before_schema_2_resumes(tmp_path, tiny_lm, monkeypatch):
    monkeypatch.setattr("benchmark.runner.git_commit", lambda: "c" * 40)  # both attempts at one commit
    request = smoke(tmp_path, "sequential")
    first = run(request, lm=tiny_lm)
    written = json.loads(first.path.read_text())
    old_records = schema_1(written)["episodes"]  # the task's own records, no per-unit scores
    header = {"config_hash": config_hash(resolve(request).config), "git_commit": "c" * 40}
    partial_path(first.path).write_text("".join(json.dumps(r) + "\n" for r in [header, *old_records]))
    first.path.unlink()
    again = run(request, lm=tiny_lm)
    assert again.resumed_episodes == len(old_records) == 2
    resumed = json.loads(again.path.read_text())
    assert resumed["schema_version"] == 2 and resumed["scores"] == written["scores"]
    assert resumed["details"] == written["details"]
    assert [e["per_unit"] for e in resumed["episodes"]] == [e["per_unit"] for e in written["episodes"]]


def test_bench_run_prints_a_reused_schema_1_file_as_it_printed_it(tmp_path, bench):
    args = ("run", "--method", "base_q", "--task", "sequential", "--profile", "smoke", "--out", str(tmp_path))
    code, fresh, err = bench(*args)
    assert code == 0, err
    (path,) = tmp_path.rglob("base_q__*.json")
    path.write_text(json.dumps(schema_1(json.loads(path.read_text()))))
    code, reused, err = bench(*args)
    assert code == 0, err
    assert "already complete" in reused
    table = fresh.split("\n", 1)[1].split("cost:")[0]
    assert table.strip() and table in reused
