"""Drift metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import math

import pytest

from firm_lite.calibration.metrics import (
    cme_drift,
    kendall_tau_b,
    kl_divergence,
    label_mae,
    mid_ranks,
    mode_drift,
    percentile,
    spearman,
)


def _mode(score: int | None, expected: float | None = None) -> dict:
    return {"score": score, "expected": expected if expected is not None else score, "parse_ok": score is not None}


def _forced(probs: list[float] | None) -> dict | None:
    return {"probs": probs} if probs is not None else None


def test_agreement_flips_and_mae() -> None:
    ref = [_mode(s) for s in (1, 2, 3, 4, 5)]
    var = [_mode(s) for s in (1, 3, 5, 4, 2)]  # deltas 0, 1, 2, 0, 3
    none = [None] * 5
    d = mode_drift(ref, var, none, none)
    assert d["n_paired"] == 5
    assert d["exact_agreement"] == pytest.approx(2 / 5)
    assert d["flip_rate"] == pytest.approx(3 / 5)
    assert d["big_flip_rate"] == pytest.approx(2 / 5)
    assert d["mae_score"] == pytest.approx(6 / 5)
    assert d["kl_mean"] is None and d["n_kl"] == 0
    assert d["confusion"][4][1] == 1 and d["confusion"][0][0] == 1 and sum(map(sum, d["confusion"])) == 5


def test_parse_failures_are_counted_not_paired() -> None:
    ref = [_mode(3), _mode(4), _mode(2), None]
    var = [_mode(3), _mode(None), _mode(2), None]  # one variant parse failure, one error item
    d = mode_drift(ref, var, [None] * 4, [None] * 4)
    assert d["n_scored"] == 3 and d["n_paired"] == 2
    assert d["parse_failure_rate"] == pytest.approx(1 / 3)
    assert d["reference_parse_failure_rate"] == 0.0
    assert d["exact_agreement"] == 1.0


def test_expected_mae() -> None:
    d = mode_drift([_mode(3, 3.2), _mode(4, 3.9)], [_mode(3, 3.0), _mode(4, 4.4)], [None] * 2, [None] * 2)
    assert d["mae_expected"] == pytest.approx((0.2 + 0.5) / 2)


def test_kl_known_values_and_direction() -> None:
    p, q = [0.5, 0.5, 0, 0, 0], [0.25, 0.75, 0, 0, 0]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(p, q) == pytest.approx(expected)
    # KL is not symmetric: the reference is the first argument
    assert kl_divergence(q, p) == pytest.approx(0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))
    assert kl_divergence(p, p) == 0.0
    # mass where the variant has none: large but finite (floored)
    assert 20 < kl_divergence([0, 0, 1, 0, 0], [1, 0, 0, 0, 0]) < 30


def test_kl_in_mode_drift_mean_and_p95() -> None:
    ref_f = [_forced([0.2] * 5)] * 4 + [None]
    var_f = [_forced([0.2] * 5)] * 3 + [_forced([0.6, 0.1, 0.1, 0.1, 0.1]), _forced([0.2] * 5)]
    d = mode_drift([_mode(3)] * 5, [_mode(3)] * 5, ref_f, var_f)
    one = kl_divergence([0.2] * 5, [0.6, 0.1, 0.1, 0.1, 0.1])
    assert d["n_kl"] == 4  # the item without a reference read-out is left out
    assert d["kl_mean"] == pytest.approx(one / 4)
    assert d["kl_max"] == pytest.approx(one)
    assert d["kl_p95"] == pytest.approx(one * 0.85)  # position 0.95 * 3 = 2.85 between 0 and one


def test_percentile_matches_numpy() -> None:
    np = pytest.importorskip("numpy")
    xs = [0.3, 0.0, 1.5, 0.2, 0.9, 0.05, 4.0]
    for q in (0, 50, 90, 95, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert percentile([], 95) is None


def test_mid_ranks_ties() -> None:
    assert mid_ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]


def test_rank_correlations_known_cases() -> None:
    x = [1, 2, 3, 4, 5]
    assert spearman(x, [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert spearman(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau_b(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swapped neighbour pair: 9 concordant, 1 discordant of 10
    assert kendall_tau_b(x, [1, 2, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman(x, [1, 2, 4, 3, 5]) == pytest.approx(1 - 6 * 2 / (5 * 24))
    assert spearman(x, [3, 3, 3, 3, 3]) is None and kendall_tau_b(x, [3] * 5) is None


def test_rank_correlations_with_ties_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats", reason="needs the calib extra: pip install 'firm-lite[calib]'")
    x = [0.0, 0.25, 0.25, 0.5, 0.7, 0.7, 1.0, 0.1]
    y = [0.1, 0.25, 0.3, 0.3, 0.7, 0.6, 1.0, 0.1]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)  # scipy's default is tau-b


def test_cme_drift() -> None:
    ref = [{"cme": c, "cme_expected": c} for c in (0.0, 0.3, 0.6, 1.0)]
    var = [{"cme": c, "cme_expected": c} for c in (0.0, 0.6, 0.3, 1.0)]
    d = cme_drift(ref, var)
    assert d["cme_mae"] == pytest.approx(0.15)
    assert d["cme_spearman"] == pytest.approx(0.8)
    assert d["cme_kendall"] == pytest.approx(4 / 6)
    assert not d["reference_constant"]


def test_label_mae_side_by_side() -> None:
    ref = [_mode(4), _mode(2), _mode(5), _mode(3)]
    var = [_mode(3), _mode(2), _mode(None), _mode(1)]
    got = label_mae(ref, var, [4, 3, 5, None])  # item 3 unparsed on one side, item 4 unlabelled
    assert got == {"n": 2, "reference": 0.5, "variant": 1.0, "increase": 0.5}
    assert label_mae(ref, var, [None] * 4) is None
