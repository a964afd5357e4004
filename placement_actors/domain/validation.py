"""One validation, wherever a value comes from.

Values are checked in their constructors (``__post_init__``), but unpickling never runs a
constructor: a message that arrives from another process, or any value built around its
constructor, may hold anything. `revalidated` rebuilds such a value through its constructors,
all the way down, so it is checked exactly as a value made in this process is; the actors call
it on every message before acting on it. A value its constructors marked checked, all the way
down (`placement_actors.domain.checked`), is taken as it is.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, TypeVar

from placement_actors.domain.checked import is_checked
from placement_actors.domain.deployments import ApiKey
from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.labels import LabelSelector
from placement_actors.domain.limits import MAX_TIMEOUT_S
from placement_actors.domain.memo import IdentityMemo

__all__ = ["MAX_DEPTH", "check_count", "check_text", "check_timeout", "revalidated"]

_T = TypeVar("_T")

_SHOWN = 10**12
"""Integers this large are described, not printed (a huge number makes a huge message)."""

MAX_DEPTH = 12
"""How deeply values may nest inside a message (the protocol needs 5)."""


def revalidated(value: object, expected: type[_T]) -> _T:
    """``value`` rebuilt through its constructors, which check every field.

    Args:
        value: a message or value of the protocol, from anywhere (possibly unpickled).
        expected: the type it must be.

    Raises:
        InvalidSpecError: ``value`` is not an ``expected``, a field is missing or malformed, or
            the value nests more deeply than `MAX_DEPTH`.
    """
    if not isinstance(value, expected):
        msg = f"expected a {expected.__name__}, got {type(value).__name__}"
        raise InvalidSpecError(msg, field="message")
    rebuilt = _rebuilt(value, 0, {})
    if not isinstance(rebuilt, expected):  # pragma: no cover - constructors return their type
        msg = f"expected a {expected.__name__}"
        raise InvalidSpecError(msg, field="message")
    return rebuilt


_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})
"""Types that hold no other value: nothing inside them to check."""


_FIELDS: dict[type[Any], tuple[str, ...] | None] = {}


def _init_fields(cls: type[Any]) -> tuple[str, ...] | None:
    """The constructor's field names of a dataclass type, or ``None`` for any other type."""
    if cls not in _FIELDS:
        is_dataclass = dataclasses.is_dataclass(cls)
        _FIELDS[cls] = (
            tuple(f.name for f in dataclasses.fields(cls) if f.init) if is_dataclass else None
        )
    return _FIELDS[cls]


_Seen = dict[int, tuple[object, object]]
"""What one `revalidated` call rebuilt so far: id -> (the value, what it became).

A value that occurs many times in one message (one constraints object shared by a thousand
`Place`s, as pickling keeps it shared) is rebuilt once: the work stays O(distinct values), never
O(product of the message's sizes). The value is held with its answer, so the id stays its own.
"""


def _rebuilt(value: object, depth: int, seen: _Seen) -> object:
    cls = type(value)
    if cls in _PLAIN:
        return value
    found = seen.get(id(value))
    if found is not None:
        return found[1]
    rebuilt = _rebuilt_once(value, cls, depth, seen)
    seen[id(value)] = (value, rebuilt)
    return rebuilt


def _rebuilt_once(value: object, cls: type[Any], depth: int, seen: _Seen) -> object:
    if isinstance(value, enum.Enum | BaseException) or is_checked(value):
        # Errors travel as they are (an event may carry one); a checked value was made here,
        # through its constructors all the way down.
        return value
    if depth > MAX_DEPTH:
        msg = f"the message nests more than {MAX_DEPTH} levels deep"
        raise InvalidSpecError(msg, field="message")
    names = _init_fields(cls)
    if names is not None:
        return _rebuilt_dataclass(value, cls, names, depth, seen)
    if isinstance(value, ApiKey | LabelSelector):
        return _rebuilt_own(value)
    try:
        return _rebuilt_container(value, cls, depth, seen)
    except InvalidSpecError:
        raise
    except (RecursionError, TypeError, ValueError, AttributeError, LookupError):
        # A container that cannot be read (a ChainMap over itself, or over a number): the
        # sender's fault, told without its frames (they may be thousands deep).
        msg = f"malformed {cls.__name__} in the message: it cannot be read"
        raise InvalidSpecError(msg, field="message") from None


