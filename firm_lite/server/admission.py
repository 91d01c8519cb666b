"""How much request data the server holds at once: the in-flight byte budget and the body guard.

Without a global bound, memory grows with the number of clients (eight concurrent 120 MiB
pickles held 3.4 GB). So every byte a request makes the server hold is counted against one
:class:`InFlightBudget` (``--max-inflight-mb``), and a request that would go over it is refused
with 503 + Retry-After *before* its body is read (the reference client waits and retries):

- **bodies**, at :data:`BODY_WEIGHT` times their size: the bytes read, the objects parsed from
  them (the pickle's image bytes; the JSON's strings and decoded base64) and the allocator's slack
  (measured: sixteen concurrent 114 MiB pickles peaked at 2.5x their size each, one alone at 2x).
  Counted from ``Content-Length`` before a byte is read, or chunk by chunk for a streamed body;
  released when the response is sent.
- **decoded images of queued items**, estimated from the image headers (width x height x 3 at the
  size the decode keeps, :func:`~firm_lite.images.kept_bytes`), reserved by the
  handler when it queues the items and released when its answer is ready. The worker decodes
  only the batch it is about to score, so the real figure is lower; the estimate is the bound.

A request that could not fit even on an idle server is a 413 (no Retry-After: urllib3 retries a
413 that carries one, forever). So request memory stays under the budget, plus one full-size
decode at a time in the worker (at most 64 MP x 4 bytes = 256 MB with the default pixel guard),
whatever clients do.

:class:`BodyGuardMiddleware` also enforces the per-request body limit (413, ``--max-body-mb``) and
cuts off a client that stops sending its body for ``--body-timeout-s`` (408), which would
otherwise hold its reservation forever. Before a 413/503 it reads and drops up to one more
limit's worth of the body, so the client is reading when the refusal arrives (a server that hangs
up mid-upload makes the client see a broken pipe, not the status); a client that sent ``Expect:
100-continue`` is refused before it sends the body at all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from firm_lite.server.access import ASGIApp, Message, Receive, RequestRefused, Scope, Send, header, refusal_response
from firm_lite.server.metrics import ServerMetrics

BODY_WEIGHT = 3  # a body's bytes, what is parsed out of them, allocator slack (module docstring)


class InFlightBudget:
    """A thread-safe byte counter with a hard limit; reservations never block, they fail."""

    def __init__(self, limit: int, metrics: ServerMetrics | None = None) -> None:
        if limit < 1:
            raise ValueError("the in-flight budget must be at least one byte")
        self.limit = limit
        self.metrics = metrics or ServerMetrics()
        self.metrics.inflight_bytes = lambda: self.used
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def try_reserve(self, n: int) -> bool:
        """Take ``n`` bytes of the budget if they are free now; False (nothing taken) otherwise."""
        if n <= 0:
            return True
        with self._lock:
            if self._used + n > self.limit:
                return False
            self._used += n
            used = self._used
        self.metrics.note_inflight(used)
        return True

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self._used = max(0, self._used - n)


def over_budget(budget: InFlightBudget, need: int, what: str, retry_after: int) -> RequestRefused:
    """The refusal for ``need`` bytes that :meth:`InFlightBudget.try_reserve` did not grant."""
    limit = f"{budget.limit / 2**20:,.1f} MiB (--max-inflight-mb)"
    if need > budget.limit:
        return RequestRefused(413, f"{what} needs {need / 2**20:,.1f} MiB in memory, more than this server's "
                                  f"in-flight limit of {limit}; send fewer or smaller images")
    budget.metrics.count("rejected_inflight")
    return RequestRefused(503, f"server busy: {budget.used / 2**20:,.1f} of {limit} in flight; retry later",
                         {"Retry-After": str(retry_after)})


class BodyGuardMiddleware:
    """Body limit (413), in-flight budget (503), stalled body (408): see the module docstring."""

    def __init__(self, app: ASGIApp, max_bytes: int, budget: InFlightBudget, body_timeout_s: float,
                 retry_after: Callable[[], int]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget
        self.body_timeout_s = body_timeout_s
        self.retry_after = retry_after

    def _too_big(self, size: str) -> str:
        return (f"request body of {size} is over this server's limit of {self.max_bytes:,} bytes (--max-body-mb); "
                "send smaller batches")

    async def _receive(self, receive: Receive) -> Message:
        try:
            return await asyncio.wait_for(receive(), self.body_timeout_s)
        except TimeoutError:
            self.budget.metrics.count("body_timeouts")
            raise RequestRefused(408, f"request body stalled: nothing received for {self.body_timeout_s:g} s "
                                      "(--body-timeout-s)", {"Connection": "close"}) from None

    async def _drain(self, receive: Receive, already: int) -> None:
        seen = already
        while seen <= 2 * self.max_bytes:
            message = await self._receive(receive)
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = header(scope, b"content-length")
        length = int(raw) if raw is not None and raw.isdigit() else None
        # reading would send "100 Continue": a client waiting for it is refused before it uploads
        drain = (header(scope, b"expect") or b"").lower() != b"100-continue"
        held = 0
        try:
            if length is not None and length > self.max_bytes:
                if drain and length <= 2 * self.max_bytes:
                    await self._drain(receive, 0)
                raise RequestRefused(413, self._too_big(f"{length:,} bytes"))
            if length:
                cost = BODY_WEIGHT * length
                if not self.budget.try_reserve(cost):
                    refusal = over_budget(self.budget, cost, "this request body", self.retry_after())
                    if drain:
                        await self._drain(receive, 0)
                    raise refusal
                held = cost
        except RequestRefused as exc:
            self.budget.release(held)
            await refusal_response(scope["path"], exc.status, exc.message, exc.headers)(scope, receive, send)
            return

        received, done = 0, length == 0

        async def guarded_receive() -> Message:
            nonlocal received, held, done
            if done:
                return await receive()
            message = await self._receive(receive)
            if message["type"] != "http.request":
                done = True
                return message
            size = len(message.get("body", b""))
            received += size
            more = message.get("more_body", False)
            if received > self.max_bytes:
                if more:
                    await self._drain(receive, received)
                raise RequestRefused(413, self._too_big(f"over {received:,} bytes"))
            if length is None and size:  # streamed: count each chunk as it arrives
                if not self.budget.try_reserve(BODY_WEIGHT * size):
                    refusal = over_budget(self.budget, BODY_WEIGHT * received, "this request body",
                                          self.retry_after())
                    if more:
                        await self._drain(receive, received)
                    raise refusal
                held += BODY_WEIGHT * size
            done = not more
            return message

        try:
            await self.app(scope, guarded_receive, send)
        finally:
            self.budget.release(held)
