"""A pykka actor that survives a failing ``tell``.

pykka delivers an error raised while handling an ``ask`` to the asker and keeps the actor alive,
but an error raised while handling a ``tell`` (no one to deliver it to) stops the actor. A placement
service must not die because some other actor told it a malformed message, so `KeepServingActor`
gives every told message a stand-in reply future that logs the error and drops the reply.

It also makes every reply a `CallbackFuture`, awaitable without blocking an event loop.

This leans on pykka 4 internals (``_create_actor_inbox``, ``_create_future`` and the envelope's
``reply_to``);
pyproject pins ``pykka<5`` and ``tests/actors/test_mailbox.py`` fails if they change.
"""

from __future__ import annotations

import functools
import logging
import queue
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pykka
from pykka._envelope import Envelope

from placement_actors.actors.futures import CallbackFuture
from placement_actors.domain.errors import UnknownMessageError
from placement_actors.domain.validation import revalidated

if TYPE_CHECKING:
    from pykka._types import OptExcInfo

__all__ = ["KeepServingActor", "admits"]

logger = logging.getLogger(__name__)


_S = TypeVar("_S")
_M = TypeVar("_M")
_R = TypeVar("_R")


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


class _ToldReply(pykka.ThreadingFuture[Any]):
    """The reply slot of a told message: drops the value, logs an error instead of raising it."""

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


class _KeepServingInbox(queue.Queue[Envelope[Any]]):
    def get(self, block: bool = True, timeout: float | None = None) -> Envelope[Any]:  # noqa: FBT001, FBT002 - queue.Queue's signature
        envelope = super().get(block, timeout)
        if envelope.reply_to is None:
            envelope.reply_to = _ToldReply(envelope.message)
        return envelope


class KeepServingActor(pykka.ThreadingActor):
    """A `pykka.ThreadingActor` whose told messages fail like asked ones: the actor lives on.

    Its replies are `CallbackFuture` values, which can be awaited without blocking an event loop.
    Plain messages are dispatched by type through ``_handlers``; a type with no handler is an
    `UnknownMessageError` for the sender.
    """

    _handlers: dict[type[Any], Callable[[Any], Any]]

    def on_receive(self, message: Any) -> Any:  # noqa: ANN401 - any value may arrive in a mailbox
        """Dispatch a plain message to its handler; an unknown type is an `UnknownMessageError`."""
        handler = self._handlers.get(type(message))
        if handler is None:
            raise UnknownMessageError(type(self).__name__, message)
        return handler(message)

    @staticmethod
    def _create_actor_inbox() -> _KeepServingInbox:
        return _KeepServingInbox()

    @staticmethod
    def _create_future() -> CallbackFuture[Any]:
        return CallbackFuture()
