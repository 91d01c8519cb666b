"""Micro-batching: many concurrent requests, one worker thread that owns the critic.

Requests (on the asyncio side) :meth:`BatchWorker.submit` their prepared items with the modes
they need (one for the reference routes, both for the JSON API) and await a future; they never
touch the model. The worker thread takes the mode set whose oldest item has waited longest,
waits up to ``max_wait_s`` (counted from that item's arrival) for up to ``max_batch`` items of
that set, scores them in one :meth:`Critic.score_modes` call (both modes in one call share the
image prefix where the engine allows), and hands each request its results through its event
loop. So requests from different clients share a forward pass, and a request larger than
``max_batch`` is spread over several.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from firm_lite.server.metrics import ServerMetrics

log = logging.getLogger("firm_lite.server")


class QueueFull(Exception):
    """The bounded queue cannot take this request now; ``retry_after`` is a hint in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The worker is stopping and takes no new work."""


@dataclass(eq=False)
class Job:
    """One request's items for one mode set, and the future its handler awaits."""

    modes: tuple[str, ...]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    results: list[Any]
    remaining: int
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
                 metrics: ServerMetrics | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.critic = critic
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

    def submit(self, modes: Sequence[str], items: Sequence[Any]) -> Job:
        """Queue ``items`` to be scored in ``modes``; ``job.future`` gives, in item order, one
        ``{mode: ModeScore}`` per item.

        Must be called on the event loop that will await the future.
        """
        loop = asyncio.get_running_loop()
        modes = tuple(modes)
        job = Job(modes=modes, future=loop.create_future(), loop=loop, results=[None] * len(items),
                  remaining=len(items))
        if not items:
            job.future.set_result([])
            return job
        with self._cond:
            if self._stopping or self._thread is None:
                raise ShuttingDown("server is shutting down")
            if self._depth + len(items) > self.max_queue:
                raise QueueFull(f"queue full ({self._depth} of {self.max_queue} items waiting); retry later",
                                self._retry_after())
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
        with self._cond:
            job.cancelled = True
            queue = self._pending.get(job.modes)
            if queue:
                kept = deque(e for e in queue if e.job is not job)
                self._depth -= len(queue) - len(kept)
                self._pending[job.modes] = kept
        if not job.future.done():
            job.future.cancel()

    def _retry_after(self) -> int:
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
            if batch:
                self._score(modes, batch)
            with self._cond:
                self._in_flight = 0

    def _score(self, modes: tuple[str, ...], batch: list[_Entry]) -> None:
        start = time.perf_counter()
        try:
            out = self.critic.score_modes([e.item for e in batch], modes=modes)
            scores = [{m: out[m][k] for m in modes} for k in range(len(batch))]
        except Exception as exc:  # noqa: BLE001 - forwarded to every waiting request, worker carries on
            log.exception("scoring a batch of %d items (%s) failed", len(batch), "+".join(modes))
            self.metrics.count("worker_errors")
            for job in {id(e.job): e.job for e in batch}.values():
                self._finish(job, None, exc)
                job.cancelled = True  # its items still queued are dropped, not scored for nobody
            return
        self.metrics.batch_done(scores, time.perf_counter() - start)
        for entry, score in zip(batch, scores, strict=True):
            job = entry.job
            job.results[entry.index] = score
            job.remaining -= 1
            if job.remaining == 0:
                self._finish(job, job.results, None)

    @staticmethod
    def _finish(job: Job, result: Any, error: BaseException | None) -> None:
        if job.cancelled:
            return
        try:
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            log.debug("dropping a result for a closed event loop")
