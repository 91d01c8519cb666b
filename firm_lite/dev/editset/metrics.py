"""How well a critic's records agree with the edit set's labels: MAE per mode, parse rate, spread.

Takes the standard records (:mod:`firm_lite.records`) and a manifest's labels, so the tiny
critic's build, the calibration harness and anyone scoring the edit set with ``firm-lite score``
compute the same numbers. The greedy score is what MAE uses (an unparsed answer is left out of the
MAE and counted against the parse rate); the probability-weighted ``expected`` score gets its own
MAE and spread, since a critic whose expected scores barely move carries no signal.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from firm_lite.dev.editset.labels import MODES, label_of


def read_labels(manifest: str | Path) -> dict[str, dict[str, Any]]:
    """id -> {"labels": {mode: int}, "edit": {...}} for every labelled row of a manifest."""
    from firm_lite.manifest import read_manifest

    out: dict[str, dict[str, Any]] = {}
    for row in read_manifest(manifest):
        extra = row.extra or {}
        labels = {m: label_of(extra, m) for m in MODES}
        if row.pair is not None and any(v is not None for v in labels.values()):
            out[row.id] = {"labels": labels, "edit": extra.get("edit") or {}}
    return out


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    mean = sum(values) / len(values)
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)),
            "min": min(values), "max": max(values)}


def mode_report(records: Iterable[Mapping[str, Any]], labels: Mapping[str, Mapping[str, Any]], mode: str,
                worst: int = 5) -> dict[str, Any]:
    """Agreement of one mode with the labels (records without a label are ignored)."""
    rows = []
    for rec in records:
        entry = labels.get(str(rec.get("id")))
        truth = (entry or {}).get("labels", {}).get(mode)
        if truth is None:
            continue
        answer = rec.get(mode) or {}
        score = answer.get("score") if answer.get("parse_ok") else None
        rows.append({"id": rec.get("id"), "label": truth, "score": score, "expected": answer.get("expected"),
                     "edit": (entry or {}).get("edit", {})})
    parsed = [r for r in rows if r["score"] is not None]
    with_expected = [r for r in rows if r["expected"] is not None]
    errors = [abs(r["score"] - r["label"]) for r in parsed]
    by_family: dict[str, list[float]] = defaultdict(list)
    by_label: dict[int, list[float]] = defaultdict(list)
    for r, err in zip(parsed, errors, strict=True):
        by_family[str(r["edit"].get("family", "?"))].append(err)
        by_label[int(r["label"])].append(r["score"])
    ranked = sorted(parsed, key=lambda r: -abs(r["score"] - r["label"]))[:worst]
    return {
        "n": len(rows), "parsed": len(parsed), "parse_rate": len(parsed) / len(rows) if rows else None,
        "mae": sum(errors) / len(errors) if errors else None,
        "mae_expected": (sum(abs(r["expected"] - r["label"]) for r in with_expected) / len(with_expected)
                         if with_expected else None),
        "exact": sum(e == 0 for e in errors) / len(errors) if errors else None,
        "within_one": sum(e <= 1 for e in errors) / len(errors) if errors else None,
        "constant_baseline_mae": _constant_baseline([r["label"] for r in rows]),
        "expected_spread": _stats([float(r["expected"]) for r in with_expected]),
        "mae_by_family": {k: sum(v) / len(v) for k, v in sorted(by_family.items())},
        "mean_score_by_label": {k: sum(v) / len(v) for k, v in sorted(by_label.items())},
        "worst": [{"id": r["id"], "label": r["label"], "score": r["score"], "expected": r["expected"],
                   "family": r["edit"].get("family"), "outcome": r["edit"].get("outcome")} for r in ranked],
    }


def _constant_baseline(labels: list[int]) -> float | None:
    """MAE of always answering the labels' median: what a critic that ignores the images gets."""
    if not labels:
        return None
    ordered = sorted(labels)
    median = ordered[len(ordered) // 2]
    return sum(abs(v - median) for v in labels) / len(labels)


def editset_report(records: Iterable[Mapping[str, Any]], labels: Mapping[str, Mapping[str, Any]],
                   modes: Iterable[str] = MODES) -> dict[str, Any]:
    """:func:`mode_report` for every mode."""
    records = list(records)
    return {mode: mode_report(records, labels, mode) for mode in modes}


_KIND_RE = re.compile(r"Requested: ([a-z ]+)\. Seen: ([a-z ]+)\.")


def kind_accuracy(records: Iterable[Mapping[str, Any]], labels: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """How often an edit-set critic's execution reasoning names the right kinds of edit.

    ``requested``: the kind it read from the instruction; ``seen``: the kind it read from the
    images (:func:`firm_lite.dev.editset.labels.rationale`); ``score_follows``: how often its score is
    5 when the two agree and 1 when they do not (the rule its training answers follow, modulo
    strength). ``confusions``: (true seen kind, answered) -> count, answered ``None`` when the
    reasoning is not in that form. Separates "cannot read the instruction" from "cannot see the
    edit" from "does not act on what it saw", which MAE alone mixes up.
    """
    from firm_lite.dev.editset.labels import KIND_WORDS, kind_seen

    n = requested = seen = follows = 0
    confusions: dict[tuple[str, str | None], int] = defaultdict(int)
    for record in records:
        truth = labels.get(str(record.get("id")))
        answer = record.get("execution") or {}
        if truth is None or not truth.get("edit") or record.get("error"):
            continue
        match = _KIND_RE.search(answer.get("raw") or "")
        asked, saw = (match.group(1), match.group(2)) if match else (None, None)
        true_seen = kind_seen(truth["edit"])
        n += 1
        requested += asked == KIND_WORDS[truth["edit"]["family"]]
        seen += saw == true_seen
        follows += match is not None and answer.get("score") == (5 if asked == saw else 1)
        confusions[(true_seen, saw)] += 1
    return {"n": n, "requested": requested / n if n else None, "seen": seen / n if n else None,
            "score_follows": follows / n if n else None,
            "confusions": {f"{t} -> {a}": c for (t, a), c in sorted(confusions.items(), key=lambda kv: -kv[1])}}


def mae_by_mode(records: Iterable[Mapping[str, Any]],
                labels: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Just the MAE of the greedy score per mode."""
    return {mode: rep["mae"] for mode, rep in editset_report(records, labels).items()}


def format_report(report: Mapping[str, Mapping[str, Any]]) -> str:
    """A short human table of an :func:`editset_report`."""
    lines = [f"{'mode':<12} {'n':>4} {'parse':>6} {'MAE':>6} {'MAE(E)':>7} {'exact':>6} {'±1':>6} "
             f"{'const':>6} {'E mean±std [min,max]':>24}"]
    for mode, r in report.items():
        s = r["expected_spread"]
        spread = (f"{s['mean']:.2f}±{s['std']:.2f} [{s['min']:.2f},{s['max']:.2f}]" if s["mean"] is not None
                  else "-")

        def f(v: float | None, spec: str = ".3f") -> str:
            return "-" if v is None else format(v, spec)

        lines.append(f"{mode:<12} {r['n']:>4} {f(r['parse_rate'], '.0%'):>6} {f(r['mae']):>6} "
                     f"{f(r['mae_expected']):>7} {f(r['exact'], '.0%'):>6} {f(r['within_one'], '.0%'):>6} "
                     f"{f(r['constant_baseline_mae']):>6} {spread:>24}")
    return "\n".join(lines)
