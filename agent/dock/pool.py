"""The station's copy pool: at most ``dock.copy_workers`` files are copied at once, first come
first served; a bay holding a slot hands it to a waiting bay every 64 MiB (``yield_slot``), so one
big file never starves the others (:class:`agent.dock.station.DockStation` owns one)."""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any


class FairPool:
    """At most ``slots`` holders at once, served first come first served."""

    def __init__(self, slots: int, stop: threading.Event | None = None):
        self.slots = slots
        self.busy = 0
        self.queue: collections.deque = collections.deque()
        self.cv = threading.Condition()
        self.stop = stop or threading.Event()
        self.peak = 0

    def acquire(self) -> None:
        ticket = object()
        with self.cv:
            self.queue.append(ticket)
            try:
                while not (self.queue[0] is ticket and self.busy < self.slots):
                    if self.stop.is_set():
                        raise InterruptedError("station stopping")
                    self.cv.wait(0.5)
            except BaseException:
                self.queue.remove(ticket)
                self.cv.notify_all()
                raise
            self.queue.popleft()
            self.busy += 1
            self.peak = max(self.peak, self.busy)
            self.cv.notify_all()

    def release(self) -> None:
        with self.cv:
            self.busy -= 1
            self.cv.notify_all()

    @contextlib.contextmanager
    def slot(self, who: Any = None):
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def yield_slot(self, who: Any = None) -> None:
        """Let a waiting holder go first (called between chunks by a long copy)."""
        with self.cv:
            if not self.queue:
                return
        self.release()
        self.acquire()

    def status(self) -> dict:
        with self.cv:
            return {"slots": self.slots, "busy": self.busy, "waiting": len(self.queue), "peak": self.peak}
