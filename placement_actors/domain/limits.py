"""The ceilings on every number that sizes work, checked before the work is done.

A placement service sits under every controller of a cluster: one message must cost one answer,
whatever numbers it carries. Each ceiling here is far above anything a real cluster needs and low
enough that the work it sizes stays small. A value above its ceiling is refused with a typed
error before anything is built from it.

Ceilings that depend on the cluster are not here: a local deployment may ask for at most the
replicas the allowed nodes could ever hold (checked against the ledger), and the remote-replica
ceiling is a service setting (`DEFAULT_MAX_REMOTE_REPLICAS`).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_REMOTE_REPLICAS",
    "MAX_FAILURES_KEPT",
    "MAX_LABELS",
    "MAX_LABEL_TEXT",
    "MAX_NODES",
    "MAX_NODE_GPUS",
    "MAX_NODE_ID",
    "MAX_PLAN_MOVES",
    "MAX_REPLICA_NODES",
    "MAX_TEXT",
    "MAX_TIMEOUT_S",
]

MAX_FAILURES_KEPT = 1024
"""Refused deployments whose last refusal `GetPlacementFailure` can tell (the latest refused)."""

MAX_NODE_GPUS = 1024
"""GPUs one node may report (the ledger keeps one entry per GPU ordinal)."""

MAX_NODES = 100_000
"""Nodes one topology, cluster file or node list may name."""

MAX_REPLICA_NODES = 128
"""Nodes one replica may be split over (tensor parallelism across more is never useful)."""

MAX_NODE_ID = 256
"""Characters in a node id (Ray's are 56 hex digits)."""

MAX_PLAN_MOVES = 1000
"""Moves one defragmentation plan may list."""

MAX_TEXT = 1024
"""Characters in a model id or a runtime name."""

MAX_LABELS = 64
"""Labels one node may carry."""

MAX_LABEL_TEXT = 256
"""Characters in one label key or value."""

MAX_TIMEOUT_S = 86_400.0
"""The longest timeout anything accepts: one day."""

DEFAULT_MAX_REMOTE_REPLICAS = 10_000
"""Remote replicas one deployment may ask for, unless the service is started with another limit."""
