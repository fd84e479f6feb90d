"""Task metadata (scores, labels, the primary one, units, curves, the paper's table): declared on the
class, written into result files, read by the tables, the leaderboard and ``bench compare``; and the
one upgrade of older result shapes."""

from __future__ import annotations

import copy
import json

import pytest
from resultfiles import batch, recommendation, result, sequential, summary, with_contexts

from benchmark.api import Task
from benchmark.metrics import exact_match, summarize
from benchmark.registry import TASKS
from benchmark.schema import SCHEMA_VERSION, upgrade
from benchmark.task_info import MetricInfo, TaskInfo
from leaderboard import extract, meta
from tasks.batch import BatchTask


# ---- what the built-ins declare -------------------------------------------------------------------
def test_builtin_tasks_declare_the_leaderboards_columns_and_labels():
    infos = {name: TaskInfo.of_class(cls) for name, cls in TASKS.items()}
    batch_info, seq, rec = infos["batch"], infos["sequential"], infos["recommendation"]
    assert batch_info.board_metrics == ["qa_f1", "acc"]
    assert seq.board_metrics == [
        "qa_f1",
        "efficacy.qa_f1",
        "retention_mean.qa_f1",
        "interference",
        "before.qa_f1",
        "acc",
    ]
    assert rec.board_metrics == [
        "recall@1_r1",
        "recall@1_r2",
        "recall@1_r3",
        "recall@1_r4",
        "recall@5_r1",
        "recall@10_r1",
    ]
    assert [seq.metric(m).heading for m in ("qa_f1", "interference", "before.qa_f1")] == [
        "QA-F1 after the last step",
        "interference (lower is better)",
        "QA-F1 before injection",
    ]
    assert batch_info.metric("qa_f1").heading == "QA-F1" and rec.metric("recall@5_r1").heading == "R@5 r1"
    assert [i.primary.name for i in (batch_info, seq, rec)] == ["qa_f1", "qa_f1", "recall@1_r1"]
    # what a paired comparison draws, and where each task's results go in the paper's tables
    assert [(i.paired_unit, i.resampled_unit, i.resample_episodes) for i in (batch_info, seq, rec)] == [
        ("contexts", "contexts", False),
        ("contexts", "sequences", True),
        ("gold items", "test points", False),
    ]
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


@pytest.mark.parametrize(
    "body, message",
    [
        ({"metrics": (MetricInfo("a", primary=True), MetricInfo("b", primary=True))}, "more than one primary"),
        ({"metrics": (MetricInfo("a"), MetricInfo("a"))}, "metrics named twice"),
        ({"metrics": (MetricInfo("a"),), "curves": ("b",)}, r"curves names undeclared metrics \['b'\]"),
        ({"paper_table": "9"}, "paper_table is '9'"),
    ],
)
def test_an_inconsistent_declaration_is_refused_when_the_class_is_defined(body, message):
    with pytest.raises(TypeError, match=message):
        type("Broken", (Task,), dict(body))


def test_task_info_round_trips_through_json_and_tolerates_gaps():
    info = TaskInfo.of_class(TASKS.get("recommendation"))
    assert TaskInfo.from_record(info.name, json.loads(json.dumps(info.record()))) == info
    sparse = TaskInfo.from_record(
        "t",
        {
            "version": "2",
            "metrics": [{"name": "x", "higher_is_better": None}, {"label": "no name"}, "junk"],
            "curves": "x",
            "resample_episodes": 1,
        },
    )
    assert sparse == TaskInfo("t", metrics=(MetricInfo("x", higher_is_better=None),))
    assert sparse.display_name == "t" and sparse.metric("x").label == "x" and sparse.primary.name == "x"
    assert sparse.metric("undeclared").heading == "undeclared"


def test_the_runner_writes_task_info_into_the_result_file(tmp_path):
    from benchmark.runner import RunRequest, run

    outcome = run(RunRequest(method="base_q", task="batch", profile="smoke", out=tmp_path))
    written = json.loads(outcome.path.read_text())["task_info"]
    assert written == TaskInfo.of_class(BatchTask).record()
    assert TaskInfo.from_record("batch", written) == TaskInfo.of_class(BatchTask)


