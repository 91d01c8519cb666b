"""The report page: one self-contained HTML file made from the summary and the model runs.

The leaderboard, per-category and comparison tables are plain HTML written here (readable with
scripts off, and by the markdown-minded). The gallery is drawn in the browser by
``assets/gallery.js`` from a JSON block in the page, one page of pairs at a time, so a report of
thousands of pairs opens quickly and only the visible thumbnails are decoded.

Every string from a score file or manifest (instructions, reasonings, ids, names, paths, errors)
is untrusted: here it goes through :func:`html.escape`; in the gallery it is set as text, never
as markup; and the JSON block is escaped so no ``</script>`` can end it. The page's Content
Security Policy allows only its own script (by hash) and ``data:`` images, so even a mistake
cannot run injected code or make the page fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
from html import escape
from importlib import resources
from typing import Any

from firm_lite.report.load import ModelRun
from firm_lite.report.stats import spread
from firm_lite.report.summary import METRIC_LABELS, METRICS, MODES, PRIMARY, fmt_diff, fmt_estimate, verdict_text
from firm_lite.report.thumbs import ImageStore


def asset(name: str) -> str:
    return resources.files("firm_lite.report").joinpath("assets", name).read_text("utf-8")


def json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` escaped."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def document(title: str, body: str, script: str = "", data: Any = None) -> str:
    """A whole page: CSP, the shared stylesheet, ``body``, the data block and ``script``."""
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {_hash(script)}; "
           "base-uri 'none'; form-action 'none'")
    data_block = (f'<script id="report-data" type="application/json">{json_for_script(data)}</script>'
                  if data is not None else "")
    script_block = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{asset('report.css')}</style></head>"
            f"<body>{body}{data_block}{script_block}</body></html>\n")


def _ci_bar(est: dict[str, Any], lo: float, hi: float) -> str:
    """A small horizontal bar: the interval as a band, the mean as a tick (scale lo..hi)."""
    if est.get("mean") is None:
        return ""
    def pct(v: float) -> float:
        return max(0.0, min(100.0, 100.0 * (v - lo) / (hi - lo)))
    return (f'<span class="ci" title="{lo:g} to {hi:g}"><span class="band" style="left:{pct(est["low"]):.1f}%;'
            f'width:{max(0.5, pct(est["high"]) - pct(est["low"])):.1f}%"></span>'
            f'<span class="tick" style="left:{pct(est["mean"]):.1f}%"></span></span>')


def _scale(metric: str) -> tuple[float, float]:
    return (1.0, 5.0) if metric in MODES else (0.0, 1.0)


def leaderboard_html(summary: dict[str, Any]) -> str:
    level = round(summary["settings"]["level"] * 100)
    head = "".join(f"<th>{escape(METRIC_LABELS[m])}<br><small>mean [{level}% CI]</small></th>" for m in METRICS)
    rows = []
    for i, row in enumerate(summary["leaderboard"], start=1):
        cells = "".join(
            f'<td class="num" data-metric="{m}">{fmt_estimate(row["metrics"][m])}'
            f'{_ci_bar(row["metrics"][m], *_scale(m))}<small class="n">n={row["metrics"][m]["n"]}</small></td>'
            for m in METRICS)
        rows.append(f'<tr data-model="{escape(row["name"])}"><td class="num">{i}</td>'
                    f'<td class="model">{escape(row["name"])}<br><small>{escape(row["provenance_text"])}</small></td>'
                    f'<td class="num" data-metric="pairs">{row["pairs"]}</td>'
                    f'<td class="num" data-metric="errors">{row["errors"]}</td>'
                    f'<td class="num" data-metric="parse_failures">{row["parse_failures"]["any"]}</td>{cells}</tr>')
    return (f'<div class="scroll"><table id="leaderboard"><thead><tr><th>#</th><th>model (score file)</th>'
            f'<th>pairs</th><th>error rows</th><th>parse failures</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def categories_html(summary: dict[str, Any]) -> str:
    cats = summary["categories"]
    if not cats or cats == ["(none)"]:
        return ('<p class="note">No edit types: give the manifest (<code>--manifest</code>) and a '
                '<code>category</code> field per pair to see per-category columns.</p>')
    head = "".join(f"<th>{escape(c)}</th>" for c in cats)
    rows = []
    for row in summary["leaderboard"]:
        cells = []
        for c in cats:
            est = row["categories"].get(c, {}).get(PRIMARY, {})
            text = (f'{est["mean"]:.3f}<br><small>[{est["low"]:.2f}, {est["high"]:.2f}]<br>n={est["n"]}</small>'
                    if est.get("mean") is not None else "-")
            cells.append(f'<td class="num" data-category="{escape(c)}">{text}</td>')
        rows.append(f'<tr data-model="{escape(row["name"])}"><td class="model">{escape(row["name"])}</td>'
                    f'{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="categories"><caption>CME by edit type: mean, [95% CI] and pairs'
            f'</caption><thead><tr><th>model</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def comparisons_html(summary: dict[str, Any]) -> str:
    if not summary["comparisons"]:
        return '<p class="note">One model: give two or more score files to compare them pair by pair.</p>'
    rows = []
    for e in summary["comparisons"]:
        c = e[PRIMARY]
        flag = "same" if not c["distinguishable"] else "differ"
        extra = "; ".join(f"{m}: {fmt_diff(e[m], 2)}" for m in METRICS if m != PRIMARY)
        rows.append(f'<tr class="{flag}"><td>{escape(e["a"])}</td><td>{escape(e["b"])}</td>'
                    f'<td class="num">{c["n"]}</td><td class="num">{c["wins"]} / {c["ties"]} / {c["losses"]}</td>'
                    f'<td class="num">{fmt_diff(c)}<br><small>{escape(extra)}</small></td>'
                    f'<td class="num">{c["sign_test_p"]:.3g}</td>'
                    f'<td class="verdict">{escape(verdict_text(e))}</td></tr>')
    return ('<table id="comparisons"><thead><tr><th>A</th><th>B</th><th>shared pairs</th>'
            '<th>A wins / ties / B wins (CME)</th><th>mean difference A - B [95% paired bootstrap CI]</th>'
            '<th>sign test p</th><th>verdict</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _mode(side: Any) -> dict[str, Any] | None:
    if not isinstance(side, dict):
        return None
    probs = side.get("probs")
    expected = side.get("expected")
    out = {"s": side.get("score") if isinstance(side.get("score"), int) else None,
           "e": round(float(expected), 3) if isinstance(expected, (int, float)) else None,
           "p": [round(float(p), 3) for p in probs] if isinstance(probs, list) and len(probs) == 5 else None,
           "r": side.get("reasoning") if isinstance(side.get("reasoning"), str) else None,
           "ok": side.get("parse_ok") is not False}
    if not out["ok"]:
        out["raw"] = str(side.get("raw") or "")[:2000]
    return out


def _num(value: Any) -> float | None:
    return round(float(value), 4) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def gallery_data(runs: list[ModelRun], store: ImageStore) -> dict[str, Any]:
    """The compact JSON the gallery script draws: pairs x models, images by index into a table."""
    ids: dict[str, None] = {}
    for run in runs:
        ids.update(dict.fromkeys(run.records))
    store.add_all([path for pair_id in ids for run in runs if pair_id in run.records
                   for path in (run.info(pair_id).source, run.info(pair_id).edited)])
    pairs = []
    for pair_id in ids:
        infos = [run.info(pair_id) if pair_id in run.records else None for run in runs]
        first = next((i for i in infos if i is not None and i.instruction is not None), None)
        source = next((i.source for i in infos if i is not None and i.source is not None), None)
        entries = []
        for run, info in zip(runs, infos, strict=True):
            rec = run.records.get(pair_id)
            if rec is None:
                entries.append(None)
                continue
            entry = {"ed": store.add(info.edited), "x": _mode(rec.get("execution")), "c": _mode(rec.get("consistency")),
                     "cme": _num(rec.get("cme")), "cmee": _num(rec.get("cme_expected")),
                     "err": str(rec["error"]) if rec.get("error") is not None else None}
            if info.instruction is not None and first is not None and info.instruction != first.instruction:
                entry["ins"] = info.instruction
            entries.append(entry)
        pairs.append({"id": pair_id, "cat": next((i.category for i in infos if i and i.category), None),
                      "ins": first.instruction if first else None, "src": store.add(source), "m": entries,
                      "dis": _num(spread([e["cme"] for e in entries if e is not None]))})
    return {"models": [run.name for run in runs], "pairs": pairs, "images": store.images}


def gallery_html(n_models: int) -> str:
    disagree = '<option value="dis">disagreement (largest first)</option>' if n_models > 1 else ""
    return f"""<div id="controls">
<label>sort <select id="sort"><option value="id">id</option><option value="cme-asc">CME (lowest first)</option>
<option value="cme-desc">CME (highest first)</option><option value="x-asc">execution (lowest first)</option>
<option value="c-asc">consistency (lowest first)</option>{disagree}</select></label>
<label>by model <select id="sort-model"></select></label>
<label>edit type <select id="category"><option value="">all</option></select></label>
<label><input type="checkbox" id="only-parse"> parse failures</label>
<label><input type="checkbox" id="only-errors"> error rows</label>
<label><input type="checkbox" id="only-missing"> missing images</label>
<label>search <input type="search" id="search" placeholder="id, instruction or reasoning"></label>
<label>per page <select id="page-size"><option>10</option><option selected>25</option><option>50</option>
<option>100</option></select></label></div>
<div class="pager"><button id="prev" type="button">&larr; previous</button> <span id="page-info"></span>
<button id="next" type="button">next &rarr;</button></div>
<div id="gallery"></div>
<div class="pager"><span id="shown-count"></span></div>
<div id="lightbox" hidden><img id="lightbox-img" alt=""><p id="lightbox-caption"></p></div>"""
