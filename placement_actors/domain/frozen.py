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
    """``__reduce__`` for a frozen dataclass: rebuild it from plain copies of its fields."""
    kwargs = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    return _construct, (type(value), kwargs)
