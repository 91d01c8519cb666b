"""``firm_lite.report.make_report``: what ``firm-lite report`` does, as a function.

Reads the score files (one per editing model) and their manifests, computes the summary
(:mod:`.summary`), and writes any of: the self-contained HTML page (:mod:`.page`), the same
numbers as JSON, and a markdown summary. A calibration result (``calibration.json``) given on its
own gets the calibration page instead (:mod:`.calibration_page`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from firm_lite.errors import UserError
from firm_lite.report.load import PairInfo, ScoreFile, read_pair_info, read_score_file, score_file_from_records
from firm_lite.report.stats import LEVEL, RESAMPLES, SEED
from firm_lite.report.thumbs import THUMB_PX, VIEW_PX, ImageStore

MAX_LISTED_BAD_LINES = 50


@dataclass
class ReportRun:
    """A finished report: its numbers and what was written (paths, bytes, seconds)."""

    summary: dict[str, Any]
    written: dict[str, Path] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    kind: str = "scores"


def is_calibration_result(path: str | Path) -> bool:
    """True when ``path`` is a ``calibration.json`` (a JSON object with variants and a reference)."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        obj = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(obj, dict) and "variants" in obj and "reference" in obj


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def load_inputs(files: list[str | Path], names: list[str] | None = None,
                manifests: list[str | Path] | None = None) -> list[ScoreFile]:
    """Read the score files and attach each one's manifest (one for all, or one per file)."""
    names = list(names or [])
    manifests = list(manifests or [])
    if not files:
        raise UserError("nothing to report: give one or more score files (JSONL written by `firm-lite score --out`)")
    if len(names) > len(files):
        raise UserError(f"{len(names)} --name for {len(files)} score file(s): give at most one --name per file")
    if len(manifests) not in (0, 1, len(files)):
        raise UserError(f"{len(manifests)} --manifest for {len(files)} score files: give one for all of them, "
                        "or one per file in the same order")
    labels = _unique([names[i] if i < len(names) else Path(f).stem for i, f in enumerate(files)])
    read = [read_score_file(f, label) for f, label in zip(files, labels, strict=True)]
    info_cache: dict[str, Any] = {}
    for i, score_file in enumerate(read):
        if not manifests:
            continue
        manifest = str(manifests[0] if len(manifests) == 1 else manifests[i])
        if manifest not in info_cache:
            info_cache[manifest] = read_pair_info(manifest)
        for run in score_file.runs:
            run.pairs = info_cache[manifest]
    return read


def _inputs_html(summary: dict[str, Any]) -> str:
    items = []
    for inp in summary["inputs"]:
        bad = inp["bad_lines"]
        listed = "".join(f"<li>{escape(b)}</li>" for b in bad[:MAX_LISTED_BAD_LINES])
        more = f"<li>... and {len(bad) - MAX_LISTED_BAD_LINES} more</li>" if len(bad) > MAX_LISTED_BAD_LINES else ""
        items.append(f"<li><code>{escape(inp['path'])}</code> as <b>{escape(inp['name'])}</b>: {inp['lines']} lines, "
                     f"{len(bad)} unusable, {inp['superseded_lines']} superseded by a later line for the same id"
                     + (f"<ul>{listed}{more}</ul>" if bad else "") + "</li>")
    return f"<ul>{''.join(items)}</ul>"


def score_page(summary: dict[str, Any], files: list[ScoreFile], store: ImageStore, title: str) -> str:
    from firm_lite.report.page import (
        asset,
        categories_html,
        comparisons_html,
        document,
        gallery_data,
        gallery_html,
        leaderboard_html,
    )

    runs = [run for f in files for run in f.runs]
    order = {row["name"]: i for i, row in enumerate(summary["leaderboard"])}
    runs.sort(key=lambda r: order[r.name])
    data = gallery_data(runs, store)
    summary["images"] = {"embedded": len(store.images), "missing": len(store.missing),
                         "missing_examples": [f"{p}: {why}" for p, why in list(store.missing.items())[:20]]}
    warnings = summary["warnings"]
    if store.missing:
        first = next(iter(store.missing.items()))
        warnings.append(f"{len(store.missing)} image(s) could not be shown (placeholders), "
                        f"first: {first[0]}: {first[1]}")
    level = round(summary["settings"]["level"] * 100)
    warn_html = ("<section id=\"warnings\"><h2>Warnings</h2><ul>" + "".join(f"<li>{escape(w)}</li>" for w in warnings)
                 + "</ul></section>") if warnings else ""
    body = (f"<header><h1>{escape(title)}</h1><p class=\"meta\">{len(runs)} model(s), {len(data['pairs'])} pairs, "
            f"{len(store.images)} images embedded; made {escape(summary['created'])} by firm-lite "
            f"{escape(summary['firm_lite'])}</p></header>{warn_html}"
            f"<section><h2>Leaderboard</h2>{leaderboard_html(summary)}"
            f"<p class=\"note\">Ranked by mean CME. Intervals: {level}% percentile bootstrap over pairs "
            f"({summary['settings']['resamples']} resamples, seed {summary['settings']['seed']}). Error rows and "
            "unparsed answers have no score and are counted, not averaged.</p></section>"
            f"<section><h2>By edit type</h2>{categories_html(summary)}</section>"
            f"<section><h2>Model against model</h2>{comparisons_html(summary)}"
            "<p class=\"note\">On the pairs both models were scored on. Two models are <em>distinguishable</em> when "
            "the paired bootstrap interval of the mean CME difference excludes 0.</p></section>"
            f"<section><h2>Gallery</h2>{gallery_html(len(runs))}</section>"
            f"<section><h2>Inputs</h2>{_inputs_html(summary)}</section>")
    return document(title, body, asset("gallery.js"), data)


