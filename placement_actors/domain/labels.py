"""Label selectors: the nodes a placement may use, picked by their labels, in Ray's syntax.

A selector maps a label key to what its value must be, as Ray's ``label_selector`` and
``bundle_label_selector`` write it:

- ``"a"``: the node's label ``key`` is ``a``;
- ``"!a"``: it is not ``a`` (a node without the label matches);
- ``"in(a,b)"``: it is one of ``a``, ``b``;
- ``"!in(a,b)"``: it is none of them (a node without the label matches).

Every entry must hold: ``{"zone": "in(us-1a,us-1b)", "gpu-type": "!T4"}`` picks the nodes of
either zone whose GPUs are not T4s. Keys and values are checked when the selector is built;
an unknown key is not an error, it matches no node (or every node, negated), as in Ray.
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
_IN = re.compile(r"(!?)in\((.*)\)", re.DOTALL)
_FORBIDDEN = frozenset("(),!")


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

    Built from any mapping of strings (``LabelSelector({"zone": "in(a,b)"})``); equal to a dict
    with the same entries; hashable. ``matches`` holds the parsed entries, in key order.

    Raises:
        InvalidSpecError: not a mapping of strings, too many entries or values, a text too
            long, a value that is empty or holds ``(``, ``)``, ``,`` or ``!`` where Ray's
            syntax does not allow them.
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
        entries: dict[str, str] = {}
        for key, value in selector.items():
            if not isinstance(key, str) or not isinstance(value, str):
                _refuse("keys and values must be strings")
            if not key.strip() or len(key) > MAX_LABEL_TEXT:
                _refuse(f"a key must be 1-{MAX_LABEL_TEXT} characters, not blank")
            entries[key] = value
        matches = tuple(_parse(key, entries[key]) for key in sorted(entries))
        object.__setattr__(self, "_entries", MappingProxyType(dict(sorted(entries.items()))))
        object.__setattr__(self, "matches", matches)
        object.__setattr__(self, "_hash", hash(frozenset(entries.items())))
        mark_checked(self)

    @classmethod
    def of(cls, value: object) -> LabelSelector:
        """``value`` as a selector: itself when it is one, else built (and checked) from it."""
        if type(value) is cls and is_checked(value):
            return value
        if isinstance(value, LabelSelector):  # forged or changed: built again from its entries
            try:
                value = dict(value._entries)  # noqa: SLF001 - the same class
            except (AttributeError, TypeError):
                _refuse("is not a selector LabelSelector built")
        return cls(value)  # type: ignore[arg-type]  # any value: __init__ checks it

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
        """Equal to any mapping with the same entries."""
        if isinstance(other, LabelSelector):
            return self._hash == other._hash and self._entries == other._entries
        return isinstance(other, Mapping) and self._entries == dict(other.items())

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


def _parse(key: str, value: str) -> LabelMatch:
    found = _IN.fullmatch(value.strip())
    if found is not None:
        negated, listed = found.group(1) == "!", found.group(2).split(",")
    else:
        text = value.strip()
        negated, listed = text.startswith("!"), [text.removeprefix("!")]
    if len(listed) > MAX_SELECTOR_VALUES:
        _refuse(f"{key}: in(...) may list at most {MAX_SELECTOR_VALUES} values")
    values = [v.strip() for v in listed]
    for v in values:
        if not v or len(v) > MAX_LABEL_TEXT or _FORBIDDEN & set(v):
            shown = repr(value[:40])
            _refuse(
                f"{key}: {shown} is not a value, !value, in(a,b) or !in(a,b) "
                f"(values of 1-{MAX_LABEL_TEXT} characters without ( ) , !)"
            )
    return LabelMatch(key=key, values=tuple(sorted(set(values))), negated=negated)


def _refuse(problem: str) -> NoReturn:
    msg = f"label_selector {problem}"
    raise InvalidSpecError(msg, field=_FIELD)
