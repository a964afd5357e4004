"""A pykka actor that survives a failing ``tell``.

pykka delivers an error raised while handling an ``ask`` to the asker and keeps the actor alive,
but an error raised while handling a ``tell`` (no one to deliver it to) stops the actor. A placement
service must not die because some other actor told it a malformed message, so `KeepServingActor`
gives every told message a stand-in reply future that logs the error and drops the reply.

It also makes every reply a `CallbackFuture`, awaitable without blocking an event loop, and lets
a handler that must wait for another actor's replies keep answering read-only queries meanwhile
(`KeepServingActor._wait_serving`, Erlang's selective receive): other messages are held back and
handled afterwards, in the order they came. An ask that reaches the mailbox after the actor
stopped is answered `pykka.ActorDeadError` (pykka's would wait for good).

This leans on pykka 4 internals (``_create_actor_inbox``, ``_create_future``,
``_handle_receive``, ``_actor_loop_teardown``, the envelope's ``reply_to`` and
``pykka.messages._ActorStop``);
pyproject pins ``pykka<5`` and ``tests/actors/test_mailbox.py`` fails if they change.
"""

from __future__ import annotations

import collections
import functools
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pykka
from pykka._envelope import Envelope
from pykka.messages import _ActorStop

from placement_actors.actors.futures import CallbackFuture
from placement_actors.domain.errors import PlacementError, UnknownMessageError
from placement_actors.domain.validation import revalidated

if TYPE_CHECKING:
    from pykka._types import OptExcInfo

__all__ = ["KeepServingActor", "admits", "stop_first", "tell_if_alive", "why_stopped"]

logger = logging.getLogger(__name__)


_S = TypeVar("_S")
_M = TypeVar("_M")
_R = TypeVar("_R")


