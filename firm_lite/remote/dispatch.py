"""Which request goes to which endpoint, and when: the scheduling of one ``score_modes`` call.

Every endpoint has ``concurrency`` slots (threads). A free slot takes the next *pair* from the
shared queue and keeps the pair's other modes in its endpoint's own queue, where the endpoint's
next free slot takes them at once: both modes of a pair go to the same server together, so its
prefix cache shares their images. A fast endpoint simply takes more pairs. Payloads are built by
the slot that sends them, so at most ``concurrency`` requests per endpoint exist at a time.

An endpoint whose request got no HTTP answer on any try is marked down (by the engine); its
queued modes go back to the shared queue for the other endpoints, and when no endpoint is left up
the requests still waiting fail at once instead of each waiting out its own retries.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

Job = tuple[int, str]  # (item index, mode)


class Dispatch:
    """The queues and results of one call; thread-safe."""

    def __init__(self, jobs: list[tuple[int, tuple[str, ...]]], endpoints: list[str],
                 is_up: Callable[[str], bool], closed: threading.Event) -> None:
        self.cond = threading.Condition()
        self.shared: deque[tuple[int, tuple[str, ...]]] = deque(jobs)
        self.local: dict[str, deque[Job]] = {e: deque() for e in endpoints}
        self.remaining = sum(len(modes) for _, modes in jobs)
        self.results: dict[Job, Any] = {}
        self.errors: dict[Job, Exception] = {}
        self.is_up, self.closed = is_up, closed
        self.aborted = False

    def abort(self) -> None:
        """A slot died of a bug: the other slots stop taking work (none waits for it forever)."""
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def take(self, endpoint: str) -> Job | None:
        """The next request for a free slot of ``endpoint``; None when there is nothing left for
        it (all done, engine closed, or the endpoint is down)."""
        with self.cond:
            while True:
                if self.remaining == 0 or self.closed.is_set() or self.aborted or not self.is_up(endpoint):
                    return None
                if self.local[endpoint]:
                    return self.local[endpoint].popleft()
                if self.shared:
                    index, modes = self.shared.popleft()
                    self.local[endpoint].extend((index, m) for m in modes[1:])
                    return index, modes[0]
                self.cond.wait(timeout=1.0)  # woken by requeue/finish; the timeout re-checks close/down

    def finish(self, job: Job, result: Any = None, error: Exception | None = None) -> None:
        with self.cond:
            if error is None:
                self.results[job] = result
            else:
                self.errors[job] = error
            self.remaining -= 1
            self.cond.notify_all()

    def requeue(self, job: Job, endpoint: str, error: Exception) -> None:
        """``job`` found ``endpoint`` unreachable (now marked down): hand it and the endpoint's
        queued modes to the endpoints still up, or fail them all if none is."""
        with self.cond:
            moved = [job, *self.local[endpoint]]
            self.local[endpoint].clear()
            if any(self.is_up(e) for e in self.local):
                self.shared.extendleft((index, (mode,)) for index, mode in reversed(moved))
            else:
                for lost in moved:
                    self.errors[lost] = error
                self.remaining -= len(moved)
            self.cond.notify_all()

    def unfinished(self) -> list[Job]:
        """Requests nobody took (every endpoint went down, or the engine was closed)."""
        with self.cond:
            jobs = list(self.local.values())
            return [(i, m) for i, modes in self.shared for m in modes] + [j for q in jobs for j in q]
