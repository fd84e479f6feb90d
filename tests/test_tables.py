"""``bench table``: the paper's tables from result files, with "—" where a result is missing."""

from __future__ import annotations

import json

from resultfiles import batch, recommendation, result, sequential, summary, write

from leaderboard import extract
from leaderboard.load import load_results
from leaderboard.render import fmt_bytes, fmt_score
from leaderboard.tables import table1, table2, table3, table4


def _rows(table) -> dict[str, list[str]]:
    return {row[0]: row for row in table.rows}


def test_table1_paper_order_missing_cells_and_storage(tmp_path):
    runs = [
        batch("selfparam", 0.41, footprint=0),
        batch("base_q", 0.02),
        batch("base_cq", 0.52, num_contexts=100),
        batch("bm25", 0.30, footprint=123_456),
        batch("my_method", 0.10),  # a third-party method: after the paper's rows
    ]
    (table,) = table1(runs)
    methods = [row[0] for row in table.rows]
    assert methods == ["Base, C+Q", "Base, Q", "BM25", "SELF-PARAM", "my_method"]
    assert table.headers[2:] == [
        "smollm2-135m-instruct · 20 QA-F1",
        "S bytes",
        "smollm2-135m-instruct · 100 QA-F1",
        "S bytes",
    ]
    rows = _rows(table)
    assert rows["Base, C+Q"][2] == "—" and rows["Base, C+Q"][4] == "0.5200"
    assert rows["BM25"][1] == "O(n)" and rows["BM25"][3] == "120.6 KiB"
    assert rows["SELF-PARAM"][1] == "O(1)" and rows["SELF-PARAM"][2] == "0.4100"
    assert rows["my_method"][1] == "—"
    text = table.render("markdown")
    assert text.startswith("### Table 1") and "| Base, C+Q" in text


def test_table1_seeds_are_averaged_and_latest_config_wins():
    runs = [
        batch("selfparam", 0.40, seed=0, finished="2026-11-20T10:00:00+00:00", lr=1e-4),
        batch("selfparam", 0.50, seed=1, finished="2026-11-20T11:00:00+00:00", lr=1e-4),
        batch("selfparam", 0.90, seed=0, finished="2026-11-19T10:00:00+00:00", lr=5e-5),  # older config
    ]
    (table,) = table1(runs, ci=True)
    cell = _rows(table)["SELF-PARAM"][2]
    # no per-unit scores: the interval is the seeds' range and says so; the mark: a choice was made
    assert cell == "0.4500 [seed range 0.4000, 0.5000] (2 seeds) ‡"
    assert "‡ SELF-PARAM, smollm2-135m-instruct · 20: the latest of 2 configurations, lr=0.0001." in table.notes


def test_table1_shows_the_profile_run_not_a_later_variant():
    """A run with a method setting of its own (here another target generator) made after the plain
    run is a variant: the paper table shows the plain run, Table 4 both."""
    plain = batch("selfparam", 0.40, num_targets=60)
    variant = batch(
        "selfparam",
        0.03,
        num_targets=60,
        targets="implications",
        finished="2026-11-21T10:00:00+00:00",
        overrides={"targets": "implications", "num_contexts": "20"},
    )
    (table,) = table1([plain, variant])
    assert _rows(table)["SELF-PARAM"][2] == "0.4000"
    assert extract.variant_label(variant) == "targets=implications"  # the task setting is not one
    assert extract.variant(plain) == {}
    (only,) = table1([variant])  # no plain run: the variant is what there is
    assert _rows(only)["SELF-PARAM"][2] == "0.0300"
    (ablation,) = table4([plain, variant])
    assert [row[1:] for row in ablation.rows] == [["dataset", "0.4000"], ["implications", "0.0300"]]


