"""``bench leaderboard``: ranked tables per task × data set × model, plots, same bytes twice."""

from __future__ import annotations

from pathlib import Path

from resultfiles import batch, recommendation, sequential, with_contexts, write

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
    assert selfparam[8:] == ["12.5", "500", "2.0 KiB", "30.0", "2026-11-20", "01234567"]


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
