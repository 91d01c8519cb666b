"""The numbers of an evaluation report, as one JSON-able dict, and its text and markdown views.

:func:`summarize` turns the model runs into the leaderboard (one row per editing model: mean
execution, consistency, CME and expected-score CME, each with a bootstrap interval; counts of
pairs, error rows and parse failures), per-category means, and a paired comparison of every two
models on the ids they share. ``firm-lite report --json`` prints this dict; the page and the
markdown summary are drawn from it, never from in-memory state.

What counts: a metric's mean is over the pairs that have a value for it. An error row (the pair
could not be scored) and a parse failure (the critic's answer had no readable score) have none;
they are not dropped silently but counted in their own columns, since a critic failing to parse is
not evidence about the editing model.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import combinations
from typing import Any

from firm_lite import __version__
from firm_lite.prompts import MODES
from firm_lite.report.load import ModelRun, ScoreFile, describe_provenance
from firm_lite.report.stats import LEVEL, RESAMPLES, SEED, bootstrap_mean, paired_comparison

METRICS = ("execution", "consistency", "cme", "cme_expected")
METRIC_LABELS = {"execution": "Execution (1-5)", "consistency": "Consistency (1-5)", "cme": "CME (0-1)",
                 "cme_expected": "CME from expected scores (0-1)"}
PRIMARY = "cme"
UNCATEGORISED = "(none)"


def metric_value(rec: dict[str, Any], metric: str) -> float | None:
    """One record's value for ``metric`` (None for error rows and unparsed answers)."""
    if rec.get("error") is not None:
        return None
    if metric in MODES:
        mode = rec.get(metric)
        value = mode.get("score") if isinstance(mode, dict) else None
    else:
        value = rec.get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_failed(rec: dict[str, Any], mode: str) -> bool:
    side = rec.get(mode)
    return isinstance(side, dict) and side.get("parse_ok") is False


def _row(run: ModelRun, opts: dict[str, Any]) -> dict[str, Any]:
    recs = list(run.records.values())
    errors = sum(1 for r in recs if r.get("error") is not None)
    parse = {m: sum(1 for r in recs if parse_failed(r, m)) for m in MODES}
    parse["any"] = sum(1 for r in recs if any(parse_failed(r, m) for m in MODES))
    metrics = {m: bootstrap_mean([metric_value(r, m) for r in recs], **opts).as_json() for m in METRICS}
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for pair_id, rec in run.records.items():
        by_cat.setdefault(run.info(pair_id).category or UNCATEGORISED, []).append(rec)
    categories = {cat: {m: bootstrap_mean([metric_value(r, m) for r in rs], **opts).as_json() for m in METRICS}
                  for cat, rs in by_cat.items()}
    return {"name": run.name, "file": run.path, "provenance": run.provenance,
            "provenance_text": describe_provenance(run.provenance), "pairs": len(recs),
            "scored": len(recs) - errors, "errors": errors, "parse_failures": parse, "metrics": metrics,
            "categories": categories}


def _sort_key(row: dict[str, Any]) -> tuple[int, float]:
    mean = row["metrics"][PRIMARY]["mean"]
    return (mean is None, -(mean or 0.0))


def summarize(files: list[ScoreFile], *, resamples: int = RESAMPLES, level: float = LEVEL,
              seed: int = SEED) -> dict[str, Any]:
    """The report's numbers (see the module docstring); models ranked by mean CME."""
    opts = {"resamples": resamples, "level": level, "seed": seed}
    runs = [run for f in files for run in f.runs]
    rows = sorted((_row(run, opts) for run in runs), key=_sort_key)
    order = {row["name"]: i for i, row in enumerate(rows)}
    ranked = sorted(runs, key=lambda r: order[r.name])
    comparisons = []
    for a, b in combinations(ranked, 2):
        entry: dict[str, Any] = {"a": a.name, "b": b.name}
        for m in METRICS:
            entry[m] = paired_comparison({k: metric_value(r, m) for k, r in a.records.items()},
                                         {k: metric_value(r, m) for k, r in b.records.items()}, **opts).as_json()
        comparisons.append(entry)
    categories = sorted({c for row in rows for c in row["categories"]}, key=lambda c: (c == UNCATEGORISED, c))
    warnings = []
    for f in files:
        if f.mixed:
            warnings.append(f"{f.path}: records from {len(f.runs)} different model/variant/image-budget groups; "
                            "each is reported as its own row")
        if f.bad_lines:
            warnings.append(f"{f.path}: {len(f.bad_lines)} unusable line(s), first: {f.bad_lines[0]}")
    for row in rows:
        if row["errors"]:
            warnings.append(f"{row['name']}: {row['errors']} error row(s) (pairs that could not be scored)")
        if row["parse_failures"]["any"]:
            warnings.append(f"{row['name']}: {row['parse_failures']['any']} pair(s) with an answer that did "
                            "not parse")
    return {
        "schema": 1, "created": datetime.now(UTC).isoformat(timespec="seconds"), "firm_lite": __version__,
        "settings": {"primary_metric": PRIMARY, **opts},
        "inputs": [{"path": f.path, "name": f.name, "lines": f.lines, "superseded_lines": f.superseded,
                    "groups": [r.name for r in f.runs], "bad_lines": [str(b) for b in f.bad_lines]} for f in files],
        "leaderboard": rows, "categories": categories, "comparisons": comparisons, "warnings": warnings,
    }


