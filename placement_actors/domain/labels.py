"""Label selectors: the nodes a placement may use, picked by their labels, in Ray's syntax.

A selector maps a label key to what its value must be, as Ray's ``label_selector`` and
``bundle_label_selector`` write it:

- ``"a"``: the node's label ``key`` is ``a``;
- ``"!a"``: it is not ``a`` (a node without the label matches);
- ``"in(a,b)"``: it is one of ``a``, ``b``;
- ``"!in(a,b)"``: it is none of them (a node without the label matches).

Every entry must hold: ``{"zone": "in(us-1a,us-1b)", "gpu-type": "!T4"}`` picks the nodes of
either zone whose GPUs are not T4s. Keys and values are checked when the selector is built, to
the characters Ray allows in labels: a value is letters, digits, ``-``, ``_`` and ``.`` (no
spaces: Ray would look for the space too); a key may also hold ``/`` (``ray.io/node-id``). An
empty value is refused (a node labelled with an empty value cannot be picked). An unknown key is
not an error: it matches no node (or every node, negated), as in Ray.

A selector keeps each entry in one written form (``in(b,a)`` is kept as ``in(a,b)``, ``in(a)``
as ``a``), so two selectors that pick the same nodes by the same entries are equal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

from placement_actors.domain.checked import Checked, is_checked, mark_checked
from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.limits import MAX_LABEL_TEXT, MAX_LABELS

__all__ = ["MAX_SELECTOR_VALUES", "LabelMatch", "LabelSelector"]

MAX_SELECTOR_VALUES = 100
"""Values one ``in(...)`` may list."""

_FIELD = "label_selector"
_IN = re.compile(r"(!?)in\(([^()]*)\)")
_VALUE = re.compile(r"[A-Za-z0-9._-]+")
_KEY = re.compile(r"[A-Za-z0-9._/-]+")


@dataclass(frozen=True, slots=True)
class LabelMatch(Checked):
    """One parsed entry: the node's ``key`` is (or, ``negated``, is not) one of ``values``."""

    key: str
    values: tuple[str, ...]
    negated: bool

    def __post_init__(self) -> None:
        """Check the types (the values themselves are checked by `LabelSelector`)."""
        if not (
            isinstance(self.key, str)
            and type(self.values) is tuple
            and all(isinstance(v, str) for v in self.values)
            and isinstance(self.negated, bool)
        ):
            _refuse("entries must be a key, a tuple of values and a flag")
        mark_checked(self)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with ``labels`` passes this entry."""
        value = labels.get(self.key)
        return (value is not None and value in self.values) != self.negated


class LabelSelector(Checked, Mapping[str, str]):
    """A checked, immutable label selector: a read-only mapping of key -> Ray's value syntax.

    Built from any mapping of strings (``LabelSelector({"zone": "in(a,b)"})``); equal to a
    mapping with the same entries, in any written form; hashable. ``matches`` holds the parsed
    entries, in key order.

    Raises:
        InvalidSpecError: not a mapping of strings, too many entries or values, a text too
            long, or a key or value with characters Ray does not allow in labels (see the
            module docstring).
    """

    __slots__ = ("_entries", "_hash", "matches")

    _entries: Mapping[str, str]
    _hash: int
    matches: tuple[LabelMatch, ...]

    def __init__(self, selector: Mapping[str, str] | None = None) -> None:
        """Check and keep ``selector`` (``None``: the empty selector, which picks every node)."""
        if selector is None:
            selector = {}
        if not isinstance(selector, Mapping):
            _refuse(f"must map label keys to values, got {type(selector).__name__}")
        if len(selector) > MAX_LABELS:
            _refuse(f"may hold at most {MAX_LABELS} entries, got {len(selector)}")
        matches: list[LabelMatch] = []
        for key, value in selector.items():
            if not isinstance(key, str) or not isinstance(value, str):
                _refuse("keys and values must be strings")
            if len(key) > MAX_LABEL_TEXT or not _KEY.fullmatch(key):
                _refuse(
                    f"a key is 1-{MAX_LABEL_TEXT} letters, digits, '-', '_', '.' or '/', "
                    f"got {key[:40]!r}"
                )
            matches.append(_parse(key, value))
        matches.sort(key=lambda m: m.key)
        entries = {m.key: _written(m) for m in matches}
        object.__setattr__(self, "_entries", MappingProxyType(entries))
        object.__setattr__(self, "matches", tuple(matches))
        object.__setattr__(self, "_hash", hash(frozenset(entries.items())))
        mark_checked(self)

    @classmethod
    def of(cls, value: object) -> LabelSelector:
        """``value`` as a selector: itself when it is one, else built (and checked) from it."""
        if type(value) is cls and is_checked(value):
            return value
        if isinstance(value, LabelSelector):  # forged or changed: built again from its entries
            try:
                entries = object.__getattribute__(value, "_entries")
            except AttributeError:
                entries = None
            if not isinstance(entries, Mapping):
                _refuse("was not built by LabelSelector (it holds no entries)")
            value = entries
        try:
            return cls(value)  # type: ignore[arg-type]  # any value: __init__ checks it
        except InvalidSpecError:
            raise
        except (AttributeError, TypeError, ValueError) as exc:  # a mapping that breaks as read
            _refuse(f"could not be read as a mapping ({type(exc).__name__})")

    def __getitem__(self, key: str) -> str:
        """The value syntax for ``key``."""
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        """The keys, sorted."""
        return iter(self._entries)

    def __len__(self) -> int:
        """How many entries."""
        return len(self._entries)

    def __hash__(self) -> int:
        """The same for equal selectors (kept: the entries never change)."""
        return self._hash

    def __eq__(self, other: object) -> bool:
        """Equal to a selector, or a mapping, with the same entries (in any written form)."""
        if not isinstance(other, LabelSelector):
            if not isinstance(other, Mapping):
                return False
            try:
                other = LabelSelector(other)
            except InvalidSpecError:
                return False
        return self._hash == other._hash and self._entries == other._entries

    def __setattr__(self, name: str, value: object) -> NoReturn:
        """Refuse: a selector never changes."""
        msg = "a LabelSelector cannot be changed"
        raise AttributeError(msg)

    def __repr__(self) -> str:
        """``LabelSelector({...})``."""
        return f"LabelSelector({self._entries!r})"

    def __reduce__(self) -> tuple[Any, tuple[dict[str, str]]]:
        """Pickle as the class called on a plain dict (checked again on the other side)."""
        return LabelSelector, (dict(self._entries),)

    def picks(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with ``labels`` passes every entry."""
        return all(match.matches(labels) for match in self.matches)


