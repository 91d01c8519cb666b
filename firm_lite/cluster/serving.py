"""``firm-lite serve --ray``: the reward server's own app on N Ray Serve replicas behind one address.

Each replica loads the critic once and runs :func:`~firm_lite.server.app.create_app` unchanged
(``@serve.ingress()`` with ``__serve_build_asgi_app__``; Ray runs the app's lifespan, so the batch
worker starts with the replica and drains before it goes): the same routes, the reference pickle
protocol read only by the safe unpickler, the token check, the body limit and the in-flight
budget. What Ray adds, and how firm-lite keeps its rules:

- **Binding.** Ray's HTTP proxy, not uvicorn, listens on ``--host``/``--port``; the rule
  "anything but loopback needs a token" (:func:`~firm_lite.server.access.check_bind`) is applied to
  it before Ray starts, and the token is checked inside every replica. (Ray's own ``/-/healthz``
  and ``/-/routes`` on the same port answer without it; they say nothing about the critic.)
- **Queueing.** A replica takes ``max_queue + CONTROL_REQUESTS`` requests at once: every request
  holds at least one item, so firm-lite's batcher, not a queue in front of it, decides when to
  answer 503 + Retry-After (Ray's default of 5 would queue requests before the batcher sees them).
  Requests beyond what all replicas take wait in Ray's proxy up to ``max_queue`` more, then Ray
  answers 503.
- **Cluster view.** ``/health`` and ``/metrics`` are answered by whichever replica Ray picks;
  each replica reports its counters every ``HEARTBEAT_S`` to one small registry actor, and the
  answering replica reports ``replicas: {target, up}`` and metrics summed over the replicas heard
  from in the last ``STALE_S`` (:func:`~firm_lite.server.metrics.combine_snapshots`).
- **Shutdown.** Ctrl-C or SIGTERM deletes the application: Ray stops routing to the replicas, lets
  in-flight requests finish, runs the lifespan shutdown (the batcher drains), and a Ray instance
  this command started is stopped with it.

Connection timeouts (``--header-timeout-s``) are uvicorn settings of ``firm-lite serve``; Ray's
proxy has its own and only ``--keep-alive-s`` is passed on to it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import asdict
from typing import Any

from firm_lite.errors import UserError
from firm_lite.server.access import check_bind
from firm_lite.server.config import ServeConfig
from firm_lite.settings import CriticSettings

log = logging.getLogger("firm_lite.server")

APP_NAME = "firm-lite"
HEARTBEAT_S = 1.0
STALE_S = 5.0
CONTROL_REQUESTS = 8  # /health and /metrics calls a replica takes on top of scoring requests
SHUTDOWN_TIMEOUT_S = 60.0  # in-flight requests get this long to finish after Ctrl-C


class ReplicaRegistry:
    """A Ray actor holding each replica's latest metrics snapshot (the cluster view)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.reports: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, replica: str, snapshot: dict[str, Any]) -> None:
        self.reports[replica] = (time.monotonic(), snapshot)

    def leave(self, replica: str) -> None:
        self.reports.pop(replica, None)

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"target": self.target,
                "replicas": {rid: {"age_s": round(now - t, 3), "snapshot": snap}
                             for rid, (t, snap) in self.reports.items()}}


class ClusterView:
    """The ``cluster`` hook of :func:`~firm_lite.server.app.create_app` in one replica: reports this
    replica's metrics to the registry and widens /health and /metrics to every replica."""

    def __init__(self, registry: Any, replica: str) -> None:
        self.registry = registry
        self.replica = replica
        self.server_metrics: Any = None  # this replica's ServerMetrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="firm-lite-heartbeat", daemon=True)

    def start(self, metrics: Any) -> None:
        self.server_metrics = metrics
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.registry.leave.remote(self.replica)
        except Exception:  # noqa: BLE001 - the registry is already gone when Ray is shutting down
            log.debug("replica %s could not leave the registry", self.replica)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.registry.report.remote(self.replica, self.server_metrics.snapshot())

    async def _fresh(self) -> tuple[int, dict[str, dict[str, Any]]]:
        await self.registry.report.remote(self.replica, self.server_metrics.snapshot())
        view = await self.registry.view.remote()
        return view["target"], {rid: r for rid, r in view["replicas"].items() if r["age_s"] <= STALE_S}

    async def health(self, body: dict[str, Any]) -> dict[str, Any]:
        target, fresh = await self._fresh()
        return {**body, "replicas": {"target": target, "up": len(fresh), "answered_by": self.replica}}

    async def metrics(self, body: dict[str, Any]) -> dict[str, Any]:
        from firm_lite.server.metrics import combine_snapshots

        target, fresh = await self._fresh()
        combined = combine_snapshots([r["snapshot"] for r in fresh.values()])
        per_replica = {rid: {"age_s": r["age_s"], "requests": r["snapshot"]["requests"]["total"],
                             "items": r["snapshot"]["items"]["total"]} for rid, r in sorted(fresh.items())}
        return {**combined, "limits": body["limits"],
                "replicas": {"target": target, "reporting": len(fresh), "answered_by": self.replica,
                             "per_replica": per_replica}}


class FirmLiteReplica:
    """One Ray Serve replica: the critic, and firm-lite's app built around it."""

    def __init__(self, settings: dict[str, Any], config: dict[str, Any], registry: Any) -> None:
        from firm_lite.critic import load_critic

        self.critic = load_critic(CriticSettings(**settings))
        self.config = ServeConfig(**config)
        self.registry = registry
        self.view: ClusterView | None = None

    def __serve_build_asgi_app__(self) -> Any:
        from ray import serve

        from firm_lite.server.app import create_app

        context = serve.get_replica_context()
        self.view = ClusterView(self.registry, context.replica_id.unique_id)
        app = create_app(self.critic, self.config, cluster=self.view)
        self.view.start(app.state.metrics)
        return app

    def __del__(self) -> None:
        if self.view is not None:
            self.view.stop()


