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
attribute nor ``__getattr__`` can fake it. A value whose class was swapped after construction
(``object.__setattr__(value, "__class__", ...)``) is not checked either.

What the mark does not look for: changes made through the interpreter's back doors (a dict
reached with `gc.get_referents`, memory written with `ctypes`). Code in the process that goes
that far can change a message after it was checked, too.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any

__all__ = ["MAX_INSIDE", "Checked", "is_checked", "mark_checked"]

_PLAIN = frozenset({str, int, float, bool, type(None)})
_DEPTH = 3
"""How deeply `mark_checked` looks into a field's tuples and mappings (the protocol needs 2)."""
MAX_INSIDE = 64
"""The most checked values a mark lists inside its value (each listed once, however often it
occurs). A value holding more (a batch of many messages, a map of many keys) is left unmarked:
it is checked again on arrival, as any value without a mark is, so no message can make its
mark grow with the product of its sizes."""


class Checked:
    """Base of values whose constructor marks them checked (see the module docstring)."""

    __slots__ = ("_checked",)


_MARK = Checked.__dict__["_checked"]  # the slot's descriptor: reads the slot, nothing else


_Reader = Callable[[object], tuple[object, ...]]
_Inside = tuple[object, type[Any], _Reader, tuple[object, ...]]
"""A checked value inside another: itself, its class, its reader, its constructor's values."""


class _Mark:
    """What the constructor saw: the class, each field's value, and every checked value inside.

    ``inside`` lists each checked value within the fields, however deep (in the fields of
    fields, in tuples and read-only mappings), once, with its class, its reader and the field
    values its own constructor saw: one flat pass over it re-reads them all, with no recursion.
    Tuples cannot change and a read-only mapping wraps a dict only its constructor holds, so the
    values found inside them at construction are the ones there still.
    """

    __slots__ = ("cls", "inside", "values")

    def __init__(
        self, cls: type[Any], values: tuple[object, ...], inside: tuple[_Inside, ...]
    ) -> None:
        self.cls = cls
        self.values = values  # held, so an identity test below can never meet a reused id
        self.inside = inside


def is_checked(value: object) -> bool:
    """Whether ``value`` and every value inside it went through their constructors here.

    And have not changed since: a field set again behind the constructor's back (with
    ``object.__setattr__``) unmarks the value, as does any such change inside it.
    """
    if not isinstance(value, Checked):
        return False
    is_ = operator.is_
    try:
        mark = _MARK.__get__(value)  # AttributeError: never marked (unpickled, copied, forged)
        if (
            type(mark) is not _Mark
            or type(value) is not mark.cls
            or not all(map(is_, _reader(mark.cls)(value), mark.values))
        ):
            return False
        for inner, cls, read, seen in mark.inside:  # one flat pass over every value inside
            if type(inner) is not cls or not all(map(is_, read(inner), seen)):
                return False
    except AttributeError:  # never marked, or a field deleted behind the constructor's back
        return False
    return True


def mark_checked(value: Checked) -> None:
    """Mark ``value`` checked if every field holds plain or checked values.

    The constructor's last step, once its own checks have passed.
    """
    try:
        values = _reader(type(value))(value)
    except AttributeError:  # a slot a subclass declares but its constructor never set
        _MARK.__set__(value, None)
        return
    inside: dict[int, _Inside] = {}  # by identity: each value once (the entries hold them)
    checked = all(_gather(field_value, 0, inside) for field_value in values)
    _MARK.__set__(value, _Mark(type(value), values, tuple(inside.values())) if checked else None)


def _list_checked(value: Checked, inside: dict[int, _Inside]) -> bool:
    """List ``value`` and what its mark lists, if it is checked; False if not, or over the bound."""
    if not is_checked(value):
        return False
    mark = _MARK.__get__(value)
    inside[id(value)] = (value, mark.cls, _reader(mark.cls), mark.values)
    for entry in mark.inside:
        inside.setdefault(id(entry[0]), entry)
    return len(inside) <= MAX_INSIDE


def _gather(value: object, depth: int, inside: dict[int, _Inside]) -> bool:
    """Whether ``value`` holds only plain and checked values; lists the checked ones in ``inside``.

    Each checked value is listed once, with what its own mark lists; False as soon as a value
    is neither plain nor checked, nests deeper than `_DEPTH`, or more than `MAX_INSIDE` are
    listed (so a large value costs no more than that before it is left unmarked).
    """
    cls = type(value)
    if cls in _PLAIN or isinstance(value, enum.Enum):
        return True
    if isinstance(value, Checked):
        return id(value) in inside or _list_checked(value, inside)
    if depth >= _DEPTH:
        return False
    if cls is tuple:
        parts: Iterable[object] = value  # type: ignore[assignment]
    elif isinstance(value, MappingProxyType):  # read-only, over a dict its constructor holds
        parts = (part for pair in value.items() for part in pair)
    else:
        return False
    return all(_gather(part, depth + 1, inside) for part in parts)


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
