"""Pickling for frozen values that hold read-only mappings.

Values are pickled whenever they cross a process (Ray actors, a remote client). A
``types.MappingProxyType`` cannot be pickled, so these values pickle as "call the class again with
plain dict copies", which also re-runs their validation on the other side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

__all__ = ["reduce_frozen"]


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _construct(cls: type[Any], kwargs: dict[str, object]) -> object:
    return cls(**kwargs)


def reduce_frozen(
    value: object, *, added: AbstractSet[str] = frozenset()
) -> tuple[Any, tuple[type[Any], dict[str, object]]]:
    """``__reduce__`` for a frozen dataclass: rebuild it from plain copies of its fields.

    The fields named in ``added`` (fields added to a reply in a later version) are left out
    while they hold their plain default, so that a process running the version before can
    still read the value (a service newer than its clients, say): it cannot read one that
    holds anything else. Every other field is always written, so that a value written down
    (a checkpoint) does not take on a default that a later version changed.
    """
    kwargs = {
        f.name: _plain(getattr(value, f.name))
        for f in dataclasses.fields(value)  # type: ignore[arg-type]
        if f.name not in added or not _at_default(f, getattr(value, f.name))
    }
    return _construct, (type(value), kwargs)


def _at_default(field: dataclasses.Field[Any], value: object) -> bool:
    default = field.default
    if default is dataclasses.MISSING or type(value) is not type(default):
        return False
    return bool(value == default)
