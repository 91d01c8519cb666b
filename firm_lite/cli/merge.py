"""``firm-lite merge``: parse options, call :func:`firm_lite.merge.merge_results`, print a summary."""

from __future__ import annotations

import json
import sys

import click


@click.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The merged result file (written whole, then renamed into place).")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="Put records in this manifest's order, as one `firm-lite score` run writes them, and count "
                   "rows with no record yet.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def merge_cmd(inputs: tuple[str, ...], out: str, manifest: str | None, as_json: bool) -> None:
    """Combine result files (from --shard runs, a --ray run's folder, resumed runs) into one.

    \b
    Per id the latest successful record wins; an error record is kept unless a success for its id
    comes later. Records from different models, variants, protocols or image budgets are refused.
    Exit codes: 0 merged (even with rows still missing), 2 usage error or mixed critics.
    \b
    Examples:
      firm-lite merge part0.jsonl part1.jsonl part2.jsonl --out scores.jsonl
      firm-lite merge scores/ --manifest pairs.jsonl --out scores.jsonl     # a --ray run's folder
    """
    from firm_lite.merge import merge_results

    run = merge_results(inputs, out=out, manifest=manifest)
    if as_json:
        click.echo(json.dumps(run.as_json(), indent=2, ensure_ascii=False))
        sys.exit(0)
    click.echo(f"{len(run.records)} records ({run.failed} errors) from {len(run.inputs)} file(s) -> {out}; "
               f"{run.dropped} superseded or repeated record(s) left out")
    if run.missing:
        shown = ", ".join(run.missing[:5]) + (" ..." if len(run.missing) > 5 else "")
        click.echo(f"{len(run.missing)} manifest row(s) have no record yet ({shown}): finish or re-run their shards",
                   err=True)
