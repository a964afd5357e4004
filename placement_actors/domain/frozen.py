"""Pickling for frozen values that hold read-only mappings.

Values are pickled whenever they cross a process (Ray actors, a remote client). A
``types.MappingProxyType`` cannot be pickled, so these values pickle as "call the class again with
plain dict copies", which also re-runs their validation on the other side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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


def reduce_frozen(value: object) -> tuple[Any, tuple[type[Any], dict[str, object]]]:
    """``__reduce__`` for a frozen dataclass: rebuild it from plain copies of its fields.

    A field that holds its plain default is left out: a process running the version before the
    field was added can still read the value (a service newer than its clients, say).
    """
    kwargs = {
        f.name: _plain(getattr(value, f.name))
        for f in dataclasses.fields(value)  # type: ignore[arg-type]
        if not _at_default(f, getattr(value, f.name))
    }
    return _construct, (type(value), kwargs)


def _at_default(field: dataclasses.Field[Any], value: object) -> bool:
    default = field.default
    if default is dataclasses.MISSING or type(value) is not type(default):
        return False
    return bool(value == default)
