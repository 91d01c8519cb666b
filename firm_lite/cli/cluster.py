"""The cluster options of ``firm-lite score`` and ``firm-lite serve`` (``--shard``, ``--ray``,
``--workers``, ``--replicas`` ...), declared once here so the two commands stay short, and what
``score --ray`` prints. Ray is imported only when ``--ray`` (or an option that needs it) is used."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

RAY_HELP = ("Run on Ray: auto (the cluster $RAY_ADDRESS or `ray start` names, else Ray on this machine), local "
            "(a new Ray on this machine), or a head node's HOST:PORT / ray://HOST:PORT. Needs firm-lite[ray].")


def _ray_option() -> Any:
    return click.option("--ray", "ray", is_flag=False, flag_value="auto", default=None,
                        metavar="[auto|local|ADDRESS]", help=RAY_HELP)


def score_cluster_options(func: Any) -> Any:
    """``--shard`` and the Ray Data options of ``firm-lite score``."""
    options = [
        click.option("--shard", default=None, metavar="K/N",
                     help="Score only shard K of N of --manifest (K from 0; split by id, the same in every process). "
                          "Run N processes, each with its own --out; combine them with firm-lite merge."),
        _ray_option(),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Ray workers, each holding one critic (implies --ray auto; default 1)."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None,
                     help="GPUs per Ray worker (default: 1 when the cluster has GPUs, else 0)."),
        click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="CPUs per Ray worker (default 1)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def serve_cluster_options(func: Any) -> Any:
    """The Ray Serve options of ``firm-lite serve``."""
    options = [
        _ray_option(),
        click.option("--replicas", type=click.IntRange(min=1), default=None,
                     help="Ray Serve replicas, each holding one critic, behind one address (implies --ray auto)."),
        click.option("--gpus-per-replica", type=click.FloatRange(min=0), default=None,
                     help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)."),
        click.option("--cpus-per-replica", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="CPUs per replica (default 1)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def ray_address(ray: str | None, **implying: Any) -> str | None:
    """The ``--ray`` address to use: as given, or ``auto`` when an option that needs Ray was given."""
    if ray is not None:
        return ray
    return "auto" if any(v is not None for v in implying.values()) else None


def score_on_ray_cmd(*, ray: str, workers: int | None, gpus_per_worker: float | None,
                     cpus_per_worker: float | None, shard: str | None, as_json: bool, progress: bool,
                     settings: Any, manifest: str | None, out: str | None, batch_size: int, retry_errors: bool,
                     **single_pair: Any) -> int:
    """``firm-lite score --ray``: run :func:`~firm_lite.cluster.batch.score_on_ray`, print the
    result; returns the exit code."""
    import contextlib

    # Ray's driver prints its own notes (retried tasks, dead actors) on stdout from a background
    # thread, whenever they arrive; for the whole command they go to stderr, and only the result is
    # written to the real stdout, so it stays one JSON document / the table.
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        from firm_lite.cluster.batch import score_on_ray
        from firm_lite.errors import UserError

        if shard is not None:
            raise UserError("--shard and --ray both split the work: use --shard for separate processes, or --ray for "
                            "one run spread over a Ray cluster")
        given = [f"--{k.replace('_', '-')}" for k, v in single_pair.items()
                 if v not in (None, False, "pair", "") and k in ("source", "edited", "instruction", "demo", "html")]
        if given or manifest is None:
            raise UserError(f"--ray scores a --manifest{' (drop ' + ', '.join(given) + ')' if given else ''}")
        if out is None:
            raise UserError("--ray needs --out DIR: a folder the run writes its part files to (merge them with "
                            "firm-lite merge)")
        run = score_on_ray(settings, manifest=manifest, out=out, ray=ray, workers=workers or 1,
                           gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker or 1.0,
                           batch_size=batch_size, retry_errors=retry_errors, progress=progress)
        if as_json:
            click.echo(json.dumps(run.as_json(), indent=2, ensure_ascii=False), file=stdout)
        else:
            click.echo(f"{run.scored} scored, {run.failed} failed, {run.skipped} skipped (already in {out}) | "
                       f"variant {run.provenance.get('variant', '-')}", file=stdout)
            click.echo(f"one file in manifest order: firm-lite merge {out} --manifest {manifest} --out scores.jsonl",
                       err=True)
        return run.exit_code
