"""Settings read from the process environment, at the edges (wiring, service host, command line).

Policies and actors take plain values; only the composition code reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["IGNORE_HEAD_NODE_ENV", "head_exclusion"]

IGNORE_HEAD_NODE_ENV = "PLACEMENT_ACTORS_IGNORE_HEAD_NODE"
"""Set to ``1``, ``true`` or ``yes`` to keep local replicas off head nodes."""

_TRUE = frozenset({"1", "true", "yes"})


def head_exclusion(
    value: bool | None = None,  # noqa: FBT001 - the caller's own setting, passed on as it is
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Whether to keep local replicas off head nodes: ``value``, or the environment's word.

    With ``value`` ``None``, ``PLACEMENT_ACTORS_IGNORE_HEAD_NODE`` decides: ``1``, ``true`` and
    ``yes`` (any case, surrounding spaces ignored) mean yes; anything else, or unset, no.
    """
    if value is not None:
        return value
    env = os.environ if environ is None else environ
    return env.get(IGNORE_HEAD_NODE_ENV, "").strip().lower() in _TRUE
