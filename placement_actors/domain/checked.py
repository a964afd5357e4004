"""`Checked`: values that remember their constructor checked them, all the way down.

Values are checked in their constructors, and the actors check every message again on arrival
(`placement_actors.domain.validation.revalidated`), because a value unpickled from another
process, or built around its constructor, was never checked. For a message made in this very
process that second check repeats the first. A `Checked` value carries a mark, set as the last
step of its constructor, that says: this value and every value inside it went through their
constructors here. `revalidated` takes a marked value as it is, after making sure, by identity,
that no field was set again since (frozen values can still be changed with
``object.__setattr__``), in it or in the checked values it holds.

The mark lives in a slot outside the dataclass fields, so nothing else sees it: it takes no part
in equality, hashing or ``repr``; pickling and copying leave it behind (a value that crossed a
process, or a copy, is checked again); and it is read from the slot itself, so neither a class
attribute nor ``__getattr__`` can fake it.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any

__all__ = ["Checked", "is_checked", "mark_checked"]

_PLAIN = frozenset({str, int, float, bool, type(None)})
_DEPTH = 3
"""How deeply `mark_checked` looks into a field's tuples and mappings (the protocol needs 2)."""


class Checked:
    """Base of values whose constructor marks them checked (see the module docstring)."""

    __slots__ = ("_checked",)


_MARK = Checked.__dict__["_checked"]  # the slot's descriptor: reads the slot, nothing else


class _Mark:
    """What the constructor saw: each field's value, and which fields hold checked values."""

    __slots__ = ("nested", "values")

    def __init__(self, values: tuple[object, ...], nested: tuple[int, ...]) -> None:
        self.values = values  # held, so an identity test below can never meet a reused id
        self.nested = nested


def is_checked(value: object) -> bool:
    """Whether ``value`` and every value inside it went through their constructors here.

    And have not changed since: a field set again behind the constructor's back (with
    ``object.__setattr__``) unmarks the value, as does any such change inside it.
    """
    if not isinstance(value, Checked):
        return False
    try:
        mark = _MARK.__get__(value)
    except AttributeError:  # never marked: unpickled, copied or built around the constructor
        return False
    if type(mark) is not _Mark:
        return False
    try:
        now = _reader(type(value))(value)
    except AttributeError:  # a field deleted behind the constructor's back
        return False
    if not all(map(operator.is_, now, mark.values)):
        return False
    return all(_still_checked(mark.values[i], 0) for i in mark.nested)


def mark_checked(value: Checked) -> None:
    """Mark ``value`` checked if every field holds plain or checked values.

    The constructor's last step, once its own checks have passed.
    """
    try:
        values = _reader(type(value))(value)
    except AttributeError:  # a slot a subclass declares but its constructor never set
        _MARK.__set__(value, None)
        return
    nested = []
    for index, field_value in enumerate(values):
        kind = _kind(field_value, 0)
        if kind is _REFUSED:
            _MARK.__set__(value, None)
            return
        if kind is _NESTED:
            nested.append(index)
    _MARK.__set__(value, _Mark(values, tuple(nested)))


_PLAIN_ONLY, _NESTED, _REFUSED = "plain", "nested", "refused"
_NAMES: dict[type[Any], tuple[str, ...]] = {}


_READERS: dict[type[Any], Callable[[object], tuple[object, ...]]] = {}


def _reader(cls: type[Any]) -> Callable[[object], tuple[object, ...]]:
    """Reads every field of a ``cls`` value at once, as a tuple (in C: this is every message)."""
    found = _READERS.get(cls)
    if found is None:
        names = _names(cls)
        if len(names) == 1:
            one = operator.attrgetter(names[0])
            found = _READERS[cls] = lambda value: (one(value),)
        else:
            found = _READERS[cls] = operator.attrgetter(*names) if names else lambda _: ()
    return found


def _names(cls: type[Any]) -> tuple[str, ...]:
    """The fields of a dataclass; for another `Checked` class, the slots it adds."""
    found = _NAMES.get(cls)
    if found is None:
        if dataclasses.is_dataclass(cls):
            found = tuple(f.name for f in dataclasses.fields(cls))
        else:
            found = tuple(
                dict.fromkeys(  # each slot once, in the order the classes declare them
                    name
                    for klass in reversed(cls.__mro__)
                    for name in _slots_of(klass)
                    if name not in {"_checked", "__weakref__", "__dict__"}
                )
            )
        _NAMES[cls] = found
    return found


def _slots_of(klass: type[Any]) -> tuple[str, ...]:
    """The slots ``klass`` itself declares (``__slots__`` may be one string)."""
    slots = klass.__dict__.get("__slots__", ())
    return (slots,) if isinstance(slots, str) else tuple(slots)


def _kind(value: object, depth: int) -> str:
    """`_PLAIN_ONLY`, `_NESTED` (holds checked values) or `_REFUSED` (holds something else)."""
    cls = type(value)
    if cls in _PLAIN or isinstance(value, enum.Enum):
        return _PLAIN_ONLY
    if isinstance(value, Checked):
        return _NESTED if is_checked(value) else _REFUSED
    if depth >= _DEPTH:
        return _REFUSED
    if isinstance(value, tuple) and cls is tuple:
        parts: Iterable[object] = value
    elif isinstance(value, MappingProxyType):  # read-only, over a dict its constructor holds
        parts = (part for pair in value.items() for part in pair)
    else:
        return _REFUSED
    found = _PLAIN_ONLY
    for part in parts:
        if type(part) in _PLAIN:
            continue
        kind = _kind(part, depth + 1)
        if kind is _REFUSED:
            return _REFUSED
        if kind is _NESTED:
            found = _NESTED
    return found


def _still_checked(value: object, depth: int) -> bool:
    """Whether the checked values inside ``value`` (a field marked nested) are still checked."""
    if isinstance(value, Checked):
        return is_checked(value)
    if isinstance(value, tuple):
        return all(type(v) in _PLAIN or _still_checked(v, depth + 1) for v in value)
    if isinstance(value, MappingProxyType):
        return all(
            _still_checked(k, depth + 1) and _still_checked(v, depth + 1) for k, v in value.items()
        )
    return True  # plain, or an enum member
