import math

import pytest

from benchmark.metrics import bootstrap_ci, exact_match, normalize_answer, qa_acc, qa_f1, summarize, token_f1


def test_normalize_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The  Quick, brown fox!  ") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"


def test_token_f1_hand_computed():
    # pred tokens: [red, fox, jumps]; gold: [red, fox]; overlap 2 -> P=2/3, R=1 -> F1=0.8
    assert token_f1("the red fox jumps", "a red fox") == pytest.approx(0.8)
    assert token_f1("blue", "red") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "red") == 0.0


def test_qa_f1_takes_best_gold_and_acc_is_containment():
    assert qa_f1("Paris, France", ["London", "Paris"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert qa_acc("The answer is Paris.", ["paris"]) == 1.0
    assert qa_acc("Lyon", ["Paris"]) == 0.0
    assert exact_match("the Paris", ["paris"]) == 1.0


def test_bootstrap_interval_contains_mean_and_is_reproducible():
    values = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    low, high = bootstrap_ci(values, seed=3)
    assert low < 0.5 < high
    assert (low, high) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    summary = summarize(values)
    assert summary["mean"] == pytest.approx(0.5) and summary["n"] == 6
    assert all(math.isnan(v) for v in bootstrap_ci([]))
