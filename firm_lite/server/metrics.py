"""Counters the server keeps for ``GET /metrics`` (and the load test reads back).

One :class:`ServerMetrics` per app, updated from the asyncio side (requests, latency, refusals)
and from the worker thread (batches, items, parse failures, item errors), so every update takes a
lock. Latency and batch-size percentiles come from a bounded window of recent values, not from
all history.

Counters (:meth:`ServerMetrics.count`): ``rejected_queue_full`` and ``rejected_inflight`` (503s of
the item queue and of the in-flight byte budget), ``disconnects`` (clients gone mid-body or before
their answer), ``header_timeouts`` and ``body_timeouts`` (slow clients cut off),
``decode_errors`` (items whose image failed to decode in the worker), ``worker_errors`` (items
whose scoring raised), ``batch_retries`` (failed batches re-scored one item at a time).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

WINDOW = 2048  # recent latencies / batch sizes kept for percentiles


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


class ServerMetrics:
    """Thread-safe request, batch and queue counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.items: Counter[str] = Counter()
        self.parse_failures: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self.batches = 0
        self.batch_seconds = 0.0
        self.rejected_queue_full = 0
        self.rejected_inflight = 0
        self.disconnects = 0
        self.header_timeouts = 0
        self.body_timeouts = 0
        self.decode_errors = 0
        self.worker_errors = 0
        self.batch_retries = 0
        self.max_queue_depth = 0
        self.max_inflight_bytes = 0
        self._latency: dict[str, deque[float]] = {}
        self._recent_batches: deque[int] = deque(maxlen=WINDOW)
        self.queue_depth: Callable[[], int] = lambda: 0
        self.inflight_bytes: Callable[[], int] = lambda: 0

    def request_done(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self._latency.setdefault(route, deque(maxlen=WINDOW)).append(seconds)

    def batch_done(self, results: Sequence[dict[str, Any]], seconds: float) -> None:
        """One scored batch: ``results`` holds one ``{mode: ModeScore}`` per item."""
        with self._lock:
            self.batches += 1
            self.batch_seconds += seconds
            self.batch_sizes[len(results)] += 1
            self._recent_batches.append(len(results))
            for per_item in results:
                for mode, score in per_item.items():
                    self.items[mode] += 1
                    self.parse_failures[mode] += score.score is None

    def note_depth(self, depth: int) -> None:
        with self._lock:
            self.max_queue_depth = max(self.max_queue_depth, depth)

    def note_inflight(self, used: int) -> None:
        with self._lock:
            self.max_inflight_bytes = max(self.max_inflight_bytes, used)

    def count(self, name: str) -> None:
        """Increment one of the counters listed in the module docstring."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, Any]:
        """Everything, as JSON-ready data."""
        with self._lock:
            by_route: dict[str, dict[str, int]] = {}
            for (route, status), n in sorted(self.requests.items()):
                by_route.setdefault(route, {})[str(status)] = n
            latency = {route: {"count": len(v), "p50_s": percentile(v, 50), "p95_s": percentile(v, 95),
                               "max_s": max(v) if v else None}
                       for route, v in sorted(self._latency.items())}
            scored = sum(self.batch_sizes[k] * k for k in self.batch_sizes)
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": {"total": sum(self.requests.values()), "by_route_status": by_route},
                "items": {"total": sum(self.items.values()), **dict(self.items)},
                "parse_failures": {"total": sum(self.parse_failures.values()), **dict(self.parse_failures)},
                "batches": {
                    "count": self.batches,
                    "mean_size": (scored / self.batches) if self.batches else None,
                    "p95_size": percentile(self._recent_batches, 95),
                    "size_histogram": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                    "busy_s": round(self.batch_seconds, 3),
                },
                "latency": latency,
                "queue": {"depth": self.queue_depth(), "max_depth": self.max_queue_depth,
                          "rejected_full": self.rejected_queue_full},
                "inflight_bytes": {"now": self.inflight_bytes(), "max": self.max_inflight_bytes,
                                   "rejected": self.rejected_inflight},
                "disconnects": self.disconnects,
                "timeouts": {"header": self.header_timeouts, "body": self.body_timeouts},
                "decode_errors": self.decode_errors,
                "worker_errors": self.worker_errors,
                "batch_retries": self.batch_retries,
            }


# What a value means when replicas' snapshots are combined (:func:`combine_snapshots`): counts add
# up; these are highest-wins (a percentile cannot be added: the worst replica's is reported).
_HIGHEST = frozenset({"uptime_s", "p50_s", "p95_s", "max_s", "max_depth", "max", "p95_size"})


def combine_snapshots(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for several servers (Ray Serve replicas): counts summed, maxima and latency
    percentiles the highest of any replica, the mean batch size recomputed from the summed
    histogram."""
    def combine(values: list[Any], key: str) -> Any:
        present = [v for v in values if v is not None]
        if not present:
            return None
        if all(isinstance(v, dict) for v in present):
            keys = list(dict.fromkeys(k for v in present for k in v))
            return {k: combine([v.get(k) for v in present], k) for k in keys}
        if key in _HIGHEST:
            return max(present)
        return sum(present)

    out = combine(list(snapshots), "") or {}
    batches = out.get("batches")
    if batches:
        histogram = batches.get("size_histogram") or {}
        scored = sum(int(size) * n for size, n in histogram.items())
        batches["mean_size"] = scored / batches["count"] if batches.get("count") else None
        batches["busy_s"] = round(batches.get("busy_s") or 0.0, 3)
    return out
