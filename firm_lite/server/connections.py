"""Connection-level limits uvicorn does not offer: a timeout for the request head.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and h11 caps the size of a
request head (``h11_max_incomplete_event_size``), but nothing bounds how *long* a client may take
to send its head: one byte every few seconds keeps a connection, its buffers and a file
descriptor forever (each byte even re-arms the keep-alive timer). :func:`guarded_h11_protocol`
returns uvicorn's h11 protocol with one addition: from the moment a connection opens, and again
after each answer, the next request head must be complete within ``header_timeout_s``, or the
connection is closed (counted under ``header_timeouts`` in /metrics). Body pauses are bounded one
layer up (:mod:`~firm_lite.server.admission`, 408).

The server always runs h11 (not httptools, even where it is installed) so that these limits and
the head-size cap apply whatever is installed. The subclass only touches ``connection_made``,
``data_received``, ``on_response_complete``, ``connection_lost`` and ``cycle`` (the current
request), which both uvicorn protocols have had since 0.1x; tests pin the behaviour.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from firm_lite.server.metrics import ServerMetrics

log = logging.getLogger("firm_lite.server.requests")  # per-request events; --log-level sets it


class _HeadTimeoutH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0
    metrics: ServerMetrics | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self._head_timer: Any = None
        self._waiting_after: Any = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        """Wait for a new request head: the one after the current ``cycle`` (None: the first)."""
        self._disarm()
        self._waiting_after = self.cycle
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expire(self) -> None:
        self._head_timer = None
        if self.cycle is not self._waiting_after or self.transport.is_closing():
            return  # a request head arrived in the meantime
        if self.metrics is not None:
            self.metrics.count("header_timeouts")
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("closed connection from %s: no complete request head within %g s (--header-timeout-s)",
                 client, self.header_timeout_s)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._waiting_after:
            self._disarm()  # the head is complete: the request is the app's now

    def on_response_complete(self) -> None:
        self._arm()  # armed before a pipelined request may start a new cycle in the call below
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_h11_protocol(header_timeout_s: float, metrics: ServerMetrics | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with a request-head timeout (see the module docstring)."""
    return type("GuardedH11Protocol", (_HeadTimeoutH11Protocol,),
                {"header_timeout_s": header_timeout_s, "metrics": metrics})


def uvicorn_limits(config: Any, metrics: ServerMetrics | None = None) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments that apply a :class:`ServeConfig`'s connection limits.

    ``limit_concurrency`` is left unset on purpose: uvicorn answers over it with a bare 503 and no
    Retry-After, which the reference client does not retry (a trainer would crash); load is bounded
    by the item queue and the in-flight budget instead, which answer 503 + Retry-After."""
    from firm_lite.server.config import MAX_HEADER_BYTES

    return {"http": guarded_h11_protocol(config.header_timeout_s, metrics),
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "timeout_keep_alive": config.keep_alive_s}
