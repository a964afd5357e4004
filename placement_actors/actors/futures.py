"""Futures that work for threads and for asyncio alike.

Every reply of the placement actors, and every node-IP and port future of a `ReplicaPlacement`,
is a `CallbackFuture`: a `pykka.ThreadingFuture` (so ``.get(timeout=...)`` works as pykka users
expect) that also runs callbacks when it settles. That makes ``await future`` loop-aware: the
awaiting task is resumed through ``loop.call_soon_threadsafe`` when the value arrives, instead of
pykka's default ``__await__``, which calls the blocking ``get()`` on the event loop's own thread.

It waits on a lock instead of pykka's condition variable, and keeps its outcome in the type
pykka's `ThreadingFuture` declares for it (``ThreadingFutureResult``, from ``pykka._threading``):
this leans on pykka 4 internals; pyproject pins ``pykka<5`` and ``tests/actors/test_futures.py``
holds pykka's contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pykka
from pykka._threading import ThreadingFutureResult

from placement_actors.domain.results import Eventual

if TYPE_CHECKING:
    from pykka._future import GetHookFunc
    from pykka._types import OptExcInfo

__all__ = ["CallbackFuture", "pipe_to"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class CallbackFuture(pykka.ThreadingFuture[T]):
    """A `pykka.ThreadingFuture` with done-callbacks and an ``__await__`` that never blocks.

    It keeps pykka's contract (``get(timeout=...)`` returns the value or raises the error, any
    number of times; a second ``set`` raises `queue.Full`; a get hook settles it) on two plain
    locks instead of pykka's condition variable: a getter waits on a gate the setter opens, which
    makes an ask about a third cheaper (`bench/decision_paths.py` prints the mailbox's cost).
    """

    def __init__(self) -> None:
        """Create an unsettled future."""
        pykka.Future.__init__(self)  # not ThreadingFuture's: its condition is replaced by the gate
        self._result: ThreadingFutureResult | None = None
        self._state = threading.Lock()  # guards _result, _callbacks and the get hook
        self._gate = threading.Lock()  # held until the future settles (or gets a get hook)
        self._gate.acquire()
        self._callbacks: list[Callable[[CallbackFuture[T]], object]] | None = []

    def get(self, *, timeout: float | None = None) -> T:
        """The value, once set (or the error, raised); `pykka.Timeout` after ``timeout`` seconds."""
        result = self._result
        if result is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            if self._get_hook is None:
                self._wait(timeout)
                result = self._result
            if result is None:  # settled by a get hook: run once, whoever asks (as pykka does)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                with self._state:
                    return pykka.Future.get(self, timeout=left)
        if result.exc_info is None:
            return cast("T", result.value)
        exc_type, exc_value, traceback = result.exc_info
        if exc_value is None:
            assert exc_type is not None  # noqa: S101 - pykka's exc_info carries a type
            exc_value = exc_type()
        if exc_value.__traceback__ is not traceback:
            raise exc_value.with_traceback(traceback)
        raise exc_value

    def _wait(self, timeout: float | None) -> None:
        """Wait for the gate to open; `pykka.Timeout` if it stays shut ``timeout`` seconds.

        Waiting getters pass the gate on, one to the next: a getter whose wait runs out while
        another holds the gate for a moment looks at the future itself before giving up.
        """
        wait = -1 if timeout is None else min(max(timeout, 0.0), threading.TIMEOUT_MAX)
        opened = False
        try:
            opened = self._gate.acquire(timeout=wait)
        finally:
            if opened:
                self._gate.release()  # open for every other getter
        if not opened and self._result is None and self._get_hook is None:
            msg = f"{timeout} seconds"
            raise pykka.Timeout(msg)

    def add_done_callback(self, callback: Callable[[CallbackFuture[T]], object]) -> None:
        """Call ``callback(self)`` once the future settles (at once if it has)."""
        with self._state:
            if self._callbacks is not None:
                self._callbacks.append(callback)
                return
        callback(self)

    def done(self) -> bool:
        """Whether a value or an error has been set."""
        return self._callbacks is None

    def set(self, value: Any = None) -> None:  # noqa: ANN401 - pykka's signature
        """Set the value and run the callbacks; `queue.Full` if it was settled before."""
        self._settle(ThreadingFutureResult(value=value))

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        """Set the error (the one being handled when ``exc_info`` is None) and run the callbacks."""
        self._settle(ThreadingFutureResult(exc_info=exc_info or sys.exc_info()))

    def set_get_hook(self, func: GetHookFunc[T]) -> None:
        """Let ``func(timeout)`` give the value (pykka's ``stop`` and ``map`` do this)."""
        with self._state:
            if self._result is not None:
                raise queue.Full
            first = self._get_hook is None
            pykka.Future.set_get_hook(self, func)
        if first:
            self._gate.release()  # a getter waiting on the gate goes on to the hook

    def _settle(self, result: ThreadingFutureResult) -> None:
        with self._state:
            if self._result is not None or self._get_hook is not None:
                raise queue.Full
            try:
                self._result = result
                callbacks, self._callbacks = self._callbacks or [], None
            finally:  # once the result is in, the gate opens, whatever interrupts this
                self._gate.release()
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a callback's failure must not reach the code that set the value
                logger.exception("a future callback failed")

    def remove_done_callback(self, callback: Callable[[CallbackFuture[T]], object]) -> None:
        """Forget ``callback`` if it has not run yet."""
        with self._state:
            if self._callbacks is not None and callback in self._callbacks:
                self._callbacks.remove(callback)

    # Derived futures settle through callbacks too (pykka's own map/filter/reduce/join use a get
    # hook, which would run no callback and could only be awaited from a thread). A future that
    # a get hook settles runs no callback either: what is derived from it gets a hook in turn.

    def _derive(self, compute: Callable[[Any], Any]) -> CallbackFuture[Any]:
        derived: CallbackFuture[Any] = CallbackFuture()
        if self._get_hook is not None:
            derived.set_get_hook(lambda timeout: compute(self.get(timeout=timeout)))
            return derived

        def settle(source: CallbackFuture[T]) -> None:
            try:
                value = compute(source.get(timeout=0))
            except BaseException:  # noqa: BLE001 - the error belongs to the derived future
                derived.set_exception()
            else:
                derived.set(value)

        self.add_done_callback(settle)
        return derived

    def map(self, func: Callable[[T], Any]) -> CallbackFuture[Any]:
        """A future of ``func(value)``."""
        return self._derive(func)

    def filter(self, func: Callable[[Any], bool]) -> CallbackFuture[Any]:
        """A future of the items of the (iterable) value for which ``func`` is true."""
        return self._derive(lambda value: [item for item in value if func(item)])

    def reduce(self, func: Callable[[Any, Any], Any], *args: Any) -> CallbackFuture[Any]:  # noqa: ANN401
        """A future of ``functools.reduce(func, value, *args)``."""
        return self._derive(lambda value: functools.reduce(func, value, *args))

    def join(self, *futures: pykka.Future[Any]) -> CallbackFuture[Any]:
        """A future of the list of this future's value and ``futures``' values.

        It settles once every one of them has (with the first error, in their order), without
        blocking the thread that sets any of them; futures that run no callbacks (of another
        kind, or settled by a get hook) are read when the joined future is.
        """
        joined: CallbackFuture[Any] = CallbackFuture()
        everyone: tuple[pykka.Future[Any], ...] = (self, *futures)
        if not all(isinstance(f, CallbackFuture) and f._get_hook is None for f in everyone):  # noqa: SLF001 - our own class
            joined.set_get_hook(lambda timeout: _values(everyone, timeout))
            return joined
        pending = _count_down(len(everyone))

        def settled(_: object) -> None:
            if pending():
                return
            try:
                value = _values(everyone, 0)
            except BaseException:  # noqa: BLE001 - the error belongs to the joined future
                joined.set_exception()
            else:
                joined.set(value)

        for future in everyone:
            future.add_done_callback(settled)  # type: ignore[attr-defined]
        return joined

    def __await__(self) -> Generator[Any, None, T]:
        """Wait without blocking the event loop."""
        loop = asyncio.get_running_loop()
        if self._get_hook is not None:  # settled by a get hook someone set: no callback comes
            return loop.run_in_executor(None, self.get).__await__()
        bridge: asyncio.Future[T] = loop.create_future()

        def wake(settled: CallbackFuture[T]) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_transfer, settled, bridge)

        self.add_done_callback(wake)
        bridge.add_done_callback(
            lambda b: self.remove_done_callback(wake) if b.cancelled() else None
        )
        return bridge.__await__()

    __iter__ = __await__


def _values(futures: Sequence[pykka.Future[Any]], timeout: float | None) -> list[Any]:
    """Each future's value, in order (the first error raised), within ``timeout`` in all."""
    deadline = None if timeout is None else time.monotonic() + timeout
    return [
        f.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        for f in futures
    ]


def _count_down(count: int) -> Callable[[], int]:
    """A countdown from ``count`` for many threads: each call takes one off, says how many left."""
    left = [count]
    lock = threading.Lock()

    def tick() -> int:
        with lock:
            left[0] -= 1
            return left[0]

    return tick


def _transfer(source: CallbackFuture[T], target: asyncio.Future[T]) -> None:
    if target.cancelled():
        return
    try:
        value = source.get(timeout=0)
    except StopIteration as exc:  # asyncio cannot raise StopIteration into a task
        target.set_exception(RuntimeError(f"the reply raised StopIteration: {exc!r}"))
    except BaseException as exc:  # noqa: BLE001 - every error belongs to the awaiting task
        target.set_exception(exc)
    else:
        target.set_result(value)


def pipe_to(
    future: Eventual[T],
    actor: pykka.ActorRef[Any],
    message_from: Callable[[Eventual[T]], object],
) -> None:
    """When ``future`` settles, tell ``actor`` the message ``message_from(future)`` makes.

    The actor way to wait: instead of blocking a handler on ``.get()``, turn the result into a
    message (``message_from`` may call ``future.get(timeout=0)``, which then returns at once or
    raises the future's error). A future of another kind is watched from a helper thread.
    """

    def deliver(settled: Eventual[T]) -> None:
        try:
            actor.tell(message_from(settled))
        except pykka.ActorDeadError:
            logger.debug("pipe_to: %s has stopped", actor)

    if isinstance(future, CallbackFuture):
        future.add_done_callback(deliver)
        return

    def watch() -> None:
        with contextlib.suppress(Exception):  # message_from reads the error from the future
            future.get()
        deliver(future)

    threading.Thread(target=watch, name="pipe_to", daemon=True).start()
