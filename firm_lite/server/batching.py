"""Micro-batching: many concurrent requests, one worker thread that owns the critic.

Requests (on the asyncio side) :meth:`BatchWorker.submit` their items with the modes they need
(one for the reference routes, both for the JSON API) and await a future; they never touch the
model. The worker thread takes the mode set whose oldest item has waited longest, waits up to
``max_wait_s`` (counted from that item's arrival) for up to ``max_batch`` items of that set,
decodes them (``prepare``: images are decoded here, batch by batch, never all of a request at
once), scores them in one :meth:`Critic.score_modes` call (both modes in one call share the image
prefix where the engine allows), and hands each request its results through its event loop. So
requests from different clients share a forward pass, and a request larger than ``max_batch`` is
spread over several.

**One item never fails another.** An item whose decode fails fails alone. If a batch's
``score_modes`` raises, its items are scored again one by one, so only the guilty item gets the
exception and every other client gets its scores. A job submitted with ``fail_fast`` (the
reference routes: one bad item makes the request a 400/500) ends at its first failed item, as
:class:`ItemFailed`, and its items still queued are dropped; otherwise (the JSON API) a failed
item's result is its exception and the rest are scored.

The queue is bounded in items: a request that does not fit is refused at once (:class:`QueueFull`,
the app answers 503 with Retry-After) instead of growing latency without limit. A request whose
client went away is cancelled: its queued items are dropped and late results are discarded, so
a disconnect never blocks the worker. :meth:`BatchWorker.stop` refuses new work and finishes
everything already queued before the thread ends (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from firm_lite.errors import PairError
from firm_lite.server.metrics import ServerMetrics

log = logging.getLogger("firm_lite.server.requests")  # per-request events; --log-level sets it


class QueueFull(Exception):
    """The bounded queue cannot take this request now; ``retry_after`` is a hint in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The worker is stopping and takes no new work."""


class ItemFailed(Exception):
    """Item ``index`` of a fail-fast job could not be decoded or scored; ``cause`` says why."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"item {index}: {cause}")
        self.index = index
        self.cause = cause


@dataclass(eq=False)
class Job:
    """One request's items for one mode set, and the future its handler awaits."""

    modes: tuple[str, ...]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    results: list[Any]
    remaining: int
    fail_fast: bool = True
    cancelled: bool = False


