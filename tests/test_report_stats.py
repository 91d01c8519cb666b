"""The report's statistics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from firm_lite.report.stats import bootstrap_mean, group_by, paired_comparison, sign_test_p, spread


def test_mean_and_interval_of_two_values_cover_both_ends() -> None:
    # Resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% quantiles are 0 and 1.
    est = bootstrap_mean([0.0, 1.0])
    assert (est.n, est.mean, est.low, est.high) == (2, 0.5, 0.0, 1.0)


def test_missing_values_are_left_out_and_constants_have_no_width() -> None:
    est = bootstrap_mean([None, 1.0, 3.0, None])
    assert est.n == 2 and est.mean == 2.0
    assert bootstrap_mean([0.8] * 7).as_json() == {"n": 7, "mean": 0.8, "low": 0.8, "high": 0.8}
    assert bootstrap_mean([None, None]).as_json() == {"n": 0, "mean": None, "low": None, "high": None}


def test_interval_width_matches_the_normal_approximation() -> None:
    # 50 zeros and 50 ones: standard error sqrt(0.25 / 100) = 0.05, so about 0.5 +- 1.96 * 0.05.
    est = bootstrap_mean([0.0] * 50 + [1.0] * 50, resamples=4000)
    assert est.mean == 0.5
    assert est.low == pytest.approx(0.402, abs=0.015) and est.high == pytest.approx(0.598, abs=0.015)


def test_same_seed_same_interval() -> None:
    values = [0.1, 0.7, 0.3, 0.9, 0.4, 0.4, 1.0]
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    assert bootstrap_mean(values, seed=3) != bootstrap_mean(values, seed=4)


def test_sign_test_exact_values() -> None:
    assert sign_test_p(8, 2) == pytest.approx(112 / 1024)  # 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10
    assert sign_test_p(2, 8) == pytest.approx(112 / 1024)
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024)
    assert sign_test_p(5, 5) == 1.0
    assert sign_test_p(0, 0) == 1.0


def test_paired_comparison_counts_only_shared_scored_ids() -> None:
    a = {"x": 1.0, "y": 0.5, "z": 0.0, "w": None, "only-a": 1.0}
    b = {"x": 0.5, "y": 0.5, "z": 0.25, "w": 0.3, "only-b": 0.0}
    cmp = paired_comparison(a, b)
    assert (cmp.n, cmp.wins, cmp.ties, cmp.losses) == (3, 1, 1, 1)
    assert cmp.mean_diff == pytest.approx((0.5 + 0.0 - 0.25) / 3)
    assert cmp.sign_test_p == 1.0
    assert not cmp.distinguishable and cmp.verdict == "not distinguishable"


def test_identical_models_are_not_distinguishable() -> None:
    scores = {f"p{i}": (i % 5) / 4 for i in range(200)}
    cmp = paired_comparison(scores, dict(scores))
    assert (cmp.wins, cmp.ties, cmp.losses, cmp.mean_diff, cmp.low, cmp.high) == (0, 200, 0, 0.0, 0.0, 0.0)
    assert cmp.as_json()["verdict"] == "not distinguishable"


def test_pairing_keeps_what_separate_intervals_would_hide() -> None:
    # B = A - 0.05 on every pair, A spread over [0, 1]: the two means' intervals overlap widely,
    # but the paired difference is exactly 0.05 everywhere, so the models are distinguishable.
    a = {f"p{i}": i / 99 for i in range(100)}
    b = {k: v - 0.05 for k, v in a.items()}
    ea, eb = bootstrap_mean(a.values()), bootstrap_mean(b.values())
    assert ea.low < eb.high  # separate intervals overlap
    cmp = paired_comparison(a, b)
    assert cmp.wins == 100 and cmp.distinguishable and cmp.verdict == "A better"
    assert cmp.low == pytest.approx(0.05) and cmp.high == pytest.approx(0.05)
    assert paired_comparison(b, a).verdict == "B better"


def test_no_shared_ids() -> None:
    cmp = paired_comparison({"a": 1.0}, {"b": 1.0})
    assert cmp.n == 0 and cmp.mean_diff is None and cmp.verdict == "no shared pairs"


def test_group_by_keeps_first_appearance_order() -> None:
    items = [("remove", 1), ("style", 2), ("remove", 3), (None, 4)]
    assert group_by(items, lambda t: t[0]) == {"remove": [("remove", 1), ("remove", 3)], "style": [("style", 2)],
                                               None: [(None, 4)]}


def test_spread_needs_two_models() -> None:
    assert spread([0.2, None, 0.9, 0.5]) == pytest.approx(0.7)
    assert spread([0.2, None]) is None
    assert math.isclose(spread([1.0, 1.0]), 0.0)
