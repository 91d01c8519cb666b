"""``firm-lite score``: parse options, call :func:`firm_lite.scoring.score`, print the result."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from firm_lite.cli import critic_options
from firm_lite.cli.cluster import ray_address, score_cluster_options


def _fmt(mode: dict[str, Any] | None) -> str:
    if not mode:
        return "-"
    score = mode["score"] if mode["score"] is not None else "FAIL"
    exp = f" (E={mode['expected']:.2f})" if mode.get("expected") is not None else ""
    return f"{score}{exp}"


def print_table(records: list[dict[str, Any]], detail: bool) -> None:
    """Human-readable table of records on stdout."""
    header = f"{'id':<24} {'execution':<14} {'consistency':<14} {'CME':>6} {'CME(E)':>7}  note"
    click.echo(header)
    click.echo("-" * len(header))
    for r in records:
        cme = f"{r['cme']:.3f}" if r.get("cme") is not None else "-"
        cmee = f"{r['cme_expected']:.3f}" if r.get("cme_expected") is not None else "-"
        note = r["error"] or ""
        for m in ("execution", "consistency"):
            if r.get(m) and not r[m]["parse_ok"]:
                note += f" {m}: answer not parseable"
        click.echo(f"{str(r['id'])[:24]:<24} {_fmt(r.get('execution')):<14} {_fmt(r.get('consistency')):<14} "
                   f"{cme:>6} {cmee:>7}  {note.strip()}")
    if detail and len(records) == 1 and not records[0]["error"]:
        r = records[0]
        for m in ("execution", "consistency"):
            probs = r[m]["probs"]
            p = " ".join(f"{k + 1}:{q:.3f}" for k, q in enumerate(probs)) if probs else "n/a"
            click.echo(f"\n{m}: score {r[m]['score']}  P(score) {p}")
            click.echo(f"  reasoning: {r[m]['reasoning']}")


@click.command("score")
@click.option("--source", type=click.Path(dir_okay=False), help="ORIGINAL image (single pair).")
@click.option("--edited", type=click.Path(dir_okay=False), help="EDITED image (single pair).")
@click.option("--instruction", help="The edit instruction that was asked (single pair).")
@click.option("--demo", is_flag=True, help="Score the bundled demo pair (a photo and its greyscale version).")
@click.option("--id", "pair_id", default="pair", show_default=True, help="Id of the single pair in the output.")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="JSONL with id, source (or image), edited, instruction (or prompt), requirement; "
                   "relative paths resolve against the manifest's folder.")
@click.option("--out", type=click.Path(),
              help="Append one JSON record per pair here; ids already in the file are skipped (resume). "
                   "With --ray: a folder of part files.")
@click.option("--retry-errors", is_flag=True, help="With --out: re-score ids whose last record is an error.")
@critic_options()
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Pairs per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the table.")
@click.option("--html", type=click.Path(dir_okay=False), default=None,
              help="Also write a page of the run: images, reasonings, scores (all of --out when given); "
                   "see `firm-lite report`.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on for manifests on a TTY).")
@score_cluster_options
def score_cmd(as_json: bool, progress: bool | None, html: str | None, **kwargs: Any) -> None:
    """Score edits: execution (was the instruction carried out?) and consistency (was the rest
    left alone?), 1-5 each, plus the CME reward and score probabilities.

    \b
    Exit codes: 0 all pairs scored, 1 some pair failed (error record written), 2 usage error.
    \b
    Examples:
      firm-lite score --model tiny --demo
      firm-lite score --model tiny --source a.png --edited b.png --instruction "add a hat"
      firm-lite score --manifest pairs.jsonl --out scores.jsonl --json
      firm-lite score --manifest pairs.jsonl --shard 0/4 --out part0.jsonl   # then: firm-lite merge
      firm-lite score --manifest pairs.jsonl --ray --workers 4 --out scores/ # Ray Data (firm-lite[ray])
    """
    from firm_lite.scoring import score

    if progress is None:
        progress = bool(kwargs.get("manifest")) and sys.stderr.isatty()
    cluster = {name: kwargs.pop(name) for name in ("ray", "workers", "gpus_per_worker", "cpus_per_worker")}
    cluster["ray"] = ray_address(**cluster)
    if cluster["ray"] is not None:
        from firm_lite.cli.cluster import score_on_ray_cmd

        sys.exit(score_on_ray_cmd(**cluster, as_json=as_json, progress=progress, html=html, **kwargs))
    run = score(progress=progress, **kwargs)
    if html:
        from firm_lite.report import score_run_page

        click.echo(f"page: {score_run_page(run.records, html, **kwargs).written['html']}", err=True)
    if as_json:
        click.echo(json.dumps(run.as_json(), indent=2, ensure_ascii=False))
    else:
        print_table(run.records, detail=kwargs.get("manifest") is None)
        click.echo(f"\n{run.scored} scored, {run.failed} failed, {run.skipped} skipped (already in --out)"
                   f" | model {run.provenance.get('model', {}).get('model_id')} variant {run.provenance.get('variant')}"
                   f" | image budget {run.provenance['image_budget']['min_pixels']}-"
                   f"{run.provenance['image_budget']['max_pixels']} px")
    sys.exit(run.exit_code)
