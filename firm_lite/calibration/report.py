"""Human-readable views of saved calibration results: the stdout table and the markdown report.

Both read only the results JSON (``calibration.json``), never in-memory state, so a report can
be regenerated from a saved run: ``write_report(json.load(open(".../calibration.json")), dir)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from firm_lite.prompts import MODES

_COLUMNS = (("n", "n_paired", "d"), ("exact", "exact_agreement", ".3f"), ("flip", "flip_rate", ".3f"),
            ("bigflip", "big_flip_rate", ".3f"), ("MAE", "mae_score", ".3f"), ("MAE(E)", "mae_expected", ".3f"),
            ("KLmean", "kl_mean", ".3g"), ("KLp95", "kl_p95", ".3g"), ("parsefail", "parse_failure_rate", ".3f"))


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _label_cell(labels: dict[str, Any] | None) -> str:
    if not labels:
        return "-"
    return f"{labels['reference']:.2f}->{labels['variant']:.2f}"


def mode_rows(variant: dict[str, Any]) -> list[list[str]]:
    """Header + one row per mode of a variant's metrics table."""
    rows = [["mode", *(c[0] for c in _COLUMNS), "labelMAE ref->var"]]
    for m in MODES:
        met = variant["metrics"][m]
        rows.append([m, *(_fmt(met[key], spec) for _, key, spec in _COLUMNS),
                     _label_cell(variant["metrics"]["labels"].get(m))])
    return rows


def cme_line(variant: dict[str, Any]) -> str:
    c = variant["metrics"]["cme"]
    return (f"CME: MAE {_fmt(c['cme_mae'], '.4f')}  MAE(E) {_fmt(c['cme_expected_mae'], '.4f')}  "
            f"Spearman {_fmt(c['cme_spearman'], '.3f')}  Kendall {_fmt(c['cme_kendall'], '.3f')}  "
            f"(expected-score CME: Spearman {_fmt(c['cme_expected_spearman'], '.3f')}, "
            f"Kendall {_fmt(c['cme_expected_kendall'], '.3f')})")


def verdict_line(variant: dict[str, Any]) -> str:
    name = f"{variant['variant']} [{variant['thresholds_table']}]"
    if variant["passed"]:
        return f"PASS {name}: {len(variant['checks'])} checks within thresholds"
    return f"FAIL {name}: " + "; ".join(variant["failures"])


def _score_pair(side: dict[str, Any] | None) -> str:
    if side is None:
        return "error"
    return "FAIL" if side["score"] is None else str(side["score"])


def worst_line(item: dict[str, Any]) -> str:
    parts = [f"{m[:4]} {_score_pair(item[m]['reference'])}->{_score_pair(item[m]['variant'])}"
             f" (KL {_fmt(item[m]['kl'], '.3g')})" for m in MODES]
    cme = item["cme"]
    cme_change = f"CME {_fmt(cme['reference'], '.3f')}->{_fmt(cme['variant'], '.3f')}"
    return f"{item['id']}: " + ", ".join(parts) + ", " + cme_change


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]


def text_report(result: dict[str, Any]) -> str:
    """The table printed by ``firm-lite calibrate``: per variant and mode, CME, worst items, verdict."""
    ref = result["reference"]
    man = result["manifest"]
    lines = [f"reference {ref['label']} | manifest {man['path']} ({man['pairs']} pairs, {man['labelled']} labelled)"
             f" | teacher-forcing gap {_fmt(ref['teacher_forcing_gap'], '.2e')}"]
    for v in result["variants"]:
        lines += ["", f"== {v['variant']} (family {v['family']}) vs {ref['label']}"]
        lines += _table(mode_rows(v))
        lines.append(cme_line(v))
        if v["worst"]:
            lines.append("worst items:")
            lines += [f"  {worst_line(w)}" for w in v["worst"]]
        lines.append(verdict_line(v))
    lines += ["", result["verdict"]]
    return "\n".join(lines)


def _md_table(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] + \
           ["| " + " | ".join(r) + " |" for r in rows[1:]]


def _md_answer(side: dict[str, Any] | None) -> str:
    if side is None:
        return "_error_"
    return f"score {_score_pair(side)}: {(side.get('reasoning') or side.get('raw') or '').strip()[:300]!r}"


def markdown_report(result: dict[str, Any], png_name: str | None = None) -> str:
    ref = result["reference"]
    man = result["manifest"]
    out = ["# firm-lite calibration", "", f"**{result['verdict']}**", "",
           f"- reference: `{ref['label']}` (model `{result['provenance']['model_id']}`, "
           f"revision `{result['provenance']['model_revision']}`)",
           f"- manifest: `{man['path']}`: {man['pairs']} pairs, {man['labelled']} labelled, "
           f"{len(man['skipped_rows'])} unusable rows; sha256 `{man['sha256'][:16]}`",
           f"- thresholds: `{result['thresholds']['path']}` (sha256 `{result['thresholds']['sha256'][:16]}`)",
           f"- image budget {result['provenance']['image_budget']}, decoding {result['provenance']['decoding']}, "
           f"device {result['provenance']['device']}, created {result['created']}",
           f"- teacher-forcing gap on the reference (max |P_gen - P_forced|): "
           f"{_fmt(ref['teacher_forcing_gap'], '.2e')}", ""]
    if png_name:
        out += [f"![confusion matrices and expected-score scatter]({png_name})", ""]
    for v in result["variants"]:
        out += [f"## {v['variant']} (family `{v['family']}`, thresholds `[{v['thresholds_table']}]`)", "",
                f"**{verdict_line(v)}**", ""]
        out += _md_table(mode_rows(v))
        out += ["", cme_line(v), "", "| check | mode | value | bound | ok |", "|---|---|---|---|---|"]
        out += [f"| {c['limit']} | {c['mode'] or '-'} | {_fmt(c['value'], '.4g')} | {c['bound']:.4g} | "
                f"{'yes' if c['ok'] else '**NO**'}{(' ' + c['note']) if c['note'] else ''} |" for c in v["checks"]]
        out += ["", "### Worst items", ""]
        if not v["worst"]:
            out.append("No item differs from the reference.")
        for w in v["worst"]:
            out += [f"- **{w['id']}**: {worst_line(w)}"]
            for m in MODES:
                out += [f"  - {m} reference: {_md_answer(w[m]['reference'])}",
                        f"  - {m} variant: {_md_answer(w[m]['variant'])}"]
        out.append("")
    return "\n".join(out)


def write_report(result: dict[str, Any], out_dir: str | Path, png_name: str | None = None) -> Path:
    path = Path(out_dir) / "report.md"
    path.write_text(markdown_report(result, png_name), "utf-8")
    return path
