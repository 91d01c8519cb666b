"""The numbers behind an evaluation report: bootstrap intervals, paired comparisons, grouping.

A leaderboard of editing models is a table of means of a few hundred noisy judge scores; two
rows differ by chance as often as not. So every mean comes with a percentile-bootstrap 95%
interval (:func:`bootstrap_mean`), and two models are compared only on the pairs both were
scored on (:func:`paired_comparison`): wins/ties/losses, the mean difference with a paired
bootstrap interval, and an exact two-sided sign test. Two models are called *distinguishable*
when the interval of the difference excludes 0.

Everything here is pure (numbers in, numbers out) and seeded, so a report is reproducible and
the functions are unit-tested against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from math import comb
from typing import Any, TypeVar

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
_CHUNK = 200_000  # resampled values drawn per numpy call (bounds memory at thousands of pairs)

T = TypeVar("T")


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval; ``mean`` is None when there are no values."""

    n: int
    mean: float | None
    low: float | None
    high: float | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples of ``values`` (drawn in bounded chunks)."""
    rng = np.random.default_rng(seed)
    n = len(values)
    rows = max(1, _CHUNK // n)
    means = []
    for start in range(0, resamples, rows):
        count = min(rows, resamples - start)
        means.append(values[rng.integers(0, n, size=(count, n))].mean(axis=1))
    return np.concatenate(means)


def _interval(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_mean(values: Iterable[float | None], *, resamples: int = RESAMPLES, level: float = LEVEL,
                   seed: int = SEED) -> Estimate:
    """Mean of the non-None ``values`` and its percentile-bootstrap interval at ``level``."""
    data = np.asarray([float(v) for v in values if v is not None], dtype=float)
    if data.size == 0:
        return Estimate(0, None, None, None)
    if np.all(data == data[0]):  # no spread: the interval is the value itself (exactly, no rounding)
        value = float(data[0])
        return Estimate(int(data.size), value, value, value)
    mean = float(data.mean())
    low, high = _interval(_resampled_means(data, resamples, seed), level)
    return Estimate(int(data.size), mean, low, high)


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | wins and losses equally likely).
    Ties are left out before calling (the usual convention); no decisive pair gives 1.0."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the ids both have a value for (difference = A - B)."""

    n: int
    wins: int  # A higher
    ties: int
    losses: int  # A lower
    mean_diff: float | None
    low: float | None
    high: float | None
    sign_test_p: float

    @property
    def distinguishable(self) -> bool:
        """True when the interval of the mean difference excludes 0."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return "no shared pairs"
        if not self.distinguishable:
            return "not distinguishable"
        return "A better" if self.mean_diff > 0 else "B better"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "distinguishable": self.distinguishable, "verdict": self.verdict}


def paired_comparison(a: Mapping[Hashable, float | None], b: Mapping[Hashable, float | None], *,
                      tie_tolerance: float = 1e-9, resamples: int = RESAMPLES, level: float = LEVEL,
                      seed: int = SEED) -> PairedComparison:
    """Compare two models on their shared ids (ids where either value is None are left out).

    A "win" is an id where A's value exceeds B's by more than ``tie_tolerance``. The interval is a
    paired bootstrap: whole ids are resampled, so the correlation between the two models on the
    same edit is kept (an unpaired interval would be much wider).
    """
    shared = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    diffs = np.asarray([float(a[k]) - float(b[k]) for k in shared], dtype=float)
    wins = int(np.sum(diffs > tie_tolerance))
    losses = int(np.sum(diffs < -tie_tolerance))
    ties = len(shared) - wins - losses
    est = bootstrap_mean(diffs.tolist(), resamples=resamples, level=level, seed=seed)
    return PairedComparison(n=len(shared), wins=wins, ties=ties, losses=losses, mean_diff=est.mean,
                            low=est.low, high=est.high, sign_test_p=sign_test_p(wins, losses))


def group_by(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    """Items grouped by ``key(item)``, groups in order of first appearance, items in input order."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def spread(values: Sequence[float | None]) -> float | None:
    """max - min of the non-None values (how much several models disagree on one pair); None
    when fewer than two models have a value."""
    present = [v for v in values if v is not None]
    return max(present) - min(present) if len(present) >= 2 else None
