"""``bench leaderboard``: ranked tables per task × data set × model, plots, same bytes twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from resultfiles import batch, recommendation, result, sequence_records, sequential, with_contexts, write

from leaderboard.board import board_table, boards


def _results(folder: Path, seeds: bool = False) -> None:
    write(folder, batch("base_q", 0.02))
    write(folder, batch("selfparam", 0.41, footprint=2048))
    if seeds:  # per-question scores: paired differences, ranks and a row pooling two seeds
        contexts = [f"c{i}" for i in range(8)]
        for seed in (0, 1):
            for method, f1 in (("ft_context", 0.1), ("ft_sentences", 0.9)):
                data = batch(method, 0.0, model="paired-model", seed=seed)
                write(folder, with_contexts(data, {"batch-0": {c: f1 + 0.01 * i for i, c in enumerate(contexts)}}))
    write(folder, batch("base_cq", 0.52))
    write(folder, batch("base_cq", 0.60, model="other-model"))
    write(folder, sequential("selfparam", [0.0, 0.5, 0.45, 0.4]))
    write(folder, sequential("base_q", [0.0, 0.02, 0.02, 0.02]))
    write(folder, recommendation("base_q", "redial", [0.1, 0.2, 0.3, 0.4]))
    write(folder, recommendation("selfparam", "redial", [0.3, 0.2, 0.3, 0.4], spelling="nested"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_boards_are_ranked_per_task_dataset_model(tmp_path):
    from leaderboard.load import load_results

    _results(tmp_path / "results")
    found = boards(load_results([tmp_path / "results"]).results)
    assert [b.title for b in found] == [
        "batch · fictional · other-model",
        "batch · fictional · smollm2-135m-instruct",
        "recommendation · redial · smollm2-135m-instruct",
        "sequential · fictional · smollm2-135m-instruct",
    ]
    main = found[1]
    assert [r.first["method"] for r in main.rows] == ["base_cq", "selfparam", "base_q"]  # best QA-F1 first
    assert main.metrics == ["qa_f1", "acc"]
    assert found[2].metrics == ["recall@1_r1", "recall@1_r2", "recall@1_r3", "recall@1_r4", "recall@5_r1"]
    assert [r.first["method"] for r in found[2].rows] == ["selfparam", "base_q"]
    assert found[3].metrics == ["qa_f1", "efficacy.qa_f1", "before.qa_f1", "acc"]
    assert board_table(found[3]).headers[5:8] == [
        "QA-F1 after the last step [95% CI]",
        "Δ vs Base, Q [95% CI]",
        "efficacy QA-F1 [95% CI]",
    ]
    # files without per-question scores: no paired difference, no rank
    assert board_table(found[3]).rows[0][5:8] == ["0.4000 [0.3500, 0.4500]", "—", "0.5000 [0.4500, 0.5500]"]
    table = board_table(main)
    assert table.headers[5:8] == ["QA-F1 [95% CI]", "Δ vs Base, Q [95% CI]", "acc [95% CI]"]
    selfparam = table.rows[1]
    assert selfparam[:5] == ["2", "—", "SELF-PARAM", "quick", "1"]
    assert selfparam[8:] == ["12.5", "500", "2.0 KiB", "30.0", "—", "2026-11-20", "01234567"]


def test_a_variant_run_is_labelled_with_its_settings(tmp_path):
    from leaderboard.load import load_results

    write(tmp_path, batch("selfparam", 0.41))
    write(tmp_path, batch("selfparam", 0.03, targets="implications", overrides={"targets": "implications"}))
    write(tmp_path, batch("bm25", 0.30, overrides={"num_contexts": "20"}))  # a task setting: no label
    (board,) = boards(load_results([tmp_path]).results)
    assert [board_table(board).rows[i][2] for i in range(3)] == [
        "SELF-PARAM",
        "BM25",
        "SELF-PARAM (targets=implications)",
    ]


def test_page_plots_links_and_identical_bytes(tmp_path, bench):
    results, out = tmp_path / "results", tmp_path / "board"
    _results(results, seeds=True)
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "stale.png").write_bytes(b"old")
    code, stdout, err = bench("leaderboard", "--results", results, "--out", out)
    assert code == 0, err
    assert "12 runs in 5 tables, 6 plots, 1 stale plots removed" in stdout
    page = (out / "README.md").read_text()
    assert "## batch · fictional · smollm2-135m-instruct" in page
    paired = page.split("## batch · fictional · paired-model")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in paired.splitlines() if line.startswith("| ")]
    assert [(r[1], r[2].split("]")[0], r[4]) for r in rows[1:]] == [("1", "[FT (S)", "2"), ("2", "[FT (C)", "2")]
    assert rows[1][2].split("](")[1].startswith("../results/batch/fictional/paired-model/ft_sentences__quick__seed0__")
    assert rows[1][5].startswith("0.9350 [") and rows[1][6] == "—"  # no floor run on this board
    assert (
        "![retention curves, sequential · fictional · smollm2-135m-instruct]"
        "(plots/sequential__fictional__smollm2-135m-instruct__retention.png)" in page
    )
    assert "(../results/batch/fictional/smollm2-135m-instruct/selfparam__quick__seed0__" in page
    assert "### Table 3 — sequential injection, QA-F1 per step" in page
    assert "### Table 1 as published" in page
    for link in [line.split("](")[1].rstrip(")") for line in page.splitlines() if line.startswith("![")]:
        data = (out / link).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in data
    assert not (out / "plots" / "stale.png").exists()
    first = _snapshot(out)
    code, _, _ = bench("leaderboard", "--results", results, "--out", out)
    assert code == 0
    assert _snapshot(out) == first


def test_empty_results_folder(tmp_path, bench):
    (tmp_path / "results").mkdir()
    code, _, err = bench("leaderboard", "--results", tmp_path / "results", "--out", tmp_path / "board")
    assert code == 0, err
    page = (tmp_path / "board" / "README.md").read_text()
    assert "No results yet." in page
    code, _, err = bench("leaderboard", "--results", tmp_path / "absent", "--out", tmp_path / "board")
    assert code == 2 and "no results folder" in err


def test_train_rate_counts_shared_prefixes_per_example():
    from leaderboard.extract import rate_counts_computed_tokens_only, train_rate

    shared = batch("selfparam", 0.4)
    shared["cost"].update(train_tokens=1000, train_example_tokens=2200, train_s=2.0)
    assert train_rate(shared) == 1100.0  # not the 500 tok/s of computed tokens
    assert train_rate(batch("ft_context", 0.1)) == 500.0  # older files without the count
    assert not rate_counts_computed_tokens_only(shared)
    assert not rate_counts_computed_tokens_only(batch("ft_context", 0.1))  # no prefix shared: same count
    assert rate_counts_computed_tokens_only(batch("ft_sentences", 0.9, share_prefix=8))


# ---- seeds of sequential runs: efficacy, retention and interference bootstrapped by sequence --------
SEQUENCE_SCORES = ("efficacy.qa_f1", "retention_mean.qa_f1", "interference")


def _matrices(shift: float) -> dict[str, list[list[float]]]:
    """Four sequences of three contexts: rows are steps 0..3, columns contexts in injection order."""
    base = [[0.0, 0.0, 0.0], [0.8, 0.1, 0.0], [0.6, 0.9, 0.2], [0.4, 0.7, 1.0]]
    return {
        f"seq-{i}": [
            [min(1.0, max(0.0, v + shift * (i - 1.5) + 0.1 * ((i + j) % 3))) for j, v in enumerate(row)] for row in base
        ]
        for i in range(4)
    }


def _sequential_run(method: str, shift: float, seed: int) -> dict:
    """A sequential result whose scores are the task's own aggregate of its episode records."""
    from tasks.sequential import aggregate_sequences, sequence_scores

    records = [{**r, "per_episode": sequence_scores(r)} for r in sequence_records(_matrices(shift))]
    data = result("sequential", method, aggregate_sequences(records, seed), num_contexts=None, seed=seed)
    data["episodes"] = records
    return data