@dataclass(eq=False)
class _Entry:
    job: Job
    index: int
    item: Any
    enqueued: float = field(default_factory=time.monotonic)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the handler gave up (client disconnected)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class BatchWorker:
    """Owns the critic on one thread; see the module docstring for the batching rule."""

    def __init__(self, critic: Any, *, max_batch: int = 8, max_wait_s: float = 0.01, max_queue: int = 256,
                 metrics: ServerMetrics | None = None, prepare: Callable[[Any], Any] | None = None) -> None:
        """``prepare`` turns a queued item into what ``critic.score_modes`` takes, in the worker
        thread right before its batch is scored (None: items are queued ready to score)."""
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.critic = critic
        self.prepare = prepare
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics or ServerMetrics()
        self.metrics.queue_depth = lambda: self.depth
        self._pending: dict[tuple[str, ...], deque[_Entry]] = {}
        self._depth = 0
        self._in_flight = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- asyncio side ---------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Items waiting in the queue (not counting the batch being scored)."""
        return self._depth

    @property
    def in_flight(self) -> int:
        """Items in the batch being scored right now."""
        return self._in_flight

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def submit(self, modes: Sequence[str], items: Sequence[Any], fail_fast: bool = True) -> Job:
        """Queue ``items`` to be scored in ``modes``; ``job.future`` gives, in item order, one
        ``{mode: ModeScore}`` per item (or, without ``fail_fast``, the exception of a failed item;
        with it, the future raises :class:`ItemFailed` instead).

        Must be called on the event loop that will await the future.
        """
        loop = asyncio.get_running_loop()
        modes = tuple(modes)
        job = Job(modes=modes, future=loop.create_future(), loop=loop, results=[None] * len(items),
                  remaining=len(items), fail_fast=fail_fast)
        if not items:
            job.future.set_result([])
            return job
        with self._cond:
            if self._stopping or self._thread is None:
                raise ShuttingDown("server is shutting down")
            if self._depth + len(items) > self.max_queue:
                raise QueueFull(f"queue full ({self._depth} of {self.max_queue} items waiting); retry later",
                                self.retry_after())
            queue = self._pending.setdefault(modes, deque())
            now = time.monotonic()
            for i, item in enumerate(items):
                queue.append(_Entry(job, i, item, now))
            self._depth += len(items)
            self.metrics.note_depth(self._depth)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a job whose client went away: its queued items leave the queue now."""
        self._drop(job)
        if not job.future.done():
            job.future.cancel()

    def _drop(self, job: Job) -> None:
        with self._cond:
            job.cancelled = True
            queue = self._pending.get(job.modes)
            if queue:
                kept = deque(e for e in queue if e.job is not job)
                self._depth -= len(queue) - len(kept)
                self._pending[job.modes] = kept

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the time to work off the queue, 1 to 60."""
        snap_batches = self.metrics.batches
        per_batch = (self.metrics.batch_seconds / snap_batches) if snap_batches else 1.0
        return int(min(60, max(1, math.ceil(self._depth / self.max_batch * per_batch))))

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="firm-lite-critic", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new work, finish what is queued, end the thread. True when it ended in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -- worker thread --------------------------------------------------------------------------
    def _oldest_modes(self) -> tuple[str, ...] | None:
        heads = [(q[0].enqueued, modes) for modes, q in self._pending.items() if q]
        return min(heads)[1] if heads else None

    def _next_batch(self) -> tuple[tuple[str, ...], list[_Entry]] | None:
        with self._cond:
            while True:
                modes = self._oldest_modes()
                if modes is not None:
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            queue = self._pending[modes]
            deadline = queue[0].enqueued + self.max_wait_s
            while len(queue) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                queue = self._pending[modes]  # cancel() may have replaced it
                if not queue:
                    return modes, []
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            self._depth -= len(batch)
            batch = [e for e in batch if not e.job.cancelled]
            self._in_flight = len(batch)
            return modes, batch

    def _run(self) -> None:
        while True:
            nxt = self._next_batch()
            if nxt is None:
                return
            modes, batch = nxt
            try:
                if batch:
                    self._score(modes, batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not strand the waiting requests
                log.exception("the worker failed on a batch of %d items", len(batch))
                for job in {id(e.job): e.job for e in batch}.values():
                    if not job.cancelled:
                        self._drop(job)
                        self._send(job, None, exc)
            finally:
                with self._cond:
                    self._in_flight = 0

    def _score(self, modes: tuple[str, ...], batch: list[_Entry]) -> None:
        ready: list[tuple[_Entry, Any]] = []
        for entry in batch:
            if entry.job.cancelled:  # an earlier item of its fail-fast job failed
                continue
            if self.prepare is None:
                ready.append((entry, entry.item))
                continue
            try:
                ready.append((entry, self.prepare(entry.item)))
            except PairError as exc:  # this item's image or text: it fails alone
                self.metrics.count("decode_errors")
                self._item_done(entry, exc)
            except Exception as exc:  # noqa: BLE001 - forwarded to its request, the others go on
                log.exception("preparing an item failed")
                self.metrics.count("worker_errors")
                self._item_done(entry, exc)
        if not ready:
            return
        start = time.perf_counter()
        results = self._score_isolated(modes, ready)
        self.metrics.batch_done([r for r in results if isinstance(r, dict)], time.perf_counter() - start)
        for (entry, _), result in zip(ready, results, strict=True):
            self._item_done(entry, result)

    def _score_isolated(self, modes: tuple[str, ...], ready: list[tuple[_Entry, Any]]) -> list[Any]:
        """One ``{mode: ModeScore}`` or exception per item; a failed batch is re-scored item by item
        so that only the guilty item gets the exception (items of cancelled jobs are skipped)."""
        try:
            out = self.critic.score_modes([item for _, item in ready], modes=modes)
            return [{m: out[m][k] for m in modes} for k in range(len(ready))]
        except Exception as exc:  # noqa: BLE001 - isolated below; the guilty item gets it
            if len(ready) == 1:
                log.error("scoring an item (%s) failed: %s: %s", "+".join(modes), type(exc).__name__, exc,
                          exc_info=exc)
                self.metrics.count("worker_errors")
                return [exc]
            log.warning("a batch of %d items (%s) failed (%s: %s); scoring them one by one", len(ready),
                        "+".join(modes), type(exc).__name__, exc)
            self.metrics.count("batch_retries")
        return [None if entry.job.cancelled else self._score_isolated(modes, [(entry, item)])[0]
                for entry, item in ready]

    def _item_done(self, entry: _Entry, result: Any) -> None:
        job = entry.job
        if job.cancelled:
            return
        if isinstance(result, BaseException):
            if job.fail_fast:
                self._drop(job)  # its other queued items are not scored for nobody
                self._send(job, None, ItemFailed(entry.index, result))
                return
        job.results[entry.index] = result
        job.remaining -= 1
        if job.remaining == 0:
            self._send(job, job.results, None)

    @staticmethod
    def _send(job: Job, result: Any, error: BaseException | None) -> None:
        try:
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            log.debug("dropping a result for a closed event loop")
