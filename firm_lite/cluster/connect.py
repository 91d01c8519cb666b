"""Finding a Ray cluster for ``--ray`` and sizing work to it; the one place that calls ``ray.init``.

``--ray`` takes ``auto`` (the cluster ``$RAY_ADDRESS`` or a running ``ray start`` names, else a
new Ray instance on this machine that ends with the command), ``local`` (always a new instance on
this machine) or ``HOST:PORT`` / ``ray://HOST:PORT`` (an existing cluster's head). A concrete
address is checked with a plain TCP connect first: Ray itself retries a wrong address for a long
time, and the user should get one line in seconds instead. Nothing here imports Ray at module
level: ``firm-lite --help`` and machines without the ``ray`` extra never pay for it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from firm_lite.errors import UserError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


def require_ray(what: str = "--ray") -> Any:
    """The ``ray`` module, or the one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"{what} needs Ray, which is not installed: pip install \"firm-lite[ray]\"") from None
    return ray


def split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a concrete address, None for ``auto``/``local``; UserError when malformed."""
    if address in ("auto", "local"):
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--ray {address}: expected auto, local, HOST:PORT (a head node's GCS address, "
                        "port 6379 by default) or ray://HOST:PORT (Ray Client, port 10001)")
    return host, int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """UserError in one line when nothing listens at a concrete ``--ray`` address."""
    target = split_address(address)
    if target is None:
        return
    host, port = target
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--ray {address}: cannot resolve host {host!r} ({exc.strerror}); check the head node's "
                        "address") from None
    last = "no address"
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return
        except OSError as exc:
            last = exc.strerror or type(exc).__name__
    raise UserError(f"--ray {address}: nothing answers there ({last}); start the head with `ray start --head` on "
                    "that machine, or use --ray auto for Ray on this machine")


@dataclass
class RaySession:
    """What a command runs on: the cluster's address and resources."""

    address: str
    cpus: float
    gpus: float

    def default_gpus(self, requested: float | None) -> float:
        """GPUs per worker: as requested, else one when the cluster has GPUs, else none."""
        if requested is not None:
            return requested
        return 1.0 if self.gpus >= 1 else 0.0

    def check_fits(self, count: int, cpus: float, gpus: float, unit: str) -> None:
        """UserError when ``count`` units of ``cpus``/``gpus`` each exceed what the cluster has now
        (Ray would otherwise wait for them without saying so)."""
        for name, each, have, flag in (("CPUs", cpus, self.cpus, "cpus"), ("GPUs", gpus, self.gpus, "gpus")):
            if count * each > have + 1e-9:
                raise UserError(f"{count} {unit}(s) x {each:g} {name} need {count * each:g} {name}, but the Ray "
                                f"cluster at {self.address} has {have:g}: lower --{unit}s or --{flag}-per-{unit}, "
                                "or add nodes")


@contextmanager
def ray_session(address: str = "auto", *, num_cpus: int | None = None, log_level: str = "warning"
                ) -> Iterator[RaySession]:
    """Connect to (or start) Ray for one command; a Ray this command started is shut down after it.

    When Ray is already initialised in this process (a notebook, the tests) that session is used
    as it is and left running."""
    ray = require_ray()
    if ray.is_initialized():
        yield _session(ray, "this process's Ray")
        return
    check_reachable(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": log_level.upper(),
                              "log_to_driver": log_level in ("info", "debug")}
    if address == "local":
        kwargs.update(address="local", num_cpus=num_cpus)
    elif address == "auto":
        # an existing cluster if $RAY_ADDRESS or `ray start` names one, else a new local instance
        kwargs.update(address=None, num_cpus=num_cpus if not os.environ.get("RAY_ADDRESS") else None)
    else:
        kwargs.update(address=address)
    try:
        info = ray.init(**{k: v for k, v in kwargs.items() if v is not None or k == "address"})
    except ConnectionError as exc:
        raise UserError(f"--ray {address}: cannot connect ({exc}); is the Ray cluster running?") from None
    try:
        yield _session(ray, info.address_info.get("gcs_address") or address)
    finally:
        ray.shutdown()  # disconnects; also stops the processes of an instance this call started


def _session(ray: Any, address: str) -> RaySession:
    resources = ray.cluster_resources()
    return RaySession(address=address, cpus=float(resources.get("CPU", 0)),
                      gpus=float(resources.get("GPU", 0)))


def firm_lite_error_in(text: str) -> str | None:
    """The message of the last firm-lite UserError quoted in a remote traceback (a worker or
    replica that could not load the critic), or None when the failure is something else."""
    found = [line.strip().split(": ", 1)[1] for line in text.splitlines()
             if line.strip().startswith("firm_lite.errors.") and ": " in line]
    return found[-1] if found else None
