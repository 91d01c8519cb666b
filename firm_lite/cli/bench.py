"""``firm-lite bench``: parse options, call :func:`firm_lite.bench.runner.bench`, print the table."""

from __future__ import annotations

from typing import Any

import click

from firm_lite.cli import critic_options


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[int]:
    sizes: list[int] = []
    for v in value:
        for part in v.split(","):
            try:
                n = int(part)
            except ValueError:
                raise click.BadParameter(f"{part!r} is not an integer") from None
            if n < 1:
                raise click.BadParameter("batch sizes must be >= 1")
            sizes.append(n)
    return sizes or [1, 8]


@click.command("bench")
@critic_options(variant=False, protocol=False, model="tiny")
@click.option("--variant", "variants", multiple=True,
              help="Repeatable: fp32, bf16, int8, nf4, an exported folder ... The first one also runs the "
                   "reference-style baseline. Default: the model at --dtype.")
@click.option("--manifest", default="calibration/editset-heldout.jsonl", show_default=True,
              type=click.Path(dir_okay=False), help="Edit pairs to score (JSONL).")
@click.option("--batch-size", "batch_sizes", multiple=True, callback=_batch_sizes,
              help="Batch sizes, repeatable or comma-separated (default 1,8).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N pairs.")
@click.option("--out", default="bench/results", show_default=True, type=click.Path(file_okay=False),
              help="Folder for <name>.json, .md and .png.")
@click.option("--name", default=None, help="File stem for the results (default: bench-<model>-<time>).")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="calibration.json from `firm-lite calibrate` on the same manifest: adds drift columns.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads per worker.")
@click.option("--report", "report_only", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Only re-make the table and plot from a saved results JSON.")
def bench_cmd(variants: tuple[str, ...], report_only: str | None, **kwargs: Any) -> None:
    """Accuracy-vs-speed benchmark: each variant in its own process (clean peak memory), the
    reference-style baseline in the same run, every speed figure also as a ratio to it.

    \b
    Example (CPU, tiny critic):
      firm-lite bench --model tiny --variant fp32 --variant bf16 --batch-size 1,8
    """
    if report_only:
        from firm_lite.bench.report import write_views

        md, png = write_views(report_only)
        click.echo(md.read_text())
        click.echo(f"wrote {md}" + (f" and {png}" if png else ""), err=True)
        return
    from firm_lite.bench.runner import bench

    results = bench(variants=list(variants) or ["default"], progress=True, **kwargs)
    click.echo(open(results["paths"]["markdown"], encoding="utf-8").read())
    written = [p for p in (results["paths"]["json"], results["paths"]["markdown"], results["paths"]["plot"]) if p]
    click.echo(f"wrote {', '.join(written)}", err=True)