# ---- where the readers take it from -------------------------------------------------------------
def test_the_files_task_info_wins_then_the_registered_class_then_the_scores():
    relabelled = batch("base_q", 0.1)
    record = TaskInfo.of_class(BatchTask).record()
    record["metrics"][0]["label"] = "token F1"
    relabelled["task_info"] = record
    assert meta.task_of(relabelled).metric("qa_f1").label == "token F1"
    assert meta.task_of(batch("base_q", 0.1)).metric("qa_f1").label == "QA-F1"  # the class
    unknown = result(
        "not-installed",
        "base_q",
        {"zeta": summary(0.2), "alpha": summary(0.4), "count": 3, "nested": {"x": summary(0.1)}},
    )
    inferred = meta.task_of(unknown)
    assert [m.name for m in inferred.metrics] == ["alpha", "zeta"] and inferred.primary.name == "alpha"
    assert inferred.paper_table == "" and not inferred.curves
    # a board takes its latest file's task_info
    older = copy.deepcopy(relabelled)
    older["finished_at"], older["task_info"] = "2026-01-01T00:00:00+00:00", TaskInfo.of_class(BatchTask).record()
    assert meta.by_task([relabelled, older]).metric("qa_f1").label == "token F1"


# ---- the upgrade of older shapes --------------------------------------------------------------------
def test_upgrade_flattens_scores_and_keeps_the_rest_as_details():
    old = sequential("selfparam", [0.0, 0.5, 0.4])
    old["scores"].update(num_sequences=2, interference=summary(0.1))
    frozen = copy.deepcopy(old)
    view = upgrade(old)
    assert old == frozen  # the file's dict is untouched
    assert view["schema_version"] == SCHEMA_VERSION and upgrade(view) is view
    assert view["scores"]["efficacy.qa_f1"] == summary(0.5) and view["scores"]["before.qa_f1"] == summary(0.0)
    assert "num_sequences" not in view["scores"] and view["details"]["num_sequences"] == 2
    assert view["details"]["curves"] == {"qa_f1": [0.0, 0.5, 0.4], "acc": [0.0, 0.5, 0.4]}
    assert view["details"]["matrices"]["qa_f1"] == [[0.0, 0.0], [0.5, 0.5], [0.4, 0.4]]
    assert extract.metric(old, "efficacy.qa_f1") == summary(0.5)  # readers accept the file's dict too


@pytest.mark.parametrize(
    "scores",
    [
        {"per_step": [0.0, 0.6, 0.5]},
        {"qa_f1": {"per_step": [summary(0.0), summary(0.6), summary(0.5)]}},
        {"step_qa_f1": {"0": 0.0, "2": 0.5, "1": 0.6}},
        {"qa_f1": [0.0, 0.6, 0.5]},
        {"retention_matrix": [[0.0, 0.0], [0.6, 0.6], [0.4, 0.6]]},
        {"matrix": {"qa_f1": [[0.0, 0.0], [0.6, 0.6], [0.4, 0.6]], "acc": [[1.0, 1.0]] * 3}},
    ],
)
def test_upgrade_reads_every_old_spelling_of_a_step_curve(scores):
    assert extract.step_curve(result("sequential", "x", scores), "qa_f1") == [0.0, 0.6, 0.5]


@pytest.mark.parametrize(
    "scores",
    [
        {"recall@1_r2": summary(0.3)},
        {"r2": summary(0.3)},
        {"r2_recall@1": summary(0.3)},
        {"recall_at_1_r2": summary(0.3)},
        {"recall@1": {"r2": summary(0.3)}},
        {"r2": {"recall@1": summary(0.3), "recall@5": summary(0.9)}},
        {"recall": {"r2": {"@1": summary(0.3)}}},
        {"r2": summary(0.9), "recall@1_r2": summary(0.3)},  # the file's own name wins over another spelling
    ],
)
def test_upgrade_reads_every_old_spelling_of_recall(scores):
    assert extract.metric(result("recommendation", "x", scores), "recall@1_r2") == summary(0.3)


