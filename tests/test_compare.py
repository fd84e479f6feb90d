"""Paired differences: the bootstrap itself, ``bench compare``, and the leaderboard's ranks and seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from resultfiles import batch, sequential, with_contexts, write

from benchmark.metrics import bootstrap_ci, cluster_summary, paired_difference
from leaderboard import extract, meta
from leaderboard.board import board_table, boards
from leaderboard.tables import table1

CONTEXTS = [f"fictional-{i:04d}" for i in range(10)]


def qa(method: str, f1s: list[float], contexts: list[str] = CONTEXTS, **kw) -> dict:
    """A batch result with one episode whose contexts score ``f1s``."""
    return with_contexts(batch(method, 0.0, **kw), {"batch-0": dict(zip(contexts, f1s))})


# ---- the statistic ------------------------------------------------------------------------------
def test_constant_shift_gives_a_zero_width_interval():
    a = {c: v for c, v in zip(CONTEXTS, np.linspace(0.0, 0.8, 10))}
    b = {c: v + 0.1 for c, v in a.items()}
    diff = paired_difference(a, b)
    assert diff["n"] == 10
    assert diff["mean"] == pytest.approx(0.1)
    assert diff["ci_low"] == pytest.approx(0.1) and diff["ci_high"] == pytest.approx(0.1)


def test_mixed_signs_match_the_plain_bootstrap_of_the_differences():
    a = dict(zip(CONTEXTS, [0.5] * 10))
    b = dict(zip(CONTEXTS, [0.9, 0.1, 0.6, 0.4, 0.5, 0.8, 0.2, 0.5, 0.7, 0.3]))
    diff = paired_difference(a, b)
    by_hand = [b[c] - a[c] for c in sorted(CONTEXTS)]
    assert diff["mean"] == pytest.approx(float(np.mean(by_hand)))
    assert (diff["ci_low"], diff["ci_high"]) == pytest.approx(bootstrap_ci(by_hand))
    assert diff["ci_low"] < 0 < diff["ci_high"]


def test_only_shared_units_pair_and_clusters_are_drawn_whole():
    assert paired_difference({"x": 0.0, "y": 1.0}, {"y": 0.5, "z": 9.0}) == {
        "mean": -0.5,
        "ci_low": -0.5,
        "ci_high": -0.5,
        "n": 1,
    }
    # Two sequences whose contexts gain (0.1, 0.3) and (0.5, 0.7): a resample holds sequence 0 twice,
    # both once or sequence 1 twice (means 0.2, 0.4, 0.6 with chances 1/4, 1/2, 1/4).
    a = {("s0", "c0"): 0.0, ("s0", "c1"): 0.0, ("s1", "c2"): 0.0, ("s1", "c3"): 0.0}
    b = {("s0", "c0"): 0.1, ("s0", "c1"): 0.3, ("s1", "c2"): 0.5, ("s1", "c3"): 0.7}
    diff = paired_difference(a, b, cluster=lambda key: key[0])
    assert diff["mean"] == pytest.approx(0.4) and diff["n"] == 4
    assert (diff["ci_low"], diff["ci_high"]) == pytest.approx((0.2, 0.6))


# ---- bench compare ------------------------------------------------------------------------------
def test_compare_reports_difference_and_verdict(tmp_path, bench):
    base = [0.0, 0.2, 0.4, 0.6, 0.8, 0.1, 0.3, 0.5, 0.7, 0.9]
    a = write(tmp_path, qa("base_q", base))
    b = write(tmp_path, qa("selfparam", [v + 0.1 for v in base]))
    code, out, err = bench("compare", a, b)
    assert code == 0, err
    assert "10 contexts paired, bootstrap over 10 contexts" in out
    line = next(row for row in out.splitlines() if row.startswith("qa_f1"))
    assert line.split()[1:] == ["0.4500", "0.5500", "+0.1000", "[+0.1000,", "+0.1000]", "B", "better"]
    code, out, _ = bench("compare", b, a)
    assert "A better" in out
    c = write(tmp_path, qa("bm25", [0.9, 0.1, 0.6, 0.4, 0.5, 0.8, 0.2, 0.5, 0.7, 0.3]))
    d = write(tmp_path, qa("dpr", [0.5] * 10))
    code, out, _ = bench("compare", c, d)
    assert code == 0 and "tie (interval contains 0)" in out


def test_compare_sequential_pairs_the_last_step_by_sequence(tmp_path, bench):
    def run(method: str, shift: float) -> dict:
        return with_contexts(
            sequential(method, [0.0, 0.5]),
            {"seq-0": {"c0": 0.1 + shift, "c1": 0.3 + shift}, "seq-1": {"c2": 0.5 + shift, "c3": 0.7 + shift}},
        )

    a, b = write(tmp_path, run("base_q", 0.0)), write(tmp_path, run("selfparam", 0.2))
    code, out, err = bench("compare", a, b)
    assert code == 0, err
    assert "4 contexts paired, bootstrap over 2 sequences" in out and "+0.2000" in out


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(seed=1), "they differ in seed (0 vs 1)"),
        (dict(dataset="squad", model="other"), "they differ in dataset (fictional vs squad), model"),
        (dict(contexts=CONTEXTS[:9] + ["fictional-0099"]), "their context ids differ (1 only in A, 1 only in B"),
        (dict(question=True), "their questions differ on 1 contexts (e.g. fictional-0000 in episode batch-0)"),
    ],
)
def test_compare_refuses_runs_that_do_not_pair(tmp_path, bench, change, message):
    a = write(tmp_path, qa("base_q", [0.1] * 10))
    change = dict(change)
    question = change.pop("question", False)
    other = qa("selfparam", [0.2] * 10, **change)
    if question:
        other["episodes"][0]["predictions"][0]["question"] = "Another question?"
    b = write(tmp_path, other)
    code, out, err = bench("compare", a, b)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("bench: error: cannot pair A and B: ") and message in err


def test_compare_unreadable_files_are_one_line_errors(tmp_path, bench):
    good = write(tmp_path, qa("base_q", [0.1] * 10))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    for path, message in (
        (tmp_path / "absent.json", "no such result file"),
        (tmp_path / "broken.json", "is not JSON"),
        (tmp_path / "other.json", "is not a result file (no task, method"),
    ):
        code, _, err = bench("compare", good, path)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    old = batch("selfparam", 0.3)  # scores only, no per-question predictions
    code, _, err = bench("compare", good, write(tmp_path, old))
    assert code == 2 and "B holds no per-question predictions" in err


# ---- leaderboard: Δ against the floor, tied ranks, seeds ----------------------------------------
def test_floor_is_the_registered_floor_method():
    from benchmark.registry import METHODS

    floors = [name for name, cls in METHODS.items() if cls.role == "floor"]
    assert floors == ["base_q"] and "the floor" in METHODS.get("base_q").description


def test_tied_ranks_and_delta_against_the_floor():
    spread = [0.9, 0.1, 0.6, 0.4, 0.5, 0.8, 0.2, 0.5, 0.7, 0.3]
    runs = [
        qa("ft_sentences", [0.8] * 10),
        qa("bm25", [0.79 + (v - 0.5) / 5 for v in spread]),  # differences of both signs: tied
        qa("dpr", [0.78] * 10),  # 0.02 below the top on every context: the next rank
        qa("raptor", [0.77 + (v - 0.5) / 5 for v in spread]),  # ties DPR, the top of its rank
        qa("base_q", [0.0] * 10),
    ]
    (board,) = boards(runs)
    methods = [row.first["method"] for row in board.rows]
    assert methods == ["ft_sentences", "bm25", "dpr", "raptor", "base_q"]
    assert board.ranks == [1, 1, 2, 2, 3] and board.scope == ""
    assert board.deltas[0]["mean"] == pytest.approx(0.8) and board.deltas[0]["ci_low"] == pytest.approx(0.8)
    assert board.deltas[4]["mean"] == 0.0
    table = board_table(board)
    assert table.headers[:7] == ["#", "rank", "method", "profile", "seeds", "QA-F1 [95% CI]", "Δ vs Base, Q [95% CI]"]
    assert table.rows[2][:2] == ["3", "2"] and table.rows[2][6] == "0.7800 [0.7800, 0.7800]"


def test_runs_scored_on_other_contexts_get_a_board_of_their_own():
    more = [f"more-{i}" for i in range(20)]
    other = [f"other-{i}" for i in range(10)]
    runs = [
        qa("bm25", [0.8] * 10),
        qa("base_q", [0.0] * 10),
        qa("prag", [0.5] * 20, contexts=more),
        qa("base_q", [0.1] * 20, contexts=more),
        qa("infllm", [0.5] * 10, contexts=other),  # no floor on these contexts: no Δ, but a rank
        {**qa("dpr", [0.7] * 10), "episodes": []},  # an old file without questions: the largest set's board
    ]
    found = boards(runs)
    assert [b.scope for b in found] == ["20 contexts", "10 contexts", "10 contexts, set 2"]
    assert len({b.slug for b in found}) == 3 and found[0].title.endswith(" · 20 contexts")
    assert [r.first["method"] for r in found[0].rows] == ["dpr", "prag", "base_q"]
    assert found[0].ranks == [None, 1, 2] and found[0].deltas[1]["mean"] == pytest.approx(0.4)
    by_methods = {tuple(sorted(r.first["method"] for r in b.rows)): b for b in found[1:]}
    assert by_methods[("base_q", "bm25")].ranks == [1, 2]
    assert by_methods[("infllm",)].ranks == [1] and by_methods[("infllm",)].deltas == [None]


def test_seeds_share_one_row_with_contexts_and_seeds_pooled(tmp_path):
    runs = [
        qa("selfparam", [0.4] * 5 + [0.6] * 5, seed=0),
        qa("selfparam", [0.6] * 5 + [0.8] * 5, seed=1),
        qa("base_q", [0.0] * 10, seed=0),
        qa("base_q", [0.1] * 10, seed=1),
    ]
    (board,) = boards(runs)
    assert [len(row.runs) for row in board.rows] == [2, 2]
    top = board.rows[0]
    pooled = top.score("qa_f1")
    assert pooled["mean"] == pytest.approx(0.6) and pooled["n"] == 20  # the mean of the seeds' 0.5 and 0.7
    # the seeds share the contexts: the bootstrap draws 10 contexts, each with both seeds' answers
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx(bootstrap_ci(_per_context(top.runs)))
    assert board.deltas[0]["mean"] == pytest.approx(0.55) and board.ranks == [1, 2]
    row = board_table(board).rows[0]
    assert row[4] == "2" and row[5].startswith("0.6000 [")
    # a rerun of seed 0 under the same settings is not averaged with itself
    (board,) = boards(runs + [qa("selfparam", [0.5] * 10, seed=0, finished="2026-11-21T10:00:00+00:00")])
    assert sorted(len(row.runs) for row in board.rows) == [1, 2, 2]
    # the paper's tables pool the same way and say how many seeds
    (table,) = table1(runs, ci=True)
    cell = {r[0]: r for r in table.rows}["SELF-PARAM"][2]
    assert cell.startswith("0.6000 [") and cell.endswith("(2 seeds)") and "[0.5000, 0.7000]" not in cell


def _per_context(runs: list[dict], metric: str = "qa_f1") -> list[float]:
    """Each context's mean over the runs' seeds, in context order: what a seed-pooled bootstrap
    draws (equal counts per context make its resample means these values' resample means)."""
    by_context: dict[tuple[str, ...], list[float]] = {}
    for key, value in sorted(extract.pooled_units(runs, metric).items()):
        by_context.setdefault(key[1:], []).append(value)
    return [sum(v) / len(v) for _, v in sorted(by_context.items())]


SPREAD = [0.05, 0.3, 0.0, 0.25, 0.1, 0.6, 0.0, 0.15, 0.2, 0.05, 0.4, 0.1, 0.0, 0.35, 0.05, 0.2, 0.1, 0.0, 0.15, 0.3]
MANY = [f"fictional-{i:04d}" for i in range(20)]


def test_seeds_with_identical_answers_do_not_narrow_the_interval():
    """Three seeds that answer alike are one run's information, not three times as much: the
    pooled interval is the single run's (counting each seed's copy of a context as a unit of its own
    narrowed it by about sqrt(3))."""
    one = qa("selfparam", SPREAD, contexts=MANY, seed=0)
    alone = extract.pooled_units([one], "qa_f1")
    single = cluster_summary(alone, extract.cluster(meta.task_of(one)))
    assert (single["ci_low"], single["ci_high"]) == pytest.approx(bootstrap_ci(SPREAD))
    copies = [qa("selfparam", SPREAD, contexts=MANY, seed=s) for s in (0, 1, 2)]
    (board,) = boards(copies)
    (row,) = board.rows
    pooled = row.score("qa_f1")
    assert len(row.runs) == 3 and pooled["mean"] == pytest.approx(single["mean"])
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx((single["ci_low"], single["ci_high"]))
    naive = bootstrap_ci(SPREAD * 3)  # the old count: 60 units
    assert pooled["ci_high"] - pooled["ci_low"] > 1.3 * (naive[1] - naive[0])


def test_seeds_that_differ_are_drawn_by_context_and_paired_by_context():
    other = [min(1.0, v + (0.2 if i % 3 else -0.05)) for i, v in enumerate(SPREAD)]
    runs = [
        qa("selfparam", SPREAD, contexts=MANY, seed=0),
        qa("selfparam", other, contexts=MANY, seed=1),
        qa("base_q", [0.0] * 20, contexts=MANY, seed=0),
        qa("base_q", [v / 4 for v in SPREAD], contexts=MANY, seed=1),
    ]
    (board,) = boards(runs)
    top = board.rows[0]
    assert top.first["method"] == "selfparam" and len(top.runs) == 2
    by_context = _per_context(top.runs)
    assert len(by_context) == 20  # 20 contexts, not 40 units
    pooled = top.score("qa_f1")
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx(bootstrap_ci(by_context))
    assert (pooled["ci_low"], pooled["ci_high"]) != pytest.approx(bootstrap_ci(SPREAD + other))
    # the paired difference draws each context's differences under both seeds together too
    floor = board.rows[1].runs
    gains = [a - b for a, b in zip(by_context, _per_context(floor))]
    delta = board.deltas[0]
    assert delta["mean"] == pytest.approx(float(np.mean(gains)))
    assert (delta["ci_low"], delta["ci_high"]) == pytest.approx(bootstrap_ci(gains))


def test_the_cluster_leaves_the_seed_out():
    batch_task, sequential_task = meta.task_of(qa("bm25", [0.5])), meta.task_of(sequential("bm25", [0.0, 0.5]))
    assert extract.cluster(batch_task)(("2", "batch-0", "fictional-0003")) == ("batch-0", "fictional-0003")
    assert extract.cluster(batch_task)(("2", "ep-0", "point-7", "1")) == ("ep-0", "point-7")  # gold items together
    assert extract.cluster(sequential_task)(("2", "seq-1", "fictional-0003")) == ("seq-1",)