def _rebuilt_container(value: object, cls: type[Any], depth: int, seen: _Seen) -> object:
    if isinstance(value, tuple):
        if cls is tuple and len(value) >= _LONG:
            return _plain_tuple(value) or tuple(_rebuilt(v, depth + 1, seen) for v in value)
        return tuple(_rebuilt(v, depth + 1, seen) for v in value)
    if isinstance(value, list):
        return [_rebuilt(v, depth + 1, seen) for v in value]
    if isinstance(value, Mapping):
        return {
            _rebuilt(k, depth + 1, seen): _rebuilt(v, depth + 1, seen) for k, v in value.items()
        }
    return value


def _rebuilt_own(value: ApiKey | LabelSelector) -> object:
    """A value class of the domain (not a dataclass), built again from what it holds."""
    if isinstance(value, LabelSelector):  # from its entries, or refused
        return LabelSelector.of(value)
    try:
        return ApiKey(value.reveal())
    except AttributeError:
        msg = "an ApiKey arrived without its secret"
        raise InvalidSpecError(msg, field="api_key") from None


_LONG = 32
"""Tuples at least this long are remembered once found plain (a node list sent again and again)."""
_PLAIN_TUPLES: IdentityMemo[bool] = IdentityMemo()


def _plain_tuple(value: tuple[object, ...]) -> tuple[object, ...] | None:
    """``value`` itself when it holds only plain values (nothing inside to check), else None.

    A tuple cannot change, so once found plain it is remembered by identity: the same long node
    list sent with every message is walked once.
    """
    if _PLAIN_TUPLES.get(value):
        return value
    if all(type(v) in _PLAIN for v in value):
        _PLAIN_TUPLES.put(value, True)  # noqa: FBT003 - the memo's value
        return value
    return None


def _rebuilt_dataclass(
    value: object, cls: type[Any], names: tuple[str, ...], depth: int, seen: _Seen
) -> object:
    kwargs: dict[str, object] = {}
    for name in names:
        try:
            part = getattr(value, name)
        except AttributeError:
            msg = f"{cls.__name__}.{name} is missing"
            raise InvalidSpecError(msg, field=name) from None
        kwargs[name] = _rebuilt(part, depth + 1, seen)
    try:
        return cls(**kwargs)
    except InvalidSpecError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # A constructor that met a field of a type it never expected: still malformed input.
        msg = f"malformed {cls.__name__}: {type(exc).__name__}"
        raise InvalidSpecError(msg, field="message") from exc


def check_count(value: object, field: str, *, minimum: int = 0) -> None:
    """Raise `InvalidSpecError` unless ``value`` is an ``int`` (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        small = isinstance(value, int) and abs(value) < _SHOWN
        shown = value if small else type(value).__name__
        msg = f"{field} must be an integer >= {minimum}, got {shown}"
        raise InvalidSpecError(msg, field=field)


def check_text(value: object, field: str, *, longest: int = 1024) -> None:
    """Raise `InvalidSpecError` unless ``value`` is a ``str`` of at most ``longest`` characters."""
    if not isinstance(value, str) or len(value) > longest:
        msg = f"{field} must be text of at most {longest} characters"
        raise InvalidSpecError(msg, field=field)


def check_timeout(value: object, field: str) -> None:
    """Raise `InvalidSpecError` unless ``value`` is a finite number of seconds in (0, one day]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_TIMEOUT_S  # NaN fails both comparisons
    ):
        msg = f"{field} must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]"
        raise InvalidSpecError(msg, field=field)