def tell_if_alive(ref: pykka.ActorRef[Any], message: object) -> None:
    """Tell ``ref`` ``message`` from a callback or timer thread; a stopped actor needs none."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        logger.debug("dropped %s: the actor has stopped", type(message).__name__)


def admits(message_type: type[_M]) -> Callable[[Callable[[_S, _M], _R]], Callable[[_S, _M], _R]]:
    """Make a handler act only on a ``message_type`` rebuilt through its constructors.

    Whether the message was made here, told, asked, sent through a proxy or unpickled from another
    process, the handler sees a value its constructors have checked
    (`placement_actors.domain.validation.revalidated`); anything else is an `InvalidSpecError`
    for the sender.
    """

    def wrap(handler: Callable[[_S, _M], _R]) -> Callable[[_S, _M], _R]:
        @functools.wraps(handler)
        def admitted(self: _S, message: _M) -> _R:
            return handler(self, revalidated(message, message_type))

        return admitted

    return wrap


class _ToldReply(pykka.Future[Any]):
    """The reply slot of a told message: drops the value, logs an error instead of raising it."""

    __slots__ = ("_message_type",)

    def __init__(self, message: object) -> None:
        super().__init__()
        self._message_type = type(message).__qualname__

    def set(self, value: Any = None) -> None:  # noqa: ANN401 - any reply is dropped
        """Drop the reply: a tell has no one waiting for it."""
        del value

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        """Log the error the handler raised; the actor goes on serving."""
        exc_type, exc_value, _ = exc_info or sys.exc_info()
        if exc_type is pykka.ActorDeadError:
            logger.debug("told %s dropped: %s", self._message_type, exc_value)
            return
        logger.warning(
            "told %s failed and was dropped: %s: %s",
            self._message_type,
            getattr(exc_type, "__name__", exc_type),
            exc_value,
        )


class _Reply(CallbackFuture[Any]):
    """The reply to an ask: a `PlacementError` in it ends its traceback at the ask.

    A typed error is an answer about the request, not a fault of the actor: the asker's
    traceback shows where it asked, and the error's own traceback does not keep the actor's
    frames (and all they refer to) alive for as long as the asker keeps it. A cause it carries
    (the Ray error behind a `BackendError`) keeps its own traceback, as does any other error,
    for whoever debugs it. pykka logs the whole traceback at INFO level before the reply is set.
    """

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        """Set the error (the one being handled when ``exc_info`` is None) and run the callbacks."""
        exc_type, exc_value, traceback = exc_info or sys.exc_info()
        if isinstance(exc_value, PlacementError):
            exc_value.__traceback__ = traceback = None
        super().set_exception((exc_type, exc_value, traceback))


class _Wake:
    """Put in the inbox as each reply a waiting handler needs arrives."""


_WAKE = _Wake()


class _KeepServingInbox:
    """pykka's actor inbox (``put``, ``get``, ``empty``) on a `queue.SimpleQueue`.

    Senders put envelopes on the C queue. Only the actor's own thread gets from the inbox, and
    only it puts envelopes back (`put_back`), into a front queue read first. A stop sent with
    `put_stop_first` (from any thread) is read before both. Once the actor has stopped
    (`close`), every ask still in the inbox, or put after (pykka's ``ask`` checks that the actor
    lives, then sends: a stop can come in between), is answered `pykka.ActorDeadError` instead
    of waiting for good.
    """

    __slots__ = ("_closed", "_first", "_front", "_queue", "_why_first")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Envelope[Any]] = queue.SimpleQueue()
        self._front: collections.deque[Envelope[Any]] = collections.deque()
        self._first: collections.deque[Envelope[Any]] = collections.deque()  # stops sent first
        self._why_first = ""  # why the first stop sent first was sent
        self._closed = ""  # why the actor stopped, once it has

    @property
    def why_first(self) -> str:
        """Why a stop was sent first (`put_stop_first`), if the actor stops or stopped for it.

        Empty if none was sent, or if the actor had stopped otherwise before it came.
        """
        closed = self._closed
        return self._why_first if not closed or closed == self._why_first else ""

    def put_stop_first(self, envelope: Envelope[Any], why: str) -> None:
        """Send a stop ``envelope`` ahead of every message waiting in the inbox.

        The messages it passes are answered `pykka.ActorDeadError` with ``why`` (the first
        ``why`` given, if several such stops are sent), as are all that come after.
        """
        if not self._why_first:
            self._why_first = why
        self._first.append(envelope)
        self.put(Envelope(_WAKE))  # wakes a `get` that waits on the queue
        if self._closed:  # stopped already, maybe after its last look at `_first`
            self._turn_away_first()

    def put(self, envelope: Envelope[Any], /) -> None:
        """Send ``envelope``; to an actor that has stopped, it is answered at once."""
        self._queue.put(envelope)
        if self._closed:  # the actor's last look at its inbox may have come before this
            self._turn_away()

    def get(self, block: bool = True, timeout: float | None = None) -> Envelope[Any]:  # noqa: FBT001, FBT002 - queue.Queue's signature
        """The next envelope; a told message gets a reply slot that logs instead of raising.

        A wake-up that arrives after its wait ended is handed out too (and ignored by
        `KeepServingActor._handle_receive`).

        Raises:
            queue.Empty: nothing came within ``timeout`` seconds (or at once, if not ``block``).
        """
        if self._first:
            envelope = self._first.popleft()
        elif self._front:
            envelope = self._front.popleft()
        else:
            envelope = self._queue.get(block, timeout)
            if self._first:  # a stop sent first woke this get: it goes before what was taken
                if envelope.message is not _WAKE:
                    self._front.appendleft(envelope)
                envelope = self._first.popleft()
        if envelope.reply_to is None:
            envelope.reply_to = _ToldReply(envelope.message)
        return envelope

    def empty(self) -> bool:
        """Whether no envelope is waiting."""
        return not self._first and not self._front and self._queue.empty()

    def put_back(self, envelopes: Sequence[Envelope[Any]]) -> None:
        """Put ``envelopes`` back at the head of the inbox, in their order (before later ones).

        A stop sent first among them goes back ahead of the rest, and is read first again.
        Called from the actor's own thread only, as `get` is.
        """
        first: list[Envelope[Any]] = []
        rest: list[Envelope[Any]] = []
        for envelope in envelopes:
            (first if isinstance(envelope.message, _FirstStop) else rest).append(envelope)
        self._first.extendleft(reversed(first))
        self._front.extendleft(reversed(rest))

    def close(self, why: str) -> None:
        """The actor has stopped (``why`` says so): answer what waits, and all that comes later.

        Called from the actor's own thread, at its end; senders answer what they put after.
        """
        self._closed = why = self._why_first or why
        self._turn_away_first()
        while self._front:
            _turn_away(self._front.popleft(), why)
        self._turn_away()

    def _turn_away_first(self) -> None:
        while True:  # a sender of a stop and the actor may both be at it
            try:
                envelope = self._first.popleft()
            except IndexError:
                return
            _turn_away(envelope, self._closed)

    def _turn_away(self) -> None:
        while True:
            try:
                envelope = self._queue.get_nowait()
            except queue.Empty:
                return
            _turn_away(envelope, self._closed)


class _FirstStop(_ActorStop):
    """A stop sent ahead of the messages in the inbox (`stop_first`); pykka stops on it."""


def stop_first(ref: pykka.ActorRef[Any], why: str) -> pykka.Future[Any]:
    """Stop the actor ``ref`` before it handles any message waiting in its mailbox.

    ``ref.stop()`` queues the stop behind every message sent before it; this one is read next.
    A message the actor is handling when it comes runs to its end (a waiting handler included:
    its wait holds the stop back with the other messages, and it is read first after). Every
    message it passes, and every one sent after, is answered `pykka.ActorDeadError` with
    ``why``. For an actor with another mailbox than `KeepServingActor`'s, this is
    ``ref.stop(block=False)``, which waits its turn.

    Returns:
        A future that settles (``None``) once the actor has stopped; for another mailbox,
        pykka's future of ``ref.stop(block=False)``.
    """
    inbox = ref.actor_inbox
    if not isinstance(inbox, _KeepServingInbox):
        return ref.stop(block=False)
    stopped: pykka.Future[Any] = CallbackFuture()
    inbox.put_stop_first(Envelope(_FirstStop(), reply_to=stopped), why)
    return stopped


def why_stopped(ref: pykka.ActorRef[Any]) -> str:
    """The ``why`` of the `stop_first` sent to the actor ``ref``; empty if none was sent."""
    inbox = ref.actor_inbox
    return inbox.why_first if isinstance(inbox, _KeepServingInbox) else ""


def _turn_away(envelope: Envelope[Any], why: str) -> None:
    """Answer an envelope the stopped actor will never handle, as pykka's teardown does."""
    if envelope.reply_to is None:  # told: nobody waits
        return
    if isinstance(envelope.message, _ActorStop):
        envelope.reply_to.set(None)  # stopped indeed
    else:
        envelope.reply_to.set_exception((pykka.ActorDeadError, pykka.ActorDeadError(why), None))


