"""A calibration result as a page: per variant the drift table, the threshold checks, both
confusion matrices, and the worst flips with their images and both answers side by side.

It is drawn from the saved ``calibration.json`` only (like ``report.md``), plus the manifest it
names for the images; a manifest or image that cannot be found becomes a placeholder and a note.
Same rules as the score report: self-contained, every string escaped, scripts only by hash. Each
image is embedded once, in the page's JSON block, however often the page shows it.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from firm_lite.calibration.report import cme_line, mode_rows, verdict_line
from firm_lite.errors import UserError
from firm_lite.prompts import MODES
from firm_lite.report.load import PairInfo, read_pair_info
from firm_lite.report.thumbs import THUMB_PX, VIEW_PX, ImageStore

MAX_FLIPS = 200


def _find_manifest(recorded: str, results: Path, given: str | Path | None) -> Path | None:
    if given is not None:
        return Path(given)
    candidates = [Path(recorded), results.parent / recorded, results.parent.parent / recorded,
                  results.parent.parent.parent / recorded]
    return next((c for c in candidates if c.is_file()), None)


def _img(store: ImageStore, path: Path | None, caption: str) -> str:
    index = store.add(path)
    if index is None or index < 0:
        text = "image missing" if index == -1 else "no manifest: no image"
        return (f'<figure><div class="placeholder missing">{text}</div>'
                f"<figcaption>{escape(caption)}</figcaption></figure>")
    return (f'<figure><img data-img="{index}" alt="{escape(caption)}" title="click for full size">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _table(rows: list[list[str]], table_id: str = "") -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f'<td class="{"num" if i else ""}">{escape(c)}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows[1:])
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def confusion_html(matrix: list[list[int]], mode: str) -> str:
    """5x5 counts (row: reference score, column: variant score) shaded by count; the diagonal is agreement."""
    peak = max((max(r) for r in matrix), default=0) or 1
    rows = []
    for i, row in enumerate(matrix):
        cells = []
        for j, count in enumerate(row):
            alpha = 0.08 + 0.8 * count / peak if count else 0
            colour = "47,111,223" if i == j else "179,38,30"
            style = f' style="background:rgba({colour},{alpha:.2f})"' if count else ""
            cells.append(f"<td{style}>{count or ''}</td>")
        rows.append(f"<tr><th>{i + 1}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{j + 1}</th>" for j in range(len(matrix[0]) if matrix else 5))
    return (f'<table class="confusion" data-mode="{mode}"><caption>{mode}: reference (rows) vs variant (columns)'
            f"</caption><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _answer(side: dict[str, Any] | None) -> str:
    if side is None:
        return '<div class="error">error (no answer)</div>'
    score = "no score" if side.get("score") is None else side["score"]
    value = side.get("expected")
    expected = f' <span class="expected">E {value:.2f}</span>' if isinstance(value, (int, float)) else ""
    text = side.get("reasoning") if side.get("parse_ok", True) else side.get("raw")
    badge = "" if side.get("parse_ok", True) else '<span class="badge">answer not parseable</span> '
    return (f'<div><span class="score">{escape(str(score))}</span>{expected}</div>'
            f'<div class="reasoning">{badge}{escape(str(text or ""))}</div>')


def _worst_html(item: dict[str, Any], info: PairInfo, store: ImageStore) -> str:
    cells = ['<div class="h">mode</div><div class="h">reference</div><div class="h">variant</div>']
    for m in MODES:
        kl = item[m].get("kl")
        label = escape(m) + (f"<br><small>KL {kl:.3g}</small>" if isinstance(kl, (int, float)) else "")
        cells.append(f"<div>{label}</div><div>{_answer(item[m]['reference'])}</div>"
                     f"<div>{_answer(item[m]['variant'])}</div>")
    cme = item.get("cme", {})
    cme_text = " -> ".join("-" if cme.get(k) is None else f"{cme[k]:.3f}" for k in ("reference", "variant"))
    return (f'<div class="worst" data-id="{escape(item["id"])}"><header>'
            f'<span class="pair-id">{escape(item["id"])}</span>'
            f' <span class="chip">{escape(info.category or "")}</span> CME {cme_text}</header>'
            f'<p class="instruction">{escape(info.instruction or "(instruction not known)")}</p>'
            f'<div class="row">{_img(store, info.source, "source")}{_img(store, info.edited, "edited")}'
            f'<div class="answers">{"".join(cells)}</div></div></div>')


def _flips_html(variant: dict[str, Any], pairs: dict[str, PairInfo], store: ImageStore) -> str:
    flips = [row for row in variant.get("items", [])
             if any(row[m]["score"][0] != row[m]["score"][1] for m in MODES)]
    if not flips:
        return '<p class="note">No score differs from the reference.</p>'
    rows = []
    for row in flips[:MAX_FLIPS]:
        info = pairs.get(row["id"], PairInfo())
        scores = "".join(f'<td class="num">{escape(str(row[m]["score"][0]))} &rarr; {escape(str(row[m]["score"][1]))}'
                         "</td>" for m in MODES)
        rows.append(f'<tr><td>{_img(store, info.edited, row["id"])}</td><td>{escape(info.instruction or "")}'
                    f'<br><small>{escape(info.category or "")}</small></td>{scores}</tr>')
    more = f"<p class=\"note\">{len(flips) - MAX_FLIPS} more not shown.</p>" if len(flips) > MAX_FLIPS else ""
    return (f"<table><thead><tr><th>edited</th><th>instruction</th><th>execution ref &rarr; var</th>"
            f"<th>consistency ref &rarr; var</th></tr></thead><tbody>{''.join(rows)}</tbody></table>{more}")


def _variant_html(v: dict[str, Any], pairs: dict[str, PairInfo], store: ImageStore) -> str:
    status = "pass" if v["passed"] else "fail"
    checks = [["check", "mode", "value", "bound", "ok"]] + [
        [c["limit"], c["mode"] or "-", "-" if c["value"] is None else f"{c['value']:.4g}", f"{c['bound']:.4g}",
         ("yes" if c["ok"] else "NO") + (f" {c['note']}" if c.get("note") else "")] for c in v["checks"]]
    worst = "".join(_worst_html(w, pairs.get(w["id"], PairInfo()), store) for w in v["worst"]) or \
        '<p class="note">No item differs from the reference.</p>'
    confusion = "".join(confusion_html(v["metrics"][m]["confusion"], m)
                        for m in MODES if v["metrics"][m].get("confusion"))
    return (f'<section class="variant" data-variant="{escape(v["variant"])}"><h2>{escape(v["variant"])} '
            f'<small>family {escape(str(v["family"]))}, thresholds [{escape(str(v["thresholds_table"]))}]</small></h2>'
            f'<p class="{status}">{escape(verdict_line(v))}</p>{_table(mode_rows(v))}<p>{escape(cme_line(v))}</p>'
            f'<div class="row">{confusion}</div><details><summary>threshold checks</summary>{_table(checks)}</details>'
            f"<h3>Worst items</h3>{worst}<details><summary>every flipped item</summary>"
            f"{_flips_html(v, pairs, store)}</details></section>")


def calibration_html(result: dict[str, Any], pairs: dict[str, PairInfo], store: ImageStore,
                     manifest_note: str = "") -> str:
    from firm_lite.report.page import asset, document

    ref, man, prov = result["reference"], result["manifest"], result["provenance"]
    status = "pass" if result["passed"] else "fail"
    summary_rows = [["variant", "family", "verdict", "exec exact", "cons exact", "CME MAE", "CME Spearman"]]
    for v in result["variants"]:
        met = v["metrics"]
        summary_rows.append([v["variant"], str(v["family"]), "PASS" if v["passed"] else "FAIL"] + [
            "-" if x is None else f"{x:.3f}" for x in (met["execution"]["exact_agreement"],
                                                       met["consistency"]["exact_agreement"],
                                                       met["cme"]["cme_mae"], met["cme"]["cme_spearman"])])
    body = (f"<header><h1>firm-lite calibration</h1><p class=\"{status}\">{escape(result['verdict'])}</p>"
            f"<p class=\"meta\">reference <b>{escape(ref['label'])}</b> of {escape(str(prov.get('model_id')))} "
            f"(revision {escape(str(prov.get('model_revision')))}); manifest <code>{escape(man['path'])}</code>: "
            f"{man['pairs']} pairs, {man['labelled']} labelled; "
            f"image budget {escape(json.dumps(prov.get('image_budget')))}; "
            f"device {escape(str(prov.get('device')))}; created {escape(str(result.get('created')))}</p>"
            f"{manifest_note}</header><section><h2>Variants</h2>{_table(summary_rows, 'variants')}</section>"
            + "".join(_variant_html(v, pairs, store) for v in result["variants"])
            + '<div id="lightbox" hidden><img id="lightbox-img" alt=""><p id="lightbox-caption"></p></div>')
    return document("firm-lite calibration: " + result["verdict"], body, asset("lightbox.js"), {"images": store.images})


def write_calibration_page(results: str | Path, out: str | Path, manifest: str | Path | None = None,
                           thumb_px: int = THUMB_PX, view_px: int = VIEW_PX) -> Path:
    """Write the page of a saved ``calibration.json`` to ``out``; returns ``out``."""
    results = Path(results)
    try:
        result = json.loads(results.read_text("utf-8"))
        result["variants"], result["reference"], result["manifest"]  # noqa: B018 - the shape this page needs
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{results}: not a readable calibration result ({exc}); give the calibration.json that "
                        "`firm-lite calibrate` wrote") from None
    found = _find_manifest(result["manifest"]["path"], results, manifest)
    pairs: dict[str, PairInfo] = read_pair_info(found) if found else {}
    note = "" if found else (f"<p class=\"note\">Manifest {escape(result['manifest']['path'])} not found: no images. "
                             "Give it with <code>--manifest</code>.</p>")
    html = calibration_html(result, pairs, ImageStore(thumb_px=thumb_px, view_px=view_px), note)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, "utf-8")
    except OSError as exc:
        raise UserError(f"{out}: cannot write there ({exc.strerror or exc}); pick a writable file path") from None
    return out