def test_per_sequence_scores_reproduce_the_files_summaries():
    from benchmark.metrics import cluster_summary
    from leaderboard import extract, meta

    run = _sequential_run("selfparam", 0.1, seed=0)
    cluster = extract.cluster(meta.task_of(run))
    for name in SEQUENCE_SCORES:
        units = extract.units(run, name)
        assert units is not None and len(units) == 4, name  # one value per sequence
        stated, derived = extract.metric(run, name), cluster_summary(units, cluster)
        assert {k: derived[k] for k in ("mean", "ci_low", "ci_high")} == pytest.approx(
            {k: stated[k] for k in ("mean", "ci_low", "ci_high")}
        ), name
    assert extract.metric(run, "interference")["mean"] > 0  # the fixture's wrong answers do interfere
    # a file whose episodes do not all hold the score has no per-unit values for it
    del run["episodes"][2]["per_episode"]["interference"]
    assert extract.units(run, "interference") is None and extract.units(run, "efficacy.qa_f1") is not None


def test_seeds_of_sequential_runs_bootstrap_sequences_not_seed_means():
    from benchmark.metrics import bootstrap_ci
    from leaderboard import extract

    runs = [_sequential_run("selfparam", shift, seed) for seed, shift in ((0, 0.1), (1, -0.05), (2, 0.2))]
    (board,) = boards(runs)
    (row,) = board.rows
    cells = dict(zip(board_table(board).headers, board_table(board).rows[0]))
    for name in SEQUENCE_SCORES:
        per_sequence: dict[str, list[float]] = {}
        for run in runs:
            for key, value in extract.units(run, name).items():
                per_sequence.setdefault(key[1], []).append(value)
        means = [sum(v) / len(v) for _, v in sorted(per_sequence.items())]
        pooled = row.score(name)
        assert "interval" not in pooled and pooled["mean"] == pytest.approx(sum(means) / 4)
        assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx(bootstrap_ci(means)), name
        assert "seed range" not in cells[f"{board.heading(name)} [95% CI]"]