def _count_settling(
    futures: Sequence[pykka.Future[Any]], then: Callable[[], object]
) -> Callable[[], int]:
    """Call ``then`` as each of ``futures`` settles; returns "how many have not?"."""
    pending = [len(futures)]
    lock = threading.Lock()

    def settled(_: object) -> None:
        with lock:
            pending[0] -= 1
        then()

    for future in futures:
        future.add_done_callback(settled)  # type: ignore[attr-defined]

    def unsettled() -> int:
        with lock:
            return pending[0]

    return unsettled


class KeepServingActor(pykka.ThreadingActor):
    """A `pykka.ThreadingActor` whose told messages fail like asked ones: the actor lives on.

    Its replies are `CallbackFuture` values, which can be awaited without blocking an event loop.
    Plain messages are dispatched by type through ``_handlers``; a type with no handler is an
    `UnknownMessageError` for the sender.
    """

    _handlers: dict[type[Any], Callable[[Any], Any]]
    _loop_thread: int | None = None  # the actor's own thread, once it runs

    def _actor_loop_setup(self) -> None:
        self._loop_thread = threading.get_ident()
        super()._actor_loop_setup()

    def _actor_loop_teardown(self) -> None:
        inbox = self.actor_inbox
        if isinstance(inbox, _KeepServingInbox):  # answers what comes after the stop, too
            inbox.close(f"{self.actor_ref} stopped before handling the message")
        else:
            super()._actor_loop_teardown()
        self._loop_thread = None  # thread ids are reused: a later thread is not this actor's

    def _handle_receive(self, message: Any) -> Any:  # noqa: ANN401 - any value may arrive
        """Dispatch as pykka does, less wake-ups that came after their wait (or with a stop).

        They are the mailbox's own: no subclass's `on_receive` sees them.
        """
        if message is _WAKE:
            return None
        return super()._handle_receive(message)

    def on_receive(self, message: Any) -> Any:  # noqa: ANN401 - any value may arrive in a mailbox
        """Dispatch a plain message to its handler; an unknown type is an `UnknownMessageError`."""
        handler = self._handlers.get(type(message))
        if handler is None:
            raise UnknownMessageError(type(self).__name__, message)
        return handler(message)

    def _wait_serving(
        self,
        futures: Sequence[pykka.Future[Any]],
        timeout: float,
        serve: frozenset[type[Any]],
    ) -> None:
        """Wait until every one of ``futures`` has settled, answering ``serve`` queries meanwhile.

        Called from a handler (the actor's own thread) that needs other actors' replies: a query
        whose type is in ``serve`` is handled as it arrives, against the state as it is at this
        point of the waiting handler, and must not change that state. Every other message
        (commands, events, a stop, proxy calls) is held back and put back at the head of the
        mailbox when the wait ends, in the order it came. Outside the actor's own thread (a
        constructor), or for futures that run no callbacks, it simply blocks.

        Raises:
            pykka.Timeout: ``timeout`` seconds passed with no reply settling (each reply gets
                ``timeout`` from the one before, as when they are read one after another).
        """
        inbox = self.actor_inbox
        if not self._may_serve_while_waiting(futures) or not isinstance(inbox, _KeepServingInbox):
            for future in futures:  # no wake-up would come, or no mailbox to read: block
                future.get(timeout=timeout)
            return
        unsettled = _count_settling(futures, lambda: inbox.put(Envelope(_WAKE)))
        held: list[Envelope[Any]] = []
        left, deadline = len(futures), time.monotonic() + timeout
        try:
            while (now_left := unsettled()) > 0:
                now = time.monotonic()
                if now_left < left:  # a reply came (each wakes us): the next gets the full time
                    left, deadline = now_left, now + timeout
                elif now >= deadline:  # checked on every pass: a busy mailbox must not defer it
                    msg = f"{left} of {len(futures)} replies not in within {timeout}s of the last"
                    raise pykka.Timeout(msg)
                try:
                    envelope = inbox.get(timeout=max(deadline - now, 0.0))
                except queue.Empty:
                    continue
                if envelope.message is _WAKE:
                    continue
                if type(envelope.message) in serve:
                    self._answer(envelope)
                else:
                    held.append(envelope)
        finally:
            inbox.put_back(held)

    def _may_serve_while_waiting(self, futures: Sequence[pykka.Future[Any]]) -> bool:
        """In a handler (not the constructor), waiting for futures that say when they settle.

        A future settled through a get hook (pykka's ``stop(block=False)``, ``map``...) runs no
        callbacks: such futures are waited for by blocking.
        """
        return self._loop_thread == threading.get_ident() and all(
            isinstance(f, CallbackFuture) and f._get_hook is None  # noqa: SLF001 - pykka's own
            for f in futures
        )

    def _answer(self, envelope: Envelope[Any]) -> None:
        """Handle a query during a wait, as pykka's loop would: its error goes to the asker."""
        reply_to = envelope.reply_to
        assert reply_to is not None  # noqa: S101 - the inbox gives every envelope a reply slot
        try:  # dispatched by type, past any pre-step a subclass's on_receive adds
            reply = KeepServingActor.on_receive(self, envelope.message)
        except Exception:  # noqa: BLE001 - the error belongs to the asker
            reply_to.set_exception()
        else:
            reply_to.set(reply)

    @staticmethod
    def _create_actor_inbox() -> _KeepServingInbox:
        return _KeepServingInbox()

    @staticmethod
    def _create_future() -> CallbackFuture[Any]:
        return _Reply()
