"""From two sides' cached items to one variant's drift section of the calibration results.

:func:`drift_report` joins reference and variant items by id (manifest order), computes every
metric of :mod:`firm_lite.calibration.metrics` per mode and for CME, the label MAE side by side
when the manifest has labels, the worst-k items with both answers, a compact per-item table
(what the plots are drawn from) and the threshold checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firm_lite.calibration.metrics import cme_drift, item_divergence, kl_divergence, label_mae, mode_drift
from firm_lite.calibration.thresholds import describe_failure, evaluate
from firm_lite.prompts import MODES


def _kl(ref_item: dict[str, Any], var_item: dict[str, Any], mode: str) -> float | None:
    rf, vf = ref_item["forced"].get(mode), var_item["forced"].get(mode)
    return kl_divergence(rf["probs"], vf["probs"]) if rf and vf else None


def _answer(mode_record: dict[str, Any] | None) -> dict[str, Any] | None:
    if mode_record is None:
        return None
    return {k: mode_record.get(k) for k in ("score", "expected", "reasoning", "parse_ok", "raw")}


def _worst(ids: Sequence[str], ref: dict[str, Any], var: dict[str, Any], k: int) -> list[dict[str, Any]]:
    ranked = []
    for pid in ids:
        kls = {m: _kl(ref[pid], var[pid], m) for m in MODES}
        key = item_divergence(ref[pid]["record"], var[pid]["record"], kls)
        if key > (0, 0.0, 0.0):
            ranked.append((key, pid, kls))
    ranked.sort(key=lambda t: t[0], reverse=True)
    worst = []
    for _key, pid, kls in ranked[:k]:
        r, v = ref[pid]["record"], var[pid]["record"]
        worst.append({"id": pid, "cme": {"reference": r.get("cme"), "variant": v.get("cme")},
                      **{m: {"reference": _answer(r.get(m)), "variant": _answer(v.get(m)), "kl": kls[m]}
                         for m in MODES}})
    return worst


def _item_rows(ids: Sequence[str], ref: dict[str, Any], var: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for pid in ids:
        r, v = ref[pid]["record"], var[pid]["record"]
        row: dict[str, Any] = {"id": pid, "cme": [r.get("cme"), v.get("cme")],
                               "cme_expected": [r.get("cme_expected"), v.get("cme_expected")]}
        for m in MODES:
            rm, vm = r.get(m) or {}, v.get(m) or {}
            row[m] = {"score": [rm.get("score"), vm.get("score")],
                      "expected": [rm.get("expected"), vm.get("expected")], "kl": _kl(ref[pid], var[pid], m)}
        rows.append(row)
    return rows


def teacher_forcing_gap(ids: Sequence[str], ref: dict[str, Any]) -> float | None:
    """Largest |P_generated - P_forced| over the reference's own answers: how well the forced
    read-out reproduces the generated one (near 0, or the KL numbers would mean something else)."""
    gaps = []
    for pid in ids:
        for m in MODES:
            gen, forced = (ref[pid]["record"].get(m) or {}).get("probs"), ref[pid]["forced"].get(m)
            if gen and forced:
                gaps.append(max(abs(a - b) for a, b in zip(gen, forced["probs"], strict=True)))
    return max(gaps) if gaps else None


def drift_report(ids: Sequence[str], ref: dict[str, Any], var: dict[str, Any],
                 labels: dict[str, dict[str, int]], limits: dict[str, float], worst_k: int = 5) -> dict[str, Any]:
    """Metrics, checks, verdict, worst items and per-item rows of one variant against the reference."""
    metrics: dict[str, Any] = {}
    for m in MODES:
        metrics[m] = mode_drift([ref[i]["record"].get(m) for i in ids], [var[i]["record"].get(m) for i in ids],
                                [ref[i]["forced"].get(m) for i in ids], [var[i]["forced"].get(m) for i in ids])
    metrics["cme"] = cme_drift([ref[i]["record"] for i in ids], [var[i]["record"] for i in ids])
    metrics["labels"] = {m: label_mae([ref[i]["record"].get(m) for i in ids], [var[i]["record"].get(m) for i in ids],
                                      [labels.get(i, {}).get(m) for i in ids]) for m in MODES}
    checks = evaluate(metrics, limits)
    failures = [describe_failure(c) for c in checks if not c["ok"]]
    return {"metrics": metrics, "checks": checks, "passed": not failures, "failures": failures,
            "worst": _worst(ids, ref, var, worst_k), "items": _item_rows(ids, ref, var)}