def test_table1_paper_column_only_where_comparable():
    runs = [
        batch("base_cq", 0.55, dataset="pwc", model="mistralai/Mistral-7B-v0.1", num_contexts=100, profile="paper"),
        batch("base_q", 0.05, dataset="pwc", model="mistralai/Mistral-7B-v0.1", num_contexts=100, profile="paper"),
    ]
    (ours,) = table1(runs, paper=True)
    rows = _rows(ours)
    assert ours.headers[4] == "paper"
    assert rows["Base, C+Q"][4] == "0.5461"  # the paper's "Base, C+Q" row, Mistral-7B, 100 contexts
    assert rows["Base, Q"][4] == "0.1503"  # its "Base, Q" row
    (other_n,) = table1([batch("base_cq", 0.5, dataset="pwc", model="mistralai/Mistral-7B-v0.1", num_contexts=20)])
    assert "paper" not in other_n.headers  # a number of contexts the paper does not report
    (fictional,) = table1([batch("base_cq", 0.5)], paper=True)
    assert "paper" not in fictional.headers  # other data set: nothing to compare with


def test_table2_rules_both_spellings_and_missing_dataset():
    runs = [
        recommendation("base_q", "inspired", [0.10, 0.12, 0.08, 0.11]),
        recommendation("base_q", "redial", [0.20, 0.22, 0.18, 0.21], spelling="nested"),
        recommendation("selfparam", "redial", [0.30, 0.32, 0.28, 0.31]),
    ]
    (table,) = table2(runs)
    assert table.headers == [
        "Method",
        "INSPIRED r1",
        "INSPIRED r2",
        "INSPIRED r3",
        "INSPIRED r4",
        "REDIAL r1",
        "REDIAL r2",
        "REDIAL r3",
        "REDIAL r4",
    ]
    rows = _rows(table)
    assert rows["Base, Q"][1:] == ["0.1000", "0.1200", "0.0800", "0.1100", "0.2000", "0.2200", "0.1800", "0.2100"]
    assert rows["SELF-PARAM"][1:5] == ["—"] * 4 and rows["SELF-PARAM"][5] == "0.3000"


def test_table3_steps_from_curve_or_matrix():
    with_curve = sequential("selfparam", [0.0, 0.5, 0.45, 0.4])
    only_matrix = result(
        "sequential", "bm25", {"retention_matrix": [[0.0, 0.0], [0.6, 0.0], [0.5, 0.7]]}, num_contexts=None
    )
    (table,) = table3([with_curve, only_matrix])
    assert table.headers == ["Method", "0", "1", "2", "3"]
    rows = _rows(table)
    assert rows["SELF-PARAM"][1:] == ["0.000", "0.500", "0.450", "0.400"]
    assert rows["BM25"][1:] == ["0.000", "0.300", "0.600", "—"]


def test_table4_rows_by_generator_only_for_target_users():
    runs = [
        batch("selfparam", 0.40, targets="dataset", num_targets=60),
        batch("selfparam", 0.35, targets="local", num_targets=60, generator_model="smollm2"),
        batch("base_q", 0.02),  # uses no target sentences: not in the ablation
    ]
    (table,) = table4(runs)
    labels = [(row[0], row[1]) for row in table.rows]
    assert labels == [("SELF-PARAM", "dataset"), ("SELF-PARAM", "local (generator_model=smollm2)")]
    assert [row[2] for row in table.rows] == ["0.4000", "0.3500"]


def test_extract_tolerates_missing_and_malformed():
    broken = {"task": "batch", "method": "x", "dataset": "d", "model": "m", "scores": {"qa_f1": "n/a"}}
    assert extract.metric(broken, "qa_f1") is None
    assert extract.step_curve(broken, "qa_f1") is None
    assert extract.metric(broken, "recall@1_r1") is None
    assert fmt_score(None) == "—"
    assert extract.metric({"scores": {"qa_f1": {"mean": float("nan")}}}, "qa_f1") is None
    assert fmt_score(summary(0.25, 0.05)) == "0.2500 [0.2000, 0.3000]"
    assert fmt_bytes(None) == "—" and fmt_bytes(0) == "0 B" and fmt_bytes(3 * 2**20) == "3.0 MiB"
    (table,) = table1([broken | {"config": {"params": {"task": {"num_contexts": 5}}}}])
    assert table.rows == [["x", "—", "—", "—"]]


