"""CME: Consistency-Modulated Execution, the reward RL pipelines train on.

Scores r in 1..5 are normalised as (r - 1) / 4; the total is
``Exec * (w1 + w2 * Cons) / (w1 + w2)`` clipped to [0, 1], with w1 = 0.6 and w2 = 0.4 as in the
published editing config (project page: R = Exec * (0.6 + 0.4 * Cons)). The same function serves
integer scores and expected (probability-weighted) scores.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_W1 = 0.6
DEFAULT_W2 = 0.4


@dataclass(frozen=True)
class CMEWeights:
    """Weights of the CME formula; both must be >= 0 and not both 0."""

    w1: float = DEFAULT_W1
    w2: float = DEFAULT_W2

    def __post_init__(self) -> None:
        if self.w1 < 0 or self.w2 < 0 or self.w1 + self.w2 <= 0:
            raise ValueError(f"CME weights must be >= 0 and not both 0 (got w1={self.w1}, w2={self.w2})")


def normalise(score: float) -> float:
    """Map a 1..5 score to [0, 1] (the reference's "range_1_5" mode)."""
    return (score - 1.0) / 4.0


def cme(execution: float | None, consistency: float | None,
        weights: CMEWeights = CMEWeights()) -> float | None:
    """CME from two 1..5 scores (int or expected); ``None`` if either is missing."""
    if execution is None or consistency is None:
        return None
    e, c = normalise(execution), normalise(consistency)
    total = e * (weights.w1 + weights.w2 * c) / (weights.w1 + weights.w2)
    return min(1.0, max(0.0, total))