def test_upgrade_gives_every_layout_per_unit_scores_and_what_was_asked():
    qa = upgrade(with_contexts(batch("x", 0.0), {"batch-0": {"c1": 0.2, "c2": 0.4}}))
    assert qa["episodes"][0]["per_unit"] == [{"c1": {"qa_f1": 0.2, "acc": 0.2}, "c2": {"qa_f1": 0.4, "acc": 0.4}}]
    assert qa["episodes"][0]["asked"] == {"c1": ["What is c1?"], "c2": ["What is c2?"]}
    assert extract.units(qa, "qa_f1") == {("0", "batch-0", "c1"): 0.2, ("0", "batch-0", "c2"): 0.4}

    seq = with_contexts(sequential("x", [0.0, 0.5]), {"seq-0": {"c1": 0.6, "c2": 0.8}})
    assert extract.units(seq, "qa_f1") == {("0", "seq-0", "c1"): 0.6, ("0", "seq-0", "c2"): 0.8}
    assert (
        extract.units(seq, "qa_f1", step=0)
        == extract.units(seq, "before.qa_f1")
        == {("0", "seq-0", "c1"): 0.0, ("0", "seq-0", "c2"): 0.0}
    )
    assert extract.units(seq, "qa_f1", step=2) is None  # no such step
    assert extract.probes(seq) == {("0", "seq-0", "c1", "What is c1?"), ("0", "seq-0", "c2", "What is c2?")}

    rec = recommendation("x", "redial", [0.5, 0.5, 0.5, 0.5])
    hits = {"r1": {"1": [1, 0], "5": [1, 1]}}
    rec["episodes"] = [
        {
            "episode": "probes-0000",
            "predictions": [
                {"probe_id": "p1", "gold": ["A", "B"], "hits": hits},
                {"probe_id": "p2", "gold": ["C"], "hits": {}},
            ],
        }
    ]
    assert extract.units(rec, "recall@1_r1") is None  # p2 holds no hits: no per-unit scores to pair
    rec["episodes"][0]["predictions"].pop()
    assert extract.units(rec, "recall@5_r1") == {
        ("0", "probes-0000", "p1", "0"): 1.0,
        ("0", "probes-0000", "p1", "1"): 1.0,
    }
    assert extract.probes(rec) == {("0", "probes-0000", "p1", "A"), ("0", "probes-0000", "p1", "B")}
    assert extract.units(rec, "qa_f1") is None


# ---- a task added from outside: its own score, under its own label ----------------------------------
class ExactBatch(BatchTask):
    """Batch injection scored by exact match, as a third party would add a task."""

    name = "exact-batch"
    display_name = "exact-match batch"
    metrics = (MetricInfo("em", "exact match", short="EM", primary=True), MetricInfo("qa_f1", "QA-F1"))
    paper_table = "1"

    def aggregate(self, records):
        scores = super().aggregate(records)
        scores["em"] = summarize(
            [exact_match(p["prediction"], p["answers"]) for r in records for p in r["predictions"]], seed=self.seed
        )
        return scores


def test_a_plugin_tasks_own_score_shows_under_its_label(tmp_path, bench, registrations):
    TASKS.register(ExactBatch.name)(ExactBatch)  # beside the built-ins, for this test only
    runs = tmp_path / "runs"
    for method in ("base_q", "base_cq"):
        code, _, err = bench("run", "--method", method, "--task", "exact-batch", "--profile", "smoke", "--out", runs)
        assert code == 0, err
    files = sorted(runs.rglob("*.json"))
    assert json.loads(files[0].read_text())["task_info"]["metrics"][0]["label"] == "exact match"

    def shown(folder):
        code, table, err = bench("table", folder, "--table", "1")
        assert code == 0, err
        code, _, err = bench("leaderboard", "--results", folder, "--out", tmp_path / "board")
        assert code == 0, err
        return table, (tmp_path / "board" / "README.md").read_text()

    table, page = shown(runs)
    assert "### Table 1 — exact-match batch, EM (fictional, profile smoke)" in table
    assert "tiny-random-llama · 3 EM" in table
    header = next(line for line in page.splitlines() if "exact match [95% CI]" in line)
    assert [c.strip() for c in header.strip("|").split("|")][5:8] == [
        "exact match [95% CI]",
        "Δ vs Base, Q [95% CI]",
        "QA-F1 [95% CI]",
    ]  # the primary score first
    # a file written before result files carried task_info: the registered class answers for it
    old = tmp_path / "prev"  # as long a name as "runs": the same column widths
    for path in files:
        data = json.loads(path.read_text())
        del data["task_info"]
        (old / path.relative_to(runs)).parent.mkdir(parents=True, exist_ok=True)
        (old / path.relative_to(runs)).write_text(json.dumps(data))
    assert shown(old) == (table, page.replace(str(runs), str(old)).replace("](../runs/", "](../prev/"))
    # with the plug-in gone, the result files alone still say what the scores are
    TASKS.unregister(ExactBatch.name)
    assert shown(runs) == (table, page)
