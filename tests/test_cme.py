from __future__ import annotations

import pytest

from firm_lite.cme import CMEWeights, cme, normalise


def test_normalise() -> None:
    assert [normalise(r) for r in (1, 2, 3, 4, 5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("e, c, expected", [
    (5, 5, 1.0), (1, 5, 0.0), (5, 1, 0.6), (3, 3, 0.5 * (0.6 + 0.4 * 0.5)), (4, 2, 0.75 * (0.6 + 0.1)),
])
def test_cme_default_weights(e: int, c: int, expected: float) -> None:
    assert cme(e, c) == pytest.approx(expected)


def test_cme_custom_weights_and_expected_scores() -> None:
    w = CMEWeights(1.0, 1.0)
    assert cme(4.5, 2.0, w) == pytest.approx(0.875 * (1 + 0.25) / 2)


def test_cme_missing_score_is_none() -> None:
    assert cme(None, 4) is None and cme(4, None) is None


def test_bad_weights_refused() -> None:
    with pytest.raises(ValueError):
        CMEWeights(0, 0)
    with pytest.raises(ValueError):
        CMEWeights(-1, 1)