def fmt_estimate(est: dict[str, Any], digits: int = 3) -> str:
    """``0.788 [0.702, 0.864]`` (or ``-``)."""
    if est.get("mean") is None:
        return "-"
    return f"{est['mean']:.{digits}f} [{est['low']:.{digits}f}, {est['high']:.{digits}f}]"


def fmt_diff(cmp: dict[str, Any], digits: int = 3) -> str:
    if cmp.get("mean_diff") is None:
        return "-"
    return f"{cmp['mean_diff']:+.{digits}f} [{cmp['low']:+.{digits}f}, {cmp['high']:+.{digits}f}]"


def verdict_text(entry: dict[str, Any]) -> str:
    cmp = entry[PRIMARY]
    if cmp["verdict"] == "A better":
        return f"{entry['a']} better"
    if cmp["verdict"] == "B better":
        return f"{entry['b']} better"
    return cmp["verdict"]


def text_table(summary: dict[str, Any]) -> str:
    """The leaderboard and comparisons, for stdout."""
    level = round(summary["settings"]["level"] * 100)
    lines = [f"{'#':>2} {'model':<28} {'pairs':>6} {'err':>4} {'parse':>5}  "
             + "  ".join(f"{m + f' ({level}% CI)':<26}" for m in METRICS)]
    for i, row in enumerate(summary["leaderboard"], start=1):
        lines.append(f"{i:>2} {row['name'][:28]:<28} {row['pairs']:>6} {row['errors']:>4} "
                     f"{row['parse_failures']['any']:>5}  "
                     + "  ".join(f"{fmt_estimate(row['metrics'][m]):<26}" for m in METRICS))
    for entry in summary["comparisons"]:
        c = entry[PRIMARY]
        lines.append(f"{entry['a']} vs {entry['b']}: {c['n']} shared pairs, W/T/L {c['wins']}/{c['ties']}/"
                     f"{c['losses']}, CME difference {fmt_diff(c)}, sign test p={c['sign_test_p']:.3g}: "
                     f"{verdict_text(entry)}")
    lines += [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(summary: dict[str, Any]) -> str:
    """Leaderboard, per-category CME and comparisons as markdown tables (for papers and READMEs)."""
    level = round(summary["settings"]["level"] * 100)
    out = ["| # | model | pairs | errors | parse failures | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |",
           "|---|---|---:|---:|---:|" + "---|" * len(METRICS)]
    for i, row in enumerate(summary["leaderboard"], start=1):
        out.append(f"| {i} | {_md_cell(row['name'])} | {row['pairs']} | {row['errors']} | "
                   f"{row['parse_failures']['any']} | "
                   + " | ".join(fmt_estimate(row["metrics"][m]) for m in METRICS) + " |")
    out += ["", f"Means with {level}% bootstrap intervals ({summary['settings']['resamples']} resamples)."]
    cats = summary["categories"]
    if cats and cats != ["(none)"]:
        out += ["", "CME by edit type (n pairs):", "",
                "| model | " + " | ".join(_md_cell(c) for c in cats) + " |", "|---|" + "---|" * len(cats)]
        for row in summary["leaderboard"]:
            cells = []
            for c in cats:
                est = row["categories"].get(c, {}).get(PRIMARY, {})
                cells.append(f"{est['mean']:.3f} ({est['n']})" if est.get("mean") is not None else "-")
            out.append(f"| {_md_cell(row['name'])} | " + " | ".join(cells) + " |")
    if summary["comparisons"]:
        out += ["", "| A | B | shared pairs | A wins / ties / B wins | CME A - B | sign test p | verdict |",
                "|---|---|---:|---|---|---:|---|"]
        for e in summary["comparisons"]:
            c = e[PRIMARY]
            out.append(f"| {_md_cell(e['a'])} | {_md_cell(e['b'])} | {c['n']} | {c['wins']} / {c['ties']} / "
                       f"{c['losses']} | {fmt_diff(c)} | {c['sign_test_p']:.3g} | {_md_cell(verdict_text(e))} |")
    if summary["warnings"]:
        out += [""] + [f"- warning: {_md_cell(w)}" for w in summary["warnings"]]
    return "\n".join(out) + "\n"
