"""``firm-lite calibrate``: parse options, call :func:`firm_lite.calibration.runner.calibrate`, print.

The critic options are the shared ones without ``--variant``: here ``--variant`` is repeatable
(the variants to calibrate) and ``--reference`` names the variant they are measured against.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from firm_lite.cli import critic_options


@click.command("calibrate")
@critic_options(variant=False, protocol=False)
@click.option("--reference", default="default", show_default=True,
              help="Variant to measure drift against; 'default' = the checkpoint at --dtype "
                   "(fp32 on CPU, bf16 on GPU).")
@click.option("--variant", "variants", multiple=True, metavar="NAME|DIR",
              help="Variant to calibrate: a registered name (bf16, int8, nf4, noisy, ...) or an exported folder. "
                   "Repeatable.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="JSONL edit pairs (optionally with \"labels\": {\"execution\": n, \"consistency\": m}). "
                   "[default: calibration/editset-heldout.jsonl]")
@click.option("--out", type=click.Path(file_okay=False), default="calibration/results", show_default=True,
              help="Folder for calibration.json, report.md, calibration.png and the result caches.")
@click.option("--thresholds", type=click.Path(dir_okay=False), default=None,
              help="TOML limits per variant family. [default: calibration/thresholds.toml]")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where per-item results are cached (default: OUT/cache); share it between runs to reuse them.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Pairs per forward pass.")
@click.option("--worst", "worst_k", type=click.IntRange(min=0), default=5, show_default=True,
              help="How many most-divergent items to list per variant.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Write the verdict into exported variant folders (the drift gate `score` reads).")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Draw calibration.png (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON instead of the table.")
@click.option("--html", is_flag=True, help="Also write OUT/calibration.html: drift tables, confusion matrices and "
                                            "the worst flips with their images (see `firm-lite report`).")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on when stderr is a TTY).")
def calibrate_cmd(as_json: bool, progress: bool | None, html: bool, **kwargs: Any) -> None:
    """Measure how far variants drift from the reference critic, and gate them.

    \b
    Per variant and mode: exact agreement, flip and big-flip rates, MAE of scores and expected
    scores, KL of the score distribution (teacher-forced on the reference's answer), parse
    failures, CME MAE and rank correlation, and MAE against labels where the manifest has them.
    Results are cached per item: an interrupted run continues where it stopped.
    \b
    Exit codes: 0 every variant within thresholds, 1 some variant outside them, 2 usage error.
    \b
    Examples:
      firm-lite calibrate --variant out/nf4 --variant out/gptq-w4
      firm-lite calibrate --model tiny --variant fp32 --variant noisy --manifest pairs.jsonl --out /tmp/cal
    """
    from firm_lite.calibration.report import text_report
    from firm_lite.calibration.runner import calibrate

    if progress is None:
        progress = sys.stderr.isatty()
    settings = kwargs.pop("settings").replace(variant=kwargs.pop("reference"))
    run = calibrate(settings, progress=progress, **kwargs)
    if html:
        from firm_lite.report import write_calibration_page

        page = write_calibration_page(run.out_dir / "calibration.json", run.out_dir / "calibration.html",
                                      manifest=kwargs.get("manifest"))
        click.echo(f"page: {page}", err=True)
    if as_json:
        click.echo(json.dumps(run.result, indent=1, ensure_ascii=False))
    else:
        click.echo(text_report(run.result))
        click.echo(f"report: {run.out_dir / 'report.md'}")
    sys.exit(run.exit_code)
