"""The cluster as Ray sees it: alive nodes, their GPUs, head flag and labels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ray

from placement_actors.domain.topology import NodeTopology

__all__ = [
    "EGRESS_LABEL",
    "HEAD_RESOURCE",
    "NAME_LABEL",
    "get_cluster_topology",
    "get_egress_nodes",
    "node_names",
]

HEAD_RESOURCE = "node:__internal_head__"
"""The resource only the head node carries (open-source Ray sets no node-type label)."""
EGRESS_LABEL = "placement-actors.io/egress"
"""A node labelled ``placement-actors.io/egress=true`` may run remote (API) deployments."""
NAME_LABEL = "placement-actors.io/name"
"""An optional friendly node name, shown next to the node id."""


def _alive_nodes(nodes: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    listed = list(ray.nodes()) if nodes is None else list(nodes)  # type: ignore[no-untyped-call]
    return [n for n in listed if n.get("Alive", n.get("alive", False))]


def get_cluster_topology(
    head_node_id: str | None = None, nodes: Iterable[Mapping[str, Any]] | None = None
) -> tuple[NodeTopology, ...]:
    """The alive nodes with at least one whole GPU, from their total resources, by node id.

    Args:
        head_node_id: the head's node id; by default the node holding Ray's head resource, else
            the node this driver runs on.
        nodes: ``ray.nodes()``-shaped records to read instead of asking the cluster.
    """
    alive = _alive_nodes(nodes)
    if head_node_id is None:
        head_node_id = next(
            (n["NodeID"] for n in alive if HEAD_RESOURCE in n.get("Resources", {})), None
        )
    if head_node_id is None:
        head_node_id = ray.get_runtime_context().get_node_id()
    topology = []
    for node in alive:
        gpus = int(node.get("Resources", {}).get("GPU", 0))
        if gpus >= 1:
            topology.append(
                NodeTopology(
                    node_id=node["NodeID"],
                    num_gpus=gpus,
                    is_head=node["NodeID"] == head_node_id,
                    labels={str(k): str(v) for k, v in (node.get("Labels") or {}).items()},
                )
            )
    return tuple(sorted(topology, key=lambda n: n.node_id))


def get_egress_nodes(nodes: Iterable[Mapping[str, Any]] | None = None) -> tuple[str, ...]:
    """Ids of alive nodes labelled ``placement-actors.io/egress=true``."""
    return tuple(
        sorted(
            n["NodeID"]
            for n in _alive_nodes(nodes)
            if str((n.get("Labels") or {}).get(EGRESS_LABEL, "")).lower() == "true"
        )
    )


def node_names(nodes: Iterable[Mapping[str, Any]] | None = None) -> dict[str, str]:
    """Node id -> friendly name, for nodes labelled ``placement-actors.io/name``."""
    return {
        n["NodeID"]: str(n["Labels"][NAME_LABEL])
        for n in _alive_nodes(nodes)
        if NAME_LABEL in (n.get("Labels") or {})
    }
