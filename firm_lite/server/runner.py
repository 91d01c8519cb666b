"""Running the app under uvicorn: :func:`serve` (``firm-lite serve``) and :class:`BackgroundServer`.

:func:`serve` checks the access rule and binds the port *before* loading the model (a busy
port or a missing token fails in a second, not after minutes of loading), then runs uvicorn in
the foreground. Ctrl-C / SIGTERM stop it gracefully: uvicorn stops accepting, lets in-flight
requests finish, then the app's lifespan drains the worker's queue.

:class:`BackgroundServer` runs an app on a free loopback port in a thread: the tests and the load
test use it, so they exercise the same uvicorn stack as ``firm-lite serve``.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from typing import Any

from firm_lite.errors import UserError
from firm_lite.server.access import check_bind
from firm_lite.server.config import ServeConfig
from firm_lite.settings import CriticSettings

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12341  # the reference reward server's port


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, or a one-line UserError. It listens at once, so a client
    that connects while the model loads or uvicorn starts waits in the backlog instead of being
    refused (the start-up line names the URL before uvicorn takes the socket)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: cannot resolve ({exc})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): is another server running there? "
                        "pick another --port") from None
    sock.listen(2048)  # uvicorn's default backlog; it listens again with its own when it starts
    sock.set_inheritable(True)
    return sock


def serve(settings: CriticSettings | None = None, *, config: ServeConfig | None = None, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, insecure_no_auth: bool = False, log_level: str = "info") -> None:
    """Serve the critic ``settings`` describe over HTTP until interrupted (see
    :mod:`firm_lite.server`); ``config`` holds batching, limits and the token (explained in
    :mod:`firm_lite.server.config`)."""
    import uvicorn

    from firm_lite.critic import load_critic
    from firm_lite.server.app import create_app
    from firm_lite.server.connections import uvicorn_limits

    config = config or ServeConfig()
    settings = (settings or CriticSettings()).replace(batch_size=config.max_batch)  # what --variant auto plans for
    access = check_bind(host, config.token, insecure_no_auth)
    _show_server_log(log_level)
    sock = bind_socket(host, port)
    port = sock.getsockname()[1]  # the real one when --port 0 asked for any free port
    try:
        log.info("firm-lite serve: loading %s (variant %s) ...", settings.model, settings.variant)
        critic = load_critic(settings)  # says the drift warning itself: a trainer must not learn from it unawares
        app = create_app(critic, config)
        shown = f"[{host}]" if ":" in host else host
        c = config
        log.info(f"firm-lite serve: http://{shown}:{port}  model {critic.model_id}  variant {critic.variant}  "
                 f"device {critic.device}\n  routes: POST /mode/score_execution, /mode/score_consistency "
                 f"(reference, pickle), POST /v1/score (JSON), GET /health, /metrics\n  batching: up to "
                 f"{c.max_batch} items, wait {c.max_wait_ms:g} ms, queue {c.max_queue} items; limits: {c.max_items} "
                 f"edits/request, {c.max_body_mb:g} MiB/body, {c.max_inflight_mb:g} MiB in flight, timeouts: head "
                 f"{c.header_timeout_s:g} s, body pause {c.body_timeout_s:g} s, keep-alive {c.keep_alive_s:g} s\n"
                 f"  {access}\n  trainers: REWARD_SERVER={host}:{port}")
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                               timeout_graceful_shutdown=None,
                                               **uvicorn_limits(config, app.state.metrics)))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown is complete
            pass
        log.info("firm-lite serve: stopped (in-flight requests finished)")
    finally:
        sock.close()


def _show_server_log(log_level: str) -> None:
    """``--log-level`` governs uvicorn and the server's per-request lines (``firm_lite.server.requests``:
    disconnects, slow clients, failed items); the start-up lines follow the CLI's own verbosity. Called
    from Python with no logging configured, both go to stderr."""
    import logging

    logging.getLogger("firm_lite.server.requests").setLevel(log_level.upper())
    server_log = logging.getLogger("firm_lite.server")
    configured = logging.getLogger("firm_lite").handlers or logging.getLogger().handlers  # e.g. the CLI's
    if not server_log.handlers and not configured:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        server_log.addHandler(handler)
        server_log.setLevel(logging.INFO)


class BackgroundServer:
    """``with BackgroundServer(app) as srv: requests.post(srv.url + ...)``: uvicorn in a thread on a
    free loopback port, stopped gracefully on exit."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0) -> None:
        import uvicorn

        from firm_lite.server.connections import uvicorn_limits

        self.app = app
        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        state = getattr(app, "state", None)
        limits = uvicorn_limits(state.config, state.metrics) if hasattr(state, "config") else {}
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, access_log=False,
                                                    lifespan="on", **limits))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="firm-lite-uvicorn", daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """Graceful stop (in-flight requests finish); True when the server thread ended in time."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.sock.close()
        return not self.thread.is_alive()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
