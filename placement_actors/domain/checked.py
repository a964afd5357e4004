"""`Checked`: values that remember their constructor checked them, all the way down.

Values are checked in their constructors, and the actors check every message again on arrival
(`placement_actors.domain.validation.revalidated`), because a value unpickled from another
process, or built around its constructor, was never checked. For a message made in this very
process that second check repeats the first. A `Checked` value carries a mark, set as the last
step of its constructor, that says: this value and every value inside it went through their
constructors here. `revalidated` takes a marked value as it is.

The mark lives in a slot outside the dataclass fields, so nothing else sees it: it takes no part
in equality, hashing or ``repr``; pickling and copying leave it behind (a value that crossed a
process, or a copy, is checked again); and it is read from the slot itself, so neither a class
attribute nor ``__getattr__`` can fake it.
"""

from __future__ import annotations

import dataclasses
import enum
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


def is_checked(value: object) -> bool:
    """Whether ``value`` and every value inside it went through their constructors here."""
    if not isinstance(value, Checked):
        return False
    try:
        return _MARK.__get__(value) is True
    except AttributeError:  # never marked: unpickled, copied or built around the constructor
        return False


def mark_checked(value: Checked) -> None:
    """Mark ``value`` checked if every field holds plain or checked values.

    The constructor's last step, once its own checks have passed.
    """
    _MARK.__set__(value, all(_holds_checked(v, 0) for v in _field_values(value)))


def _field_values(value: Checked) -> list[object]:
    if dataclasses.is_dataclass(value):
        return [getattr(value, f.name) for f in _fields(type(value))]
    return []  # not a dataclass: its constructor checked all it holds


_FIELDS: dict[type[Any], tuple[dataclasses.Field[Any], ...]] = {}


def _fields(cls: type[Any]) -> tuple[dataclasses.Field[Any], ...]:
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = dataclasses.fields(cls)
    return found


def _holds_checked(value: object, depth: int) -> bool:
    cls = type(value)
    if cls in _PLAIN or isinstance(value, enum.Enum):
        return True
    if isinstance(value, Checked):
        return is_checked(value)
    if depth >= _DEPTH:
        return False
    if isinstance(value, tuple) and cls is tuple:
        return all(type(v) in _PLAIN or _holds_checked(v, depth + 1) for v in value)
    if isinstance(value, MappingProxyType):  # read-only, over a dict its constructor holds alone
        return all(
            _holds_checked(k, depth + 1) and _holds_checked(v, depth + 1) for k, v in value.items()
        )
    return False
