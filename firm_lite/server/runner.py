"""Running the app under uvicorn: :func:`serve` (``firm-lite serve``) and :class:`BackgroundServer`.

:func:`serve` checks the access rule and binds the port *before* loading the model (a busy
port or a missing token fails in a second, not after minutes of loading), then runs uvicorn in
the foreground. Ctrl-C / SIGTERM stop it gracefully: uvicorn stops accepting, lets in-flight
requests finish, then the app's lifespan drains the worker's queue.

:class:`BackgroundServer` runs an app on a free loopback port in a thread: the tests and the load
test use it, so they exercise the same uvicorn stack as ``firm-lite serve``.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any

from firm_lite.cme import CMEWeights
from firm_lite.errors import UserError
from firm_lite.images import DEFAULT_MAX_IMAGE_PIXELS
from firm_lite.server.access import check_bind
from firm_lite.server.config import ServeConfig
from firm_lite.sources import DEFAULT_MODEL

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12341  # the reference reward server's port


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port, or a one-line UserError."""
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
    sock.set_inheritable(True)
    return sock


def serve(*, model: str = DEFAULT_MODEL, variant: str = "default", device: str = "auto", dtype: str = "auto",
          min_pixels: int | None = None, max_pixels: int | None = None, max_new_tokens: int = 256,
          max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, w1: float = 0.6, w2: float = 0.4,
          host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
          insecure_no_auth: bool = False, max_batch: int = 8, max_wait_ms: float = 10.0, max_queue: int = 256,
          max_items: int = 64, max_body_mb: float = 128.0, max_inflight_mb: float = 2048.0,
          header_timeout_s: float = 10.0, body_timeout_s: float = 30.0, keep_alive_s: float = 5.0,
          log_level: str = "info") -> None:
    """Serve the critic over HTTP until interrupted (see :mod:`firm_lite.server`; the limits and
    their defaults are explained in :mod:`firm_lite.server.config`)."""
    import uvicorn

    from firm_lite.critic import load_critic
    from firm_lite.server.app import create_app
    from firm_lite.server.connections import uvicorn_limits

    access = check_bind(host, token, insecure_no_auth)
    _show_server_log(log_level)
    config = ServeConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, max_items=max_items,
                         max_body_mb=max_body_mb, max_inflight_mb=max_inflight_mb, header_timeout_s=header_timeout_s,
                         body_timeout_s=body_timeout_s, keep_alive_s=keep_alive_s, token=token or None)
    try:
        weights = CMEWeights(w1, w2)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    sock = bind_socket(host, port)
    port = sock.getsockname()[1]  # the real one when --port 0 asked for any free port
    try:
        print(f"firm-lite serve: loading {model} (variant {variant}) ...", file=sys.stderr, flush=True)
        critic = load_critic(model=model, variant=variant, device=device, dtype=dtype, min_pixels=min_pixels,
                             max_pixels=max_pixels, max_new_tokens=max_new_tokens, weights=weights,
                             max_image_pixels=max_image_pixels)
        from firm_lite.artifact import calibration_warning

        drift_warning = calibration_warning(critic.provenance.get("variant_folder"))
        if drift_warning:  # a trainer would otherwise learn from an uncalibrated variant unawares
            print(drift_warning, file=sys.stderr, flush=True)
        app = create_app(critic, config)
        shown = f"[{host}]" if ":" in host else host
        print(f"firm-lite serve: http://{shown}:{port}  model {critic.model_id}  variant {critic.variant}  "
              f"device {critic.device}\n  routes: POST /mode/score_execution, /mode/score_consistency (reference, "
              f"pickle), POST /v1/score (JSON), GET /health, /metrics\n  batching: up to {max_batch} items, "
              f"wait {max_wait_ms:g} ms, queue {max_queue} items; limits: {max_items} edits/request, "
              f"{max_body_mb:g} MiB/body, {max_inflight_mb:g} MiB in flight, timeouts: head {header_timeout_s:g} s, "
              f"body pause {body_timeout_s:g} s, keep-alive {keep_alive_s:g} s\n  {access}\n  trainers: "
              f"REWARD_SERVER={host}:{port}", file=sys.stderr,
              flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                               timeout_graceful_shutdown=None,
                                               **uvicorn_limits(config, app.state.metrics)))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown is complete
            pass
        print("firm-lite serve: stopped (in-flight requests finished)", file=sys.stderr, flush=True)
    finally:
        sock.close()


def _show_server_log(log_level: str) -> None:
    """Send the server's own log lines (disconnects, slow clients, failed items) to stderr next to
    uvicorn's, unless the application has configured logging itself."""
    import logging

    server_log = logging.getLogger("firm_lite.server")
    server_log.setLevel(log_level.upper())
    if not server_log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        server_log.addHandler(handler)


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
