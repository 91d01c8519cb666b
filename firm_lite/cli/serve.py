"""``firm-lite serve``: parse options, call :func:`firm_lite.server.runner.serve`."""

from __future__ import annotations

from typing import Any

import click

from firm_lite.cli import critic_options
from firm_lite.cli.cluster import ray_address, serve_cluster_options


@click.command("serve")
@critic_options(protocol=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --token or --insecure-no-auth.")
@click.option("--port", type=click.IntRange(0, 65535), default=12341, show_default=True,
              help="Port (12341 is the reference reward server's).")
@click.option("--token", envvar="FIRM_LITE_TOKEN", default=None,
              help="Require this secret on every request (Authorization: Bearer TOKEN, or "
                   "REWARD_SERVER=user:TOKEN@host:port). Also read from $FIRM_LITE_TOKEN.")
@click.option("--insecure-no-auth", is_flag=True, help="Allow a non-loopback --host without a token.")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most items scored in one forward pass (1 = no micro-batching).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="How long the first queued item waits for a batch to fill.")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Items allowed to wait; beyond that requests get 503 + Retry-After.")
@click.option("--max-items", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most edits in one request (the reference client sends 64).")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=128.0, show_default=True,
              help="Largest request body in MiB (413 beyond).")
@click.option("--max-inflight-mb", type=click.FloatRange(min=0, min_open=True), default=2048.0, show_default=True,
              help="Most MiB all requests together may make the server hold (bodies, decoded images of queued "
                   "items); 503 + Retry-After beyond. Must hold three --max-body-mb.")
@click.option("--header-timeout-s", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="A connection must send a complete request head this soon (slow clients are cut off).")
@click.option("--body-timeout-s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Longest pause allowed while a request body is sent (408 beyond).")
@click.option("--keep-alive-s", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Idle keep-alive connections are closed after this.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True, help="uvicorn log level.")
@serve_cluster_options
def serve_cmd(**kwargs: Any) -> None:
    """Serve the critic over HTTP: a drop-in for the FIRM-Edit reference reward server
    (POST /mode/score_execution and /mode/score_consistency, pickled bodies, decoded safely),
    plus a JSON API (POST /v1/score), GET /health and GET /metrics.

    \b
    Examples:
      firm-lite serve --model tiny                       # loopback, port 12341
      REWARD_SERVER=127.0.0.1:12341 python train.py      # point a trainer at it
      firm-lite serve --host 0.0.0.0 --token "$SECRET"   # reachable from other machines
      firm-lite serve --ray --replicas 4 --host 0.0.0.0 --token "$SECRET"   # Ray Serve (firm-lite[ray])
    """
    from firm_lite.server.config import ServeConfig
    from firm_lite.server.runner import serve

    config = ServeConfig(**{name: kwargs.pop(name) for name in SERVE_CONFIG_OPTIONS}, token=kwargs.pop("token"))
    cluster = {name: kwargs.pop(name) for name in ("ray", "replicas", "gpus_per_replica", "cpus_per_replica")}
    cluster["ray"] = ray_address(**cluster)
    if cluster["ray"] is not None:
        from firm_lite.cluster.serving import serve_on_ray

        serve_on_ray(kwargs.pop("settings"), config=config, ray=cluster["ray"], replicas=cluster["replicas"] or 1,
                     gpus_per_replica=cluster["gpus_per_replica"], cpus_per_replica=cluster["cpus_per_replica"] or 1.0,
                     **kwargs)
        return
    serve(kwargs.pop("settings"), config=config, **kwargs)


SERVE_CONFIG_OPTIONS = ("max_batch", "max_wait_ms", "max_queue", "max_items", "max_body_mb", "max_inflight_mb",
                        "header_timeout_s", "body_timeout_s", "keep_alive_s")