def test_seeds_without_per_unit_scores_show_a_labelled_seed_range():
    runs = [sequential("selfparam", [0.0, 0.5, 0.45, v], seed=s) for s, v in enumerate((0.4, 0.3))]
    (board,) = boards(runs)
    table = board_table(board)
    cells = dict(zip(table.headers, table.rows[0]))
    # the files state efficacy without per-sequence values: a range over 2 seeds
    assert cells["efficacy QA-F1 [95% CI]"] == "0.5000 [seed range 0.5000, 0.5000]"
    assert cells["QA-F1 after the last step [95% CI]"] == "0.3500 [seed range 0.3000, 0.4000]"


def test_runs_on_the_dev_split_get_a_board_titled_dev():
    tuned = {"task_settings": {"split": "dev"}, "overrides": {"split": "dev"}}
    runs = [batch("selfparam", 0.41), batch("selfparam", 0.70, **tuned), batch("base_q", 0.05, **tuned)]
    found = boards(runs)
    assert [b.title for b in found] == [
        "batch · fictional · smollm2-135m-instruct",
        "batch · fictional · smollm2-135m-instruct · dev split",
    ]
    assert [len(b.rows) for b in found] == [1, 2] and len({b.slug for b in found}) == 2
    assert found[1].slug.endswith("__dev")


def test_the_commit_column_lists_every_commit_of_the_row():
    old, new = "89abcdef0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef01234567-dirty"
    runs = [batch("selfparam", 0.4, seed=0, commit=new), batch("selfparam", 0.5, seed=1, commit=old)]
    (board,) = boards(runs + [batch("selfparam", 0.45, seed=2, commit=old)])
    (row,) = board_table(board).rows
    assert row[4] == "3" and row[-1] == "01234567-dirty, 89abcdef"
    (board,) = boards([batch("selfparam", 0.4, seed=0, commit=old), batch("selfparam", 0.5, seed=1, commit=old)])
    assert board_table(board).rows[0][-1] == "89abcdef"


def test_the_device_column_and_a_note_say_where_costs_were_measured():
    avx2 = {"type": "cpu", "cpu_model": "AMD EPYC", "cpu_capability": "AVX2", "bf16_instructions": False}
    amx = {"type": "cpu", "cpu_model": "Intel Xeon", "cpu_capability": "AVX512", "bf16_instructions": True}
    runs = [batch("selfparam", 0.4), batch("base_q", 0.1), batch("bm25", 0.2)]
    runs[0]["device"], runs[1]["device"] = avx2, amx  # the third file predates the record
    table = board_table(boards(runs)[0])
    devices = {row[2]: dict(zip(table.headers, row))["device"] for row in table.rows}
    assert devices == {"SELF-PARAM": "AMD EPYC AVX2", "Base, Q": "Intel Xeon AVX512+bf16", "BM25": "—"}
    (note,) = [n for n in table.notes if n.startswith("Mixed devices")]
    assert "3 devices" in note and "AMD EPYC AVX2; Intel Xeon AVX512+bf16; —" in note
    runs[1]["device"] = runs[2]["device"] = avx2
    assert not any(n.startswith("Mixed devices") for n in board_table(boards(runs)[0]).notes)


def test_a_board_whose_intervals_rest_on_few_units_says_so():
    from leaderboard.board import FEW_UNITS

    four_sequences = board_table(boards([_sequential_run("selfparam", 0.1, seed=0)])[0]).notes
    assert any(n.startswith("Few units: the intervals on this board resample 4 sequences.") for n in four_sequences)
    contexts = [f"c{i}" for i in range(FEW_UNITS)]
    enough = with_contexts(batch("selfparam", 0.0), {"batch-0": {c: 0.1 * (i % 3) for i, c in enumerate(contexts)}})
    (board,) = boards([enough])
    assert board.rows[0].score("qa_f1")["n"] == FEW_UNITS
    assert not any(n.startswith("Few units") for n in board_table(board).notes)
