"""Drift metrics between a reference critic and a variant, computed from saved records.

Pure functions over plain lists (no torch), so they are tested on hand-made cases and serve
the calibration harness, the report and anyone comparing two result files.

Definitions (per mode unless said otherwise):

* Paired items: both sides parsed a score. Exact agreement, flip rate (|delta| >= 1), big-flip
  rate (|delta| >= 2) and MAE of integer scores are means over paired items.
* MAE of expected scores: mean |E_ref - E_var| over items where both read-outs exist.
* KL: KL(P_ref || P_var) in nats over the five score digits, both read teacher-forced at the
  reference answer's score digit; P_var is floored at :data:`KL_FLOOR` before the log. Mean,
  p95 (linear interpolation between order statistics, numpy's default) and max over items
  where the reference answer had a score digit.
* Parse-failure rate: share of scored (non-error) items whose answer did not parse.
* Rank correlations of CME: Spearman = Pearson correlation of mid-ranks (ties get the mean of
  the ranks they span); Kendall = tau-b (tie-corrected). ``None`` when either side is constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

KL_FLOOR = 1e-12


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def kl_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """KL(p || q) in nats; ``p`` the reference distribution, ``q`` the variant's."""
    if len(p) != len(q):
        raise ValueError(f"distributions differ in length ({len(p)} vs {len(q)})")
    sp, sq = float(sum(p)), float(sum(q))
    if sp <= 0 or sq <= 0:
        raise ValueError("a distribution sums to zero")
    total = 0.0
    for pi, qi in zip(p, q, strict=True):
        pi, qi = pi / sp, max(qi / sq, KL_FLOOR)
        if pi > 0:
            total += pi * (math.log(pi) - math.log(qi))
    return max(0.0, total)


def percentile(values: Sequence[float], q: float) -> float | None:
    """``q``-th percentile with linear interpolation (numpy ``method="linear"``)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def mid_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return float(max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy))))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho with mid-ranks for ties; ``None`` if either side is constant or n < 2."""
    return _pearson(mid_ranks(x), mid_ranks(y))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties in either variable corrected); ``None`` if undefined."""
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                ties_x += 1
                ties_y += 1
            elif dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    pairs = n * (n - 1) // 2
    denom = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    if denom == 0:
        return None
    return float((concordant - discordant) / denom)


def mode_drift(ref: Sequence[dict[str, Any] | None], var: Sequence[dict[str, Any] | None],
               ref_forced: Sequence[dict[str, Any] | None], var_forced: Sequence[dict[str, Any] | None]
               ) -> dict[str, Any]:
    """Drift of one mode. ``ref``/``var``: the records' mode dicts (``None`` for error items);
    ``*_forced``: teacher-forced read-outs on the reference's answer (``{"probs": ...}`` or None).
    """
    if not len(ref) == len(var) == len(ref_forced) == len(var_forced):
        raise ValueError("reference and variant item lists differ in length")
    scored = [(r, v) for r, v in zip(ref, var, strict=True) if r is not None and v is not None]
    paired = [(r["score"], v["score"]) for r, v in scored if r["score"] is not None and v["score"] is not None]
    deltas = [abs(a - b) for a, b in paired]
    expected = [abs(r["expected"] - v["expected"]) for r, v in scored
                if r.get("expected") is not None and v.get("expected") is not None]
    kls = [kl_divergence(rf["probs"], vf["probs"]) for rf, vf in zip(ref_forced, var_forced, strict=True)
           if rf is not None and vf is not None]
    n = len(paired)
    return {
        "n_scored": len(scored), "n_paired": n, "n_kl": len(kls),
        "exact_agreement": _mean([float(d == 0) for d in deltas]),
        "flip_rate": _mean([float(d >= 1) for d in deltas]),
        "big_flip_rate": _mean([float(d >= 2) for d in deltas]),
        "mae_score": _mean([float(d) for d in deltas]),
        "mae_expected": _mean(expected),
        "kl_mean": _mean(kls), "kl_p95": percentile(kls, 95), "kl_max": max(kls) if kls else None,
        "parse_failure_rate": _mean([float(not v["parse_ok"]) for _, v in scored]),
        "reference_parse_failure_rate": _mean([float(not r["parse_ok"]) for r, _ in scored]),
        "confusion": confusion_matrix(paired),
    }


def confusion_matrix(paired: Sequence[tuple[int, int]]) -> list[list[int]]:
    """5x5 counts: row = reference score - 1, column = variant score - 1."""
    matrix = [[0] * 5 for _ in range(5)]
    for a, b in paired:
        matrix[a - 1][b - 1] += 1
    return matrix


def cme_drift(ref_records: Sequence[dict[str, Any]], var_records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """CME agreement: MAE of CME and expected CME, rank correlations of both against the reference."""
    both = [(r["cme"], v["cme"]) for r, v in zip(ref_records, var_records, strict=True)
            if r.get("cme") is not None and v.get("cme") is not None]
    both_e = [(r["cme_expected"], v["cme_expected"]) for r, v in zip(ref_records, var_records, strict=True)
              if r.get("cme_expected") is not None and v.get("cme_expected") is not None]
    x, y = [a for a, _ in both], [b for _, b in both]
    xe, ye = [a for a, _ in both_e], [b for _, b in both_e]
    return {
        "n": len(both), "reference_constant": len(set(x)) <= 1, "cme_mae": _mean([abs(a - b) for a, b in both]),
        "cme_expected_mae": _mean([abs(a - b) for a, b in both_e]),
        "cme_spearman": spearman(x, y), "cme_kendall": kendall_tau_b(x, y),
        "cme_expected_spearman": spearman(xe, ye), "cme_expected_kendall": kendall_tau_b(xe, ye),
    }


def label_mae(ref: Sequence[dict[str, Any] | None], var: Sequence[dict[str, Any] | None],
              labels: Sequence[int | None]) -> dict[str, Any] | None:
    """MAE against human labels, reference and variant side by side, on the items where the
    label exists and both sides parsed (so the two numbers cover the same items)."""
    rows = [(r["score"], v["score"], lab) for r, v, lab in zip(ref, var, labels, strict=True)
            if lab is not None and r is not None and v is not None
            and r["score"] is not None and v["score"] is not None]
    if not rows:
        return None
    ref_mae = _mean([abs(a - lab) for a, _, lab in rows])
    var_mae = _mean([abs(b - lab) for _, b, lab in rows])
    return {"n": len(rows), "reference": ref_mae, "variant": var_mae, "increase": var_mae - ref_mae}


def item_divergence(ref: dict[str, Any], var: dict[str, Any], kls: dict[str, float | None]) -> tuple:
    """Sort key for worst items: largest score change in any mode (a parse failure on one side
    counts as 5), then CME change, then summed KL."""
    worst = 0
    for mode in ("execution", "consistency"):
        r, v = ref.get(mode), var.get(mode)
        if r is None or v is None:
            continue
        if (r["score"] is None) != (v["score"] is None):
            worst = max(worst, 5)
        elif r["score"] is not None:
            worst = max(worst, abs(r["score"] - v["score"]))
    dcme = abs(ref["cme"] - var["cme"]) if ref.get("cme") is not None and var.get("cme") is not None else 0.0
    return (worst, dcme, sum(k for k in kls.values() if k is not None))
