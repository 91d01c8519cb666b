"""The settings of one reward server (the ``firm-lite serve`` options), checked together.

Why each limit and its default:

- ``max_batch`` 8, ``max_wait_ms`` 10: micro-batching (see :mod:`~firm_lite.server.batching`).
- ``max_queue`` 256 items: beyond it a request gets 503 + Retry-After at once instead of waiting
  without bound (four full reference requests).
- ``max_items`` 64: the reference client sends up to 64 edits per request.
- ``max_body_mb`` 128: one request's body (413 beyond); 64 pairs of 1 MB JPEGs fit.
- ``max_inflight_mb`` 2048: what requests may make the server hold at once, all clients together
  (bodies and the decoded images of queued items, see :mod:`~firm_lite.server.admission`); 503 +
  Retry-After beyond. Sized so that a full queue of reference-size requests (64 pairs of 1024 x
  1024 JPEGs, about 480 MiB each as counted) is admitted at once, while request memory stays
  bounded however many clients connect. Must hold at least one maximum-size body (counted 3x).
- ``header_timeout_s`` 10: a connection must send a complete request head this soon after it
  opens or after its previous answer (uvicorn has no such timeout: a client sending its headers
  one byte at a time would hold a connection forever).
- ``body_timeout_s`` 30: the longest pause allowed while a body is being sent (408 beyond); a
  stalled upload would otherwise hold its share of the in-flight budget forever.
- ``keep_alive_s`` 5: idle keep-alive connections are closed after this (uvicorn's default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from firm_lite.errors import UserError

MAX_HEADER_BYTES = 16 * 1024  # h11's cap on a request head; an Authorization header is far smaller


@dataclass(frozen=True)
class ServeConfig:
    """Batching and limit settings of one server (see the module docstring for the defaults)."""

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_items: int = 64
    max_body_mb: float = 128.0
    max_inflight_mb: float = 2048.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    token: str | None = None

    def __post_init__(self) -> None:
        from firm_lite.server.admission import BODY_WEIGHT

        if self.max_batch < 1 or self.max_items < 1 or self.max_queue < 1:
            raise UserError("--max-batch, --max-items and --max-queue must be >= 1")
        if self.max_queue < self.max_items:
            raise UserError(f"--max-queue {self.max_queue} is smaller than --max-items {self.max_items}: "
                            "a full-size request could never be queued")
        if self.max_wait_ms < 0 or self.max_body_mb <= 0:
            raise UserError("--max-wait-ms must be >= 0 and --max-body-mb > 0")
        if min(self.header_timeout_s, self.body_timeout_s, self.keep_alive_s) <= 0:
            raise UserError("--header-timeout-s, --body-timeout-s and --keep-alive-s must be > 0")
        if self.max_inflight_bytes < BODY_WEIGHT * self.max_body_bytes:
            raise UserError(f"--max-inflight-mb {self.max_inflight_mb:g} cannot hold one --max-body-mb "
                            f"{self.max_body_mb:g} body (a body counts {BODY_WEIGHT}x: its bytes, what is "
                            f"parsed from them, allocator slack): raise it to at least "
                            f"{BODY_WEIGHT * self.max_body_mb:g}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * 1024 * 1024)

    @property
    def max_pickle_opcodes(self) -> int:
        # a plain request needs ~15 opcodes per edit; metadata dicts may carry extra fields
        return 1_000 + 1_000 * self.max_items

    def public(self) -> dict[str, Any]:
        """Settings safe to show on /health and /metrics (no token)."""
        out = asdict(self)
        out.pop("token")
        out["auth"] = bool(self.token)
        return out
