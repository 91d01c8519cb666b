"""HTTP to the scoring servers: one pooled client, retries with backoff, one-line errors.

A request that gets no HTTP answer (connection refused or reset, timeout) or a 429/5xx answer is
tried again, ``retries`` times, after an exponential backoff with jitter (``Retry-After`` wins
when the server sends one); any other status is returned to the caller, which knows what it
means (a 400 says the request itself is wrong: sending it again cannot help). What is still
failing after the last try raises :class:`RemoteError` (:class:`EndpointUnreachable` when the
server never answered), so the caller can turn it into an error record.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from typing import Any

from firm_lite.errors import missing_extra
from firm_lite.remote.wire import error_text
from firm_lite.settings import RemoteOptions

BACKOFF_BASE_S = 0.5  # first retry after ~0.5 s, then 1, 2, 4, ... (x0.5-1.5 jitter)
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0  # a server asking for longer than this is treated as asking for this
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RemoteError(RuntimeError):
    """A request to a scoring server that failed (after its retries where retrying could help)."""


class EndpointUnreachable(RemoteError):
    """The server gave no HTTP answer, on every try."""


def api_root(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1`` -> ``http://host:8000``."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` (seconds, or an HTTP date) in seconds from now, capped; None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


class Http:
    """One connection pool for every endpoint; ``stop`` (set by close) cuts backoff waits short."""

    def __init__(self, options: RemoteOptions, pool_size: int) -> None:
        try:
            import httpx
        except ImportError:
            raise missing_extra("remote", "httpx") from None

        self.options = options
        self.stop = threading.Event()
        self._random = random.Random()
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.client = httpx.Client(timeout=httpx.Timeout(options.timeout_s), headers=headers,
                                   limits=httpx.Limits(max_connections=pool_size,
                                                       max_keepalive_connections=pool_size))

    def backoff_s(self, attempt: int) -> float:
        return min(BACKOFF_BASE_S * 2 ** attempt, BACKOFF_MAX_S) * self._random.uniform(0.5, 1.5)

    def request(self, method: str, url: str, *, content: bytes | None = None, retries: int | None = None) -> Any:
        """The response (any status but a retried one), or RemoteError after the last try."""
        import httpx

        retries = self.options.retries if retries is None else retries
        headers = {"Content-Type": "application/json"} if content is not None else None
        for attempt in range(retries + 1):
            if self.stop.is_set():
                raise RemoteError("the remote engine is closed")
            try:
                response = self.client.request(method, url, content=content, headers=headers)
            except httpx.TransportError as exc:
                failure: RemoteError = EndpointUnreachable(f"{method} {url}: no answer after {attempt + 1} "
                                                           f"tries ({type(exc).__name__}: {exc or 'no detail'})")
                delay = self.backoff_s(attempt)
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                failure = RemoteError(f"{method} {url}: HTTP {response.status_code} after {attempt + 1} tries: "
                                      f"{error_text(response.content)}")
                wait = retry_after_s(response.headers.get("retry-after"))
                delay = wait if wait is not None else self.backoff_s(attempt)
            if attempt == retries:
                raise failure
            if self.stop.wait(delay):
                raise RemoteError("the remote engine is closed")
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.stop.set()
        self.client.close()