def serve_on_ray(settings: CriticSettings | None = None, *, config: ServeConfig | None = None,
                 host: str = "127.0.0.1", port: int = 12341, insecure_no_auth: bool = False, ray: str = "auto",
                 replicas: int = 1, gpus_per_replica: float | None = None, cpus_per_replica: float = 1.0,
                 log_level: str = "info") -> None:
    """Serve the critic ``settings`` describe on ``replicas`` Ray Serve replicas until interrupted
    (see the module docstring); ``gpus_per_replica`` None: one GPU each when the cluster has GPUs."""
    from firm_lite.cluster.connect import ray_session, require_ray
    from firm_lite.server.runner import bind_socket

    settings = settings or CriticSettings()
    config = config or ServeConfig()
    if replicas < 1 or cpus_per_replica <= 0 or (gpus_per_replica or 0) < 0:
        raise UserError("--replicas must be >= 1, --cpus-per-replica > 0 and --gpus-per-replica >= 0")
    access = check_bind(host, config.token, insecure_no_auth)  # governs Ray's HTTP proxy too
    if port == 0:
        raise UserError("--port 0 (any free port) is not possible with --ray: Ray's proxy needs a fixed port")
    require_ray("--ray/--replicas")
    if ray == "local" or (ray == "auto" and not os.environ.get("RAY_ADDRESS")):
        bind_socket(host, port).close()  # Ray's proxy will listen on this machine: a busy port fails here
    _show_log(log_level)
    with ray_session(ray) as session:
        import ray as ray_api
        from ray import serve

        gpus = session.default_gpus(gpus_per_replica)
        session.check_fits(replicas, cpus_per_replica, gpus, "replica")
        serve.start(http_options={"host": host, "port": port, "keep_alive_timeout_s": max(1, int(config.keep_alive_s))},
                    logging_config={"log_level": log_level.upper(), "enable_access_log": False})
        _check_proxy_binding(host, port)
        registry = ray_api.remote(ReplicaRegistry).options(num_cpus=0).remote(replicas)
        deployment = serve.deployment(
            serve.ingress()(FirmLiteReplica), name="FirmLite", num_replicas=replicas,
            ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus},
            max_ongoing_requests=config.max_queue + CONTROL_REQUESTS, max_queued_requests=config.max_queue,
            graceful_shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
            logging_config={"log_level": log_level.upper(), "enable_access_log": False})
        log.info("firm-lite serve --ray: starting %d replica(s) of %s (variant %s) on %s ...", replicas,
                 settings.model, settings.variant, session.address)
        try:
            try:
                serve.run(deployment.bind(asdict(settings), asdict(config), registry), name=APP_NAME,
                          route_prefix="/")
            except RuntimeError as exc:  # a replica failed to start (bad model, no memory): say why
                raise UserError(f"Ray Serve could not start the replicas: {_why_replicas_failed(serve, exc)}") from None
            shown = f"[{host}]" if ":" in host else host
            log.info(f"firm-lite serve --ray: http://{shown}:{port}  {replicas} replica(s) x {cpus_per_replica:g} CPU"
                     f" {gpus:g} GPU  model {settings.model}\n  routes: POST /mode/score_execution, "
                     f"/mode/score_consistency (reference, pickle), POST /v1/score (JSON), GET /health, /metrics "
                     f"(all replicas)\n  per replica: up to {config.max_queue + CONTROL_REQUESTS} requests, batches of "
                     f"{config.max_batch}, queue {config.max_queue} items\n  {access}\n"
                     f"  trainers: REWARD_SERVER={host}:{port}")
            _wait_for_stop()
            log.info("firm-lite serve --ray: stopping (in-flight requests finish) ...")
        finally:
            serve.delete(APP_NAME)  # blocks until the replicas have drained and stopped
            ray_api.kill(registry)
    log.info("firm-lite serve --ray: stopped")


def _check_proxy_binding(host: str, port: int) -> None:
    """Serve's HTTP options are fixed when Serve first starts on a cluster: if it already ran there
    with another host or port, ours were ignored, and the app must not go up on an address the
    token rule never saw."""
    from ray.serve.context import _get_global_client  # the only way to read the options in force

    actual = _get_global_client().http_config
    if (actual.host, actual.port) != (host, port):
        raise UserError(f"Ray Serve already runs on this cluster with its HTTP proxy on {actual.host}:{actual.port}, "
                        f"not {host}:{port} (Serve keeps the options it first started with): pass --host "
                        f"{actual.host} --port {actual.port} (with --token unless loopback), or run `serve shutdown` "
                        "on the cluster first")


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM (handlers restored afterwards)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _why_replicas_failed(serve: Any, exc: BaseException) -> str:
    """The replica's own error (a firm-lite UserError's one line when it is one): serve.run only
    says that the deployment failed; the reason is in the deployment's status message."""
    from firm_lite.cluster.connect import firm_lite_error_in

    app = serve.status().applications.get(APP_NAME)
    text = "\n".join([d.message for d in (app.deployments.values() if app else ()) if d.message] + [str(exc)])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return firm_lite_error_in(text) or (lines[-1] if lines else type(exc).__name__)


def _show_log(log_level: str) -> None:
    from firm_lite.server.runner import _show_server_log

    _show_server_log(log_level)
