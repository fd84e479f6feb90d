"""The minimum detectable difference of the paired test: the statistic, ``bench compare``'s line and
``bench power``'s per-cell table."""

from __future__ import annotations

import math

import pytest
from resultfiles import batch, sequential, with_contexts, write

from benchmark.metrics import detectable_difference, paired_difference, unit_differences

CONTEXTS = [f"fictional-{i:04d}" for i in range(10)]
BASE = [0.0, 0.2, 0.4, 0.6, 0.8, 0.1, 0.3, 0.5, 0.7, 0.9]
GAINS = [0.1, 0.3, -0.2, 0.5, 0.0, 0.4, 0.2, 0.1, -0.1, 0.3]
Z_SUM = 1.959963984540054 + 0.8416212335729143  # z_0.975 + z_0.8


def by_hand(values: list[float]) -> float:
    """2.80 × sample SD (ddof 1) / sqrt(n), written out."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Z_SUM * sd / math.sqrt(n)


def qa(method: str, f1s: list[float], contexts: list[str] = CONTEXTS, **kw) -> dict:
    return with_contexts(batch(method, 0.0, **kw), {"batch-0": dict(zip(contexts, f1s))})


MDE_LINE = "smallest difference detectable at this size (80% power, alpha 0.05): "


# ---- the statistic ------------------------------------------------------------------------------
def test_mde_matches_a_hand_computation():
    # mean 0.16, sample SD 0.2221, SE 0.07024: MDE 2.8016 × 0.07024 = 0.1968
    assert by_hand(GAINS) == pytest.approx(0.19678, abs=1e-5)
    assert detectable_difference(GAINS) == pytest.approx(by_hand(GAINS), rel=1e-9)
    keyed = dict(zip(CONTEXTS, GAINS))
    assert detectable_difference(keyed) == pytest.approx(by_hand(GAINS), rel=1e-9)
    # other levels change only the multiplier: z_0.995 + z_0.9
    strict = detectable_difference(GAINS, alpha=0.01, power=0.9)
    assert strict == pytest.approx((2.5758293035489 + 1.2815515655446) / Z_SUM * by_hand(GAINS), rel=1e-9)
    # a quarter of the MDE needs sixteen times the contexts with the same spread
    assert detectable_difference(GAINS * 16) == pytest.approx(by_hand(GAINS * 16))
    assert detectable_difference(GAINS * 16) < detectable_difference(GAINS) / 3.9


def test_mde_uses_the_units_paired_difference_resamples():
    a = {c: v for c, v in zip(CONTEXTS, BASE)}
    b = {c: v + g for c, v, g in zip(CONTEXTS, BASE, GAINS)}
    diffs = unit_differences(a, b)
    assert sorted(diffs) == sorted(CONTEXTS) and diffs[CONTEXTS[2]] == pytest.approx(-0.2)
    assert paired_difference(a, b)["mean"] == pytest.approx(sum(GAINS) / 10)
    assert detectable_difference(diffs) == pytest.approx(by_hand(GAINS))
    # clustered: two sequences of two contexts, cluster means 0.2 and 0.6 -> SD 0.2828 over sqrt(2)
    seq = {("s0", "c0"): 0.1, ("s0", "c1"): 0.3, ("s1", "c2"): 0.5, ("s1", "c3"): 0.7}
    clustered = detectable_difference(seq, cluster=lambda key: key[0])
    assert clustered == pytest.approx(by_hand([0.2, 0.6]))
    assert clustered != pytest.approx(detectable_difference(seq))  # per context it would be smaller
    # unequal clusters: the ratio mean's linearised SE, sqrt(G/(G-1) Σ (s_g - m c_g)^2) / n
    uneven = {("s0", "c0"): 0.1, ("s1", "c1"): 0.3, ("s1", "c2"): 0.8}
    mean = 1.2 / 3
    se = math.sqrt(2 * ((0.1 - mean) ** 2 + (1.1 - 2 * mean) ** 2)) / 3
    assert detectable_difference(uneven, cluster=lambda key: key[0]) == pytest.approx(Z_SUM * se)


def test_mde_needs_two_independent_units():
    assert math.isnan(detectable_difference([]))
    assert math.isnan(detectable_difference([0.3]))
    one_sequence = {("s0", "c0"): 0.1, ("s0", "c1"): 0.5}
    assert math.isnan(detectable_difference(one_sequence, cluster=lambda key: key[0]))
    assert detectable_difference([0.3, 0.3]) == 0.0
    with pytest.raises(ValueError):
        detectable_difference(GAINS, power=1.0)


# ---- bench compare ------------------------------------------------------------------------------
def test_compare_prints_the_detectable_difference(tmp_path, bench):
    a = write(tmp_path, qa("base_q", BASE))
    b = write(tmp_path, qa("selfparam", [v + g for v, g in zip(BASE, GAINS)]))
    code, out, err = bench("compare", a, b)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == f"{MDE_LINE}±{by_hand(GAINS):.4f} over 10 contexts"
    assert lines[-1].endswith("±0.1968 over 10 contexts")
    assert lines[-2].startswith("qa_f1")  # right after the paired difference
    shifted = write(tmp_path, qa("bm25", [v + 0.1 for v in BASE]))
    code, out, _ = bench("compare", a, shifted)
    assert out.splitlines()[-1] == f"{MDE_LINE}not estimable over 10 contexts (every difference is the same)"
    single = [write(tmp_path, qa(m, [v], contexts=["fictional-0000"])) for m, v in (("base_q", 0.1), ("dpr", 0.4))]
    code, out, _ = bench("compare", *single)
    assert code == 0 and out.splitlines()[-1] == f"{MDE_LINE}not estimable over 1 contexts (needs at least 2)"


def test_compare_sequential_mde_is_over_sequences(tmp_path, bench):
    def run(method: str, gains: list[float]) -> dict:
        return with_contexts(
            sequential(method, [0.0, 0.5]),
            {"seq-0": {"c0": gains[0], "c1": gains[1]}, "seq-1": {"c2": gains[2], "c3": gains[3]}},
        )

    a, b = write(tmp_path, run("base_q", [0.0] * 4)), write(tmp_path, run("selfparam", [0.1, 0.3, 0.5, 0.7]))
    code, out, err = bench("compare", a, b)
    assert code == 0, err
    assert out.splitlines()[-1] == f"{MDE_LINE}±{by_hand([0.2, 0.6]):.4f} over 2 sequences"


# ---- bench power --------------------------------------------------------------------------------
def table_rows(out: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}  # rows[0]: header


def test_power_table_of_a_cell_folder(tmp_path, bench):
    spread = [0.9, 0.1, 0.6, 0.4, 0.5, 0.8, 0.2, 0.5, 0.7, 0.3]
    floor = qa("base_q", BASE)
    write(tmp_path, floor)
    write(tmp_path, qa("selfparam", [v + g for v, g in zip(BASE, GAINS)]))
    write(tmp_path, qa("bm25", spread))
    write(tmp_path, qa("dpr", [v + 0.2 for v in BASE]))
    write(tmp_path, qa("infllm", [0.5] * 10, contexts=[f"other-{i}" for i in range(10)]))  # a set of its own, no floor
    cell = tmp_path / "batch" / "fictional" / "smollm2-135m-instruct"
    code, out, err = bench("power", cell)
    assert code == 0, err
    assert out.startswith("### batch · fictional · smollm2-135m-instruct · 10 contexts\n")  # infllm: a set of its own
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "method",
        "n (contexts)",
        "Δ QA-F1 vs Base, Q [95% CI]",
        "MDE (80% power, α 0.05)",
    ]
    rows = table_rows(out)
    assert list(rows) == ["DPR", "SELF-PARAM", "BM25"]  # best first; the floor is the reference, not a row
    base = dict(zip(CONTEXTS, BASE))
    expected = paired_difference(base, dict(zip(CONTEXTS, spread)))
    interval = f"{expected['mean']:+.4f} [{expected['ci_low']:+.4f}, {expected['ci_high']:+.4f}]"
    assert rows["BM25"] == ["10", interval, f"±{by_hand([s - v for s, v in zip(spread, BASE)]):.4f}"]
    assert rows["SELF-PARAM"][0] == "10" and rows["SELF-PARAM"][1].startswith("+0.1600 [")
    assert rows["SELF-PARAM"][2] == "±0.1968"
    assert rows["DPR"] == ["10", "+0.2000 [+0.2000, +0.2000]", "— (no spread)"]
    assert "InfLLM" not in out
    assert err.count("\n") == 1 and "10 contexts, set 2: no Base, Q run to pair with" in err
    assert "2.80 × the standard error" in out and '"no spread": every unit' in out


def test_power_pools_seeds_and_handles_tiny_and_floorless_cells(tmp_path, bench):
    runs = [
        qa("base_q", BASE, seed=0),
        qa("base_q", BASE, seed=1),
        qa("selfparam", [v + g for v, g in zip(BASE, GAINS)], seed=0),
        qa("selfparam", [v + g for v, g in zip(BASE, reversed(GAINS))], seed=1),
    ]
    for run in runs:
        write(tmp_path / "seeds", run)
    code, out, err = bench("power", tmp_path / "seeds")
    assert code == 0, err
    # the seeds answer the same 10 contexts: a context is one unit under both seeds (its mean
    # difference), as the leaderboard's Δ column draws it, not two
    assert table_rows(out)["SELF-PARAM, 2 seeds"][:1] == ["10"]
    per_context = [(a + b) / 2 for a, b in zip(GAINS, GAINS[::-1])]
    assert table_rows(out)["SELF-PARAM, 2 seeds"][2] == f"±{by_hand(per_context):.4f}"
    for method, value in (("base_q", 0.1), ("dpr", 0.4)):
        write(tmp_path / "tiny", qa(method, [value], contexts=["fictional-0000"]))
    code, out, _ = bench("power", tmp_path / "tiny")
    assert code == 0 and table_rows(out)["DPR"] == ["1", "+0.3000 [+0.3000, +0.3000]", "— (n < 2)"]
    write(tmp_path / "nofloor", qa("dpr", BASE))
    code, out, err = bench("power", tmp_path / "nofloor")
    assert code == 2 and out == ""
    assert "no Base, Q run to pair with" in err and "could be paired with the floor method" in err