_LONGEST = len("!in()") + MAX_SELECTOR_VALUES * (MAX_LABEL_TEXT + 1)
"""The longest value text the forms allow: read no further than that."""


def _parse(key: str, value: str) -> LabelMatch:
    if len(value) > _LONGEST:
        _refuse(f"{key}: a value may be at most {_LONGEST} characters, got {len(value)}")
    found = _IN.fullmatch(value)
    if found is not None:
        negated, listed = found.group(1) == "!", found.group(2).split(",")
    else:
        negated, listed = value.startswith("!"), [value.removeprefix("!")]
    if len(listed) > MAX_SELECTOR_VALUES:
        _refuse(f"{key}: in(...) may list at most {MAX_SELECTOR_VALUES} values")
    for v in listed:
        if len(v) > MAX_LABEL_TEXT or not _VALUE.fullmatch(v):
            _refuse(
                f"{key}: {value[:40]!r} is not a value, !value, in(a,b) or !in(a,b) (each value "
                f"1-{MAX_LABEL_TEXT} letters, digits, '-', '_' or '.', no spaces)"
            )
    return LabelMatch(key=key, values=tuple(sorted(set(listed))), negated=negated)


def _written(match: LabelMatch) -> str:
    """The one form an entry is kept in: ``a``, ``!a``, ``in(a,b)`` or ``!in(a,b)``."""
    listed = match.values[0] if len(match.values) == 1 else f"in({','.join(match.values)})"
    return f"!{listed}" if match.negated else listed


def _refuse(problem: str) -> NoReturn:
    msg = f"label_selector {problem}"
    raise InvalidSpecError(msg, field=_FIELD)
