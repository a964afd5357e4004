"""`IdentityMemo`: what was worked out about one immutable object, kept by its identity.

A controller sends the same node list (a tuple of thousands of ids) with every `Place`. Checking
it, or intersecting it with the cluster, costs O(list) each time; remembering the answer for that
very tuple costs O(1). Only immutable keys are safe (a tuple of strings cannot change after it
was checked), and the memo holds each key strongly, so its ``id`` is never reused while the
answer is kept. Bounded: when full, it starts again empty.

No lock: each operation is one dictionary read or write, atomic in CPython, and a race between
two threads can only lose an entry (worked out again next time), never mix two answers up.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["IdentityMemo"]

_V = TypeVar("_V")


class IdentityMemo(Generic[_V]):
    """Answers about immutable objects, by object identity; safe across threads, bounded.

    Args:
        size: the most objects remembered.
    """

    def __init__(self, size: int = 256) -> None:
        """Remember nothing yet."""
        self._size = size
        self._kept: dict[int, tuple[object, _V]] = {}

    def get(self, key: object) -> _V | None:
        """The answer kept for this very object, or ``None``."""
        found = self._kept.get(id(key))
        if found is None or found[0] is not key:
            return None
        return found[1]

    def put(self, key: object, value: _V) -> _V:
        """Keep ``value`` as the answer for ``key`` (held strongly until dropped); returns it."""
        if len(self._kept) >= self._size:
            self._kept.clear()
        self._kept[id(key)] = (key, value)
        return value

    def clear(self) -> None:
        """Forget everything (the facts the answers depend on changed)."""
        self._kept.clear()
