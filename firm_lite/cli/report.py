"""``firm-lite report``: parse options, call :func:`firm_lite.report.make_report`, print the leaderboard."""

from __future__ import annotations

import json
from typing import Any

import click


@click.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the self-contained HTML page here (leaderboard, comparisons, gallery).")
@click.option("--name", "names", multiple=True,
              help="Name of each score file's model, in order (repeatable; default: the file's stem).")
@click.option("--manifest", "manifests", multiple=True, type=click.Path(dir_okay=False),
              help="Manifest the files were scored from, for images, instructions and edit types ('category' "
                   "field): one for all files, or one per file in order (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's numbers as JSON instead of the table.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write those numbers here.")
@click.option("--markdown", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write a markdown summary (leaderboard, edit types, comparisons) here; '-' prints it.")
@click.option("--title", default=None, help="Page title (default: the model names and the date).")
@click.option("--thumb-px", type=click.IntRange(min=16), default=160, show_default=True,
              help="Long side of the embedded thumbnails.")
@click.option("--view-px", type=click.IntRange(min=0), default=640, show_default=True,
              help="Long side of the larger copy shown on click (0: thumbnails only, a smaller page).")
@click.option("--resamples", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples per interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed (reports are reproducible).")
def report_cmd(files: tuple[str, ...], names: tuple[str, ...], manifests: tuple[str, ...], as_json: bool,
               markdown: str | None, **kwargs: Any) -> None:
    """Compare editing models from their score files, and look at the edits, in one HTML page.

    Each FILE is what `firm-lite score --out` wrote for one editing model. The leaderboard has
    mean execution, consistency and CME with bootstrap 95% intervals, error and parse-failure
    counts, per-edit-type columns, and every two models compared on the pairs they share
    (wins/ties/losses, paired interval of the difference, sign test). A calibration.json given
    alone gets the calibration page (drift tables, confusion matrices, worst flips with images).

    \b
    Examples:
      firm-lite report a.jsonl b.jsonl --manifest pairs.jsonl --out report.html
      firm-lite report a.jsonl b.jsonl --name model-A --name model-B --markdown summary.md
      firm-lite report calibration/results/calibration.json --out calibration.html
    """
    from firm_lite.report import make_report
    from firm_lite.report.summary import markdown_summary, text_table

    run = make_report(list(files), names=list(names), manifests=list(manifests),
                      markdown=None if markdown in (None, "-") else markdown, **kwargs)
    if run.kind == "calibration":
        click.echo(f"wrote {run.written['html']} ({run.sizes['html'] / 1e6:.2f} MB, {run.seconds:.1f} s)")
        return
    if markdown == "-":
        click.echo(markdown_summary(run.summary), nl=False)
    elif as_json:
        click.echo(json.dumps(run.summary, indent=1, ensure_ascii=False))
    else:
        click.echo(text_table(run.summary))
    for kind, path in run.written.items():
        click.echo(f"wrote {kind} {path} ({run.sizes[kind] / 1e6:.2f} MB)", err=True)
    click.echo(f"report made in {run.seconds:.1f} s", err=True)