def make_report(files: list[str | Path], *, names: list[str] | None = None,
                manifests: list[str | Path] | None = None, out: str | Path | None = None,
                json_out: str | Path | None = None, markdown: str | Path | None = None, title: str | None = None,
                thumb_px: int = THUMB_PX, view_px: int = VIEW_PX, resamples: int = RESAMPLES,
                level: float = LEVEL, seed: int = SEED) -> ReportRun:
    """Compare editing models from their score files and write the page/JSON/markdown asked for.

    ``names``: one per file (default: the file's stem); ``manifests``: one for all files or one per
    file, for images, instructions and edit types; ``thumb_px``/``view_px``: embedded image sizes.
    """
    start = time.perf_counter()
    if not 0 < level < 1 or resamples < 100 or thumb_px < 16 or view_px < 0:
        raise UserError("need 0 < --level < 1, --resamples >= 100, --thumb-px >= 16 and --view-px >= 0")
    if len(files) == 1 and is_calibration_result(files[0]):
        from firm_lite.report.calibration_page import write_calibration_page

        if json_out or markdown or names:
            raise UserError("a calibration result gets a page only: drop --json-out/--markdown/--name "
                            "(calibration.json and report.md already hold its numbers)")
        target = Path(out) if out else Path(files[0]).with_name("calibration.html")
        path = write_calibration_page(files[0], target, manifest=manifests[0] if manifests else None,
                                      thumb_px=thumb_px, view_px=view_px)
        return ReportRun({}, {"html": path}, {"html": path.stat().st_size}, time.perf_counter() - start, "calibration")
    check_targets(out, json_out, markdown)
    loaded = load_inputs(files, names, manifests)
    return write_outputs(loaded, out=out, json_out=json_out, markdown=markdown, title=title, thumb_px=thumb_px,
                         view_px=view_px, resamples=resamples, level=level, seed=seed, start=start)


def check_targets(*targets: str | Path | None) -> None:
    """Fail before any work when an output path is a folder (e.g. before a scoring run)."""
    for target in targets:
        if target is not None and Path(target).is_dir():
            raise UserError(f"{target}: is a folder; give a file path to write")


def write_outputs(loaded: list[ScoreFile], *, out: str | Path | None = None, json_out: str | Path | None = None,
                  markdown: str | Path | None = None, title: str | None = None, thumb_px: int = THUMB_PX,
                  view_px: int = VIEW_PX, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED,
                  start: float | None = None) -> ReportRun:
    """Summarize loaded score files and write the outputs asked for."""
    from firm_lite.report.summary import markdown_summary, summarize

    start = time.perf_counter() if start is None else start
    summary = summarize(loaded, resamples=resamples, level=level, seed=seed)
    run = ReportRun(summary)
    if out is not None:
        store = ImageStore(thumb_px=thumb_px, view_px=view_px)
        run.written["html"] = _write(out, score_page(summary, loaded, store, title or _default_title(loaded)))
    if json_out is not None:
        run.written["json"] = _write(json_out, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    if markdown is not None:
        run.written["markdown"] = _write(markdown, markdown_summary(summary))
    run.sizes = {k: p.stat().st_size for k, p in run.written.items()}
    run.seconds = time.perf_counter() - start
    return run


def score_run_page(records: list[dict[str, Any]], html: str | Path, *, out: str | Path | None = None,
                   manifest: str | Path | None = None, source: str | Path | None = None,
                   edited: str | Path | None = None, instruction: str | None = None, pair_id: str = "pair",
                   demo: bool = False, **_: Any) -> ReportRun:
    """The page of one ``firm-lite score`` run (``--html``): the whole ``out`` file when there is one
    (resumed records included), else this run's ``records``; images from the manifest, the single
    pair's paths, or the demo pair. Other keyword arguments (the rest of ``score``'s) are ignored."""
    from firm_lite.data import demo_pair

    if out is not None and Path(out).is_file():
        return make_report([out], manifests=[manifest] if manifest else None, out=html)
    loaded = [score_file_from_records(records, "scores")]
    if manifest is not None:
        pairs = read_pair_info(manifest)
    elif demo:
        pair = demo_pair()
        pairs = {pair.id: PairInfo(pair.instruction, None, Path(pair.source), Path(pair.edited))}
    else:
        pairs = {pair_id: PairInfo(instruction, None, Path(source) if source else None,
                                   Path(edited) if edited else None)}
    for run in loaded[0].runs:
        run.pairs = pairs
    return write_outputs(loaded, out=html)


def _default_title(files: list[ScoreFile]) -> str:
    names = [run.name for f in files for run in f.runs]
    return "firm-lite report: " + (" vs ".join(names) if len(names) <= 4 else f"{len(names)} models") + \
        f" ({datetime.now(UTC):%Y-%m-%d})"


def _write(path: str | Path, text: str) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, "utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write there ({exc.strerror or exc}); pick a writable file path") from None
    return path
