"""Deadlines on one thread: many timers without a thread each.

`threading.Timer` starts an operating-system thread per timer (about 0.5 ms on a busy 2-core
machine), and the planner arms one per placement group, twice. `Deadlines` keeps every pending
deadline in a heap served by one daemon thread, started with the first deadline; a cancelled
deadline is dropped when its time comes. The callbacks must be quick and never block (the
planner's only tell a message to an actor).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Deadline", "Deadlines"]

logger = logging.getLogger(__name__)


class Deadline:
    """One pending call; `cancel` it to drop it."""

    __slots__ = ("_cancelled",)

    def __init__(self) -> None:
        """A deadline not cancelled yet."""
        self._cancelled = False

    def cancel(self) -> None:
        """Drop the call if it has not run yet."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        """Whether `cancel` was called."""
        return self._cancelled


class Deadlines:
    """Calls ``callback()`` after ``delay_s``, for many deadlines, on one thread."""

    def __init__(self, name: str = "deadlines") -> None:
        """No thread yet: it starts with the first deadline (``name`` is the thread's)."""
        self._name = name
        self._heap: list[tuple[float, int, Deadline, Callable[[], object]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> Deadline:
        """Run ``callback`` once ``delay_s`` seconds have passed, unless cancelled first."""
        deadline = Deadline()
        with self._wake:
            if self._stopped:
                deadline.cancel()
                return deadline
            entry = (time.monotonic() + delay_s, next(self._order), deadline, callback)
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()
        return deadline

    def stop(self) -> None:
        """Drop every pending deadline and end the thread."""
        with self._wake:
            self._stopped = True
            for _, _, deadline, _ in self._heap:
                deadline.cancel()
            self._heap.clear()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(wait)
                if self._stopped:
                    return
                _, _, deadline, callback = heapq.heappop(self._heap)
            if not deadline.cancelled:
                try:
                    callback()
                except Exception:  # one failing callback must not end every later deadline
                    logger.exception("a deadline callback failed")
