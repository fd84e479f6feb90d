"""Task metadata (scores, labels, the primary one, units, curves, the paper's table): declared on the
class and written into result files."""

from __future__ import annotations

import json

import pytest

from benchmark.registry import TASKS
from benchmark.task_info import MetricInfo, TaskInfo
from tasks.base import Task
from tasks.batch import BatchTask


# ---- what the built-ins declare -------------------------------------------------------------------
def test_builtin_tasks_declare_the_leaderboards_columns_and_labels():
    infos = {name: TaskInfo.of_class(cls) for name, cls in TASKS.items()}
    batch_info, seq, rec = infos["batch"], infos["sequential"], infos["recommendation"]
    assert batch_info.board_metrics == ["qa_f1", "acc"]
    assert seq.board_metrics == ["qa_f1", "efficacy.qa_f1", "retention_mean.qa_f1", "interference",
                                 "before.qa_f1", "acc"]
    assert rec.board_metrics == ["recall@1_r1", "recall@1_r2", "recall@1_r3", "recall@1_r4",
                                 "recall@5_r1", "recall@10_r1"]
    assert [seq.metric(m).heading for m in ("qa_f1", "interference", "before.qa_f1")] == [
        "QA-F1 after the last step", "interference (lower is better)", "QA-F1 before injection"]
    assert batch_info.metric("qa_f1").heading == "QA-F1" and rec.metric("recall@5_r1").heading == "R@5 r1"
    assert [i.primary.name for i in (batch_info, seq, rec)] == ["qa_f1", "qa_f1", "recall@1_r1"]
    # what a paired comparison draws, and where each task's results go in the paper's tables
    assert [(i.paired_unit, i.resampled_unit, i.resample_episodes) for i in (batch_info, seq, rec)] == [
        ("contexts", "contexts", False), ("contexts", "sequences", True), ("gold items", "test points", False)]
    assert [(i.paper_table, i.paper_columns) for i in (batch_info, seq)] == [("1", ("qa_f1",)), ("3", ("qa_f1",))]
    assert rec.paper_table == "2" and [rec.metric(m).short for m in rec.paper_columns] == ["r1", "r2", "r3", "r4"]
    assert seq.curves == ("qa_f1",) and not batch_info.curves and not rec.curves
    assert rec.compared_metrics[:3] == ("recall@1_r1", "recall@5_r1", "recall@10_r1")


def test_a_subclass_inherits_the_scores_but_not_the_name_or_the_papers_table():
    class Variant(BatchTask):  # not registered
        pass

    info = TaskInfo.of_class(Variant)
    assert (info.paper_table, info.display_name) == ("", info.name)
    assert info.board_metrics == ["qa_f1", "acc"]


@pytest.mark.parametrize("body, message", [
    ({"metrics": (MetricInfo("a", primary=True), MetricInfo("b", primary=True))}, "more than one primary"),
    ({"metrics": (MetricInfo("a"), MetricInfo("a"))}, "metrics named twice"),
    ({"metrics": (MetricInfo("a"),), "curves": ("b",)}, r"curves names undeclared metrics \['b'\]"),
    ({"paper_table": "9"}, "paper_table is '9'"),
])
def test_an_inconsistent_declaration_is_refused_when_the_class_is_defined(body, message):
    with pytest.raises(TypeError, match=message):
        type("Broken", (Task,), dict(body))


def test_task_info_round_trips_through_json_and_tolerates_gaps():
    info = TaskInfo.of_class(TASKS.get("recommendation"))
    assert TaskInfo.from_record(info.name, json.loads(json.dumps(info.record()))) == info
    sparse = TaskInfo.from_record("t", {"version": "2", "metrics": [{"name": "x", "higher_is_better": None},
                                                                    {"label": "no name"}, "junk"],
                                        "curves": "x", "resample_episodes": 1})
    assert sparse == TaskInfo("t", metrics=(MetricInfo("x", higher_is_better=None),))
    assert sparse.display_name == "t" and sparse.metric("x").label == "x" and sparse.primary.name == "x"
    assert sparse.metric("undeclared").heading == "undeclared"


def test_the_runner_writes_task_info_into_the_result_file(tmp_path):
    from benchmark.runner import RunRequest, run

    outcome = run(RunRequest(method="base_q", task="batch", profile="smoke", out=tmp_path))
    written = json.loads(outcome.path.read_text())["task_info"]
    assert written == TaskInfo.of_class(BatchTask).record()
    assert TaskInfo.from_record("batch", written) == TaskInfo.of_class(BatchTask)