def test_load_skips_non_result_files(tmp_path):
    write(tmp_path, batch("base_q", 0.02))
    (tmp_path / "notes.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "broken.json").write_text("{not json")
    loaded = load_results([tmp_path])
    assert [r["method"] for r in loaded.results] == ["base_q"]
    reasons = {path.rsplit("/", 1)[1]: why for path, why in loaded.skipped}
    assert reasons["notes.json"].startswith("not a result file")
    assert reasons["broken.json"].startswith("unreadable")


def test_bench_table_cli(tmp_path, bench):
    write(tmp_path, batch("base_cq", 0.52))
    write(tmp_path, batch("base_q", 0.02))
    code, out, err = bench("table", tmp_path, "--table", "1", "--format", "plain", "--ci")
    assert code == 0, err
    assert out.startswith("Table 1 — batch injection, QA-F1 (fictional, profile quick)")
    assert "Base, C+Q" in out and "0.5200 [0.4700, 0.5700]" in out
    assert "Table 2" not in out
    code, out, _ = bench("table", tmp_path)
    assert code == 0
    assert "### Table 2 — conversational recommendation\n\nNo results yet." in out
    code, _, err = bench("table", tmp_path / "absent")
    assert code == 2 and "no such result file or folder" in err


def test_bench_table_on_a_real_smoke_run(tmp_path, bench):
    code, _, err = bench("run", "--method", "base_cq", "--task", "batch", "--profile", "smoke", "--out", tmp_path)
    assert code == 0, err
    saved = json.loads(next(tmp_path.rglob("*.json")).read_text())
    code, out, err = bench("table", tmp_path, "--table", "1", "--ci")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("| Base, C+Q"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["Base, C+Q", "O(n)", fmt_score(saved["scores"]["qa_f1"])]
    assert cells[3] == "0 B"


def _on(split: str, **settings: str) -> dict:
    """Task settings and the ``--set`` overrides that chose them."""
    chosen = {"split": split, **settings}
    return {"task_settings": chosen, "overrides": dict(chosen)}


def test_paper_tables_show_the_test_split_only():
    """A later tuning run on dev is not the method's score: Tables 1, 2, 3 and 4 keep the test run
    and say how many runs on other splits they left out."""
    later = "2026-11-21T10:00:00+00:00"
    runs = [
        batch("selfparam", 0.30, num_targets=60, **_on("test")),
        batch("selfparam", 0.55, num_targets=60, finished=later, **_on("dev")),
        batch("base_q", 0.02),  # no split recorded: an older file, on the only split there was
    ]
    (table,) = table1(runs)
    assert _rows(table)["SELF-PARAM"][2] == "0.3000" and _rows(table)["Base, Q"][2] == "0.0200"
    assert "Test split only: 1 run(s) on the dev split left out" in " ".join(table.notes)
    (ablation,) = table4(runs)
    assert [row[2] for row in ablation.rows] == ["0.3000"] and "dev split" in " ".join(ablation.notes)
    assert table1([runs[1]]) == []  # dev runs alone fill no paper table
    recs = [
        recommendation("base_q", "redial", [0.1, 0.2, 0.3, 0.4], **_on("test")),
        recommendation("base_q", "redial", [0.9, 0.9, 0.9, 0.9], finished=later, **_on("dev")),
    ]
    (table,) = table2(recs)
    assert _rows(table)["Base, Q"][1:] == ["0.1000", "0.2000", "0.3000", "0.4000"]
    seqs = [
        sequential("selfparam", [0.0, 0.5, 0.4], **_on("test")),
        sequential("selfparam", [0.0, 0.9, 0.9], finished=later, **_on("dev")),
    ]
    (table,) = table3(seqs)
    assert _rows(table)["SELF-PARAM"][1:] == ["0.000", "0.500", "0.400"]


def test_a_cell_with_several_test_configurations_says_which_it_shows():
    runs = [
        batch("selfparam", 0.30, **_on("test")),
        batch("selfparam", 0.45, finished="2026-11-21T10:00:00+00:00", **_on("test", sample="spread")),
        batch("base_q", 0.02, **_on("test")),
    ]
    (table,) = table1(runs, ci=True)
    rows = _rows(table)
    assert rows["SELF-PARAM"][2] == "0.4500 [0.4000, 0.5000] ‡" and rows["Base, Q"][2] == "0.0200 [0.0000, 0.0700]"
    assert "‡ SELF-PARAM, smollm2-135m-instruct · 20: the latest of 2 configurations, sample=spread." in table.notes
    (plain,) = table1(runs[:1] + runs[2:])
    assert not any("‡" in note for note in plain.notes)
