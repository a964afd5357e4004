"""The cluster as Ray sees it: alive nodes, their GPUs, head flag and labels."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ray
from ray._private import state as ray_state

from placement_actors.domain.errors import BackendError
from placement_actors.domain.limits import MAX_LABEL_TEXT, MAX_LABELS
from placement_actors.domain.results import NodeAssignment
from placement_actors.domain.topology import NodeTopology

__all__ = [
    "EGRESS_LABEL",
    "HEAD_RESOURCE",
    "NAME_LABEL",
    "alive_nodes",
    "free_resources",
    "get_cluster_topology",
    "get_egress_nodes",
    "gpus_held_outside",
    "gpus_in_use",
    "is_egress",
    "node_names",
    "node_topology",
]

HEAD_RESOURCE = "node:__internal_head__"
"""The resource only the head node carries (open-source Ray sets no node-type label)."""
logger = logging.getLogger(__name__)

EGRESS_LABEL = "placement-actors.io/egress"
"""A node labelled ``placement-actors.io/egress=true`` may run remote (API) deployments."""
NAME_LABEL = "placement-actors.io/name"
"""An optional friendly node name, shown next to the node id."""


def _alive_nodes(nodes: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    listed = _ray_nodes() if nodes is None else list(nodes)
    return [n for n in listed if n.get("Alive", n.get("alive", False))]


def _ray_nodes() -> list[Mapping[str, Any]]:
    """``ray.nodes()``; a failure (Ray not connected, say) is a `BackendError`."""
    try:
        return list(ray.nodes())  # type: ignore[no-untyped-call]
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"cannot read Ray's node table: {exc}"
        raise BackendError(msg, operation="read nodes") from exc


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
        try:
            head_node_id = ray.get_runtime_context().get_node_id()
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"no node holds Ray's head resource, and Ray cannot say which is this: {exc}"
            raise BackendError(msg, operation="read nodes") from exc
    topology = [node_topology(node, is_head=node["NodeID"] == head_node_id) for node in alive]
    return tuple(sorted((n for n in topology if n.num_gpus >= 1), key=lambda n: n.node_id))


def node_topology(record: Mapping[str, Any], *, is_head: bool | None = None) -> NodeTopology:
    """One ``ray.nodes()`` record as a `NodeTopology` (whole GPUs; labels as text).

    ``is_head`` defaults to whether the record holds Ray's head resource.
    """
    resources = record.get("Resources") or {}
    node_id = str(record["NodeID"])
    return NodeTopology(
        node_id=node_id,
        num_gpus=int(resources.get("GPU", 0)),
        is_head=HEAD_RESOURCE in resources if is_head is None else is_head,
        labels=_labels(node_id, record.get("Labels") or {}),
    )


def _labels(node_id: str, given: Mapping[Any, Any]) -> dict[str, str]:
    """The node's labels that a `NodeTopology` holds; the others are dropped, with a warning.

    Ray accepts longer keys (317 characters) and more labels than placement reads
    (`MAX_LABEL_TEXT`, `MAX_LABELS`): one such node must not keep the service from taking the
    cluster in. The service's own labels are kept first.
    """
    fitting = {
        str(k): str(v)
        for k, v in given.items()
        if len(str(k)) <= MAX_LABEL_TEXT and len(str(v)) <= MAX_LABEL_TEXT
    }
    order = sorted(fitting, key=lambda k: (k not in (EGRESS_LABEL, NAME_LABEL), k))
    kept = {k: fitting[k] for k in order[:MAX_LABELS]}
    if len(kept) < len(given):
        logger.warning(
            "node %s: %d of its %d labels are too long or too many to select by; left out",
            node_id,
            len(given) - len(kept),
            len(given),
        )
    return kept


def is_egress(record: Mapping[str, Any]) -> bool:
    """Whether a ``ray.nodes()`` record is labelled ``placement-actors.io/egress=true``."""
    return str((record.get("Labels") or {}).get(EGRESS_LABEL, "")).lower() == "true"


def gpus_held_outside(held: Mapping[str, Sequence[NodeAssignment]]) -> dict[str, int]:
    """Node id -> GPUs that something other than the service holds there now.

    What Ray says is in use on each alive node, less what the service's own groups of an earlier
    run hold (``held``, from `placement_actors.backends.ray.groups.get_held_groups`): other Ray
    users' tasks, actors and placement groups. Read when the service builds its picture (its
    cluster watcher follows what changes after that: `gpus_in_use`).
    """
    ours: dict[str, int] = {}
    for assignments in held.values():
        for assignment in assignments:
            ours[assignment.node] = ours.get(assignment.node, 0) + len(assignment.gpus)
    outside: dict[str, int] = {}
    for node_id, used in gpus_in_use(_settled_availability()).items():
        if used > ours.get(node_id, 0):
            outside[node_id] = used - ours.get(node_id, 0)
    return outside


def gpus_in_use(
    available: Mapping[str, Mapping[str, float]] | None = None,
    *,
    nodes: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, int]:
    """Node id -> GPUs Ray has handed out there (to anyone), for each alive node that has some.

    ``available`` is Ray's free resources per node, ``nodes`` the alive nodes' ``ray.nodes()``
    records by node id (each read now by default).
    """
    if available is None:
        available = free_resources()
    used: dict[str, int] = {}
    for node_id, record in (alive_nodes() if nodes is None else nodes).items():
        total = int((record.get("Resources") or {}).get("GPU", 0))
        # Ray leaves a resource with nothing free out of a node's free resources altogether.
        free = int(available[node_id].get("GPU", 0)) if node_id in available else total
        if total > free:
            used[node_id] = total - free
    return used


def free_resources() -> Mapping[str, Mapping[str, float]]:
    """Ray's free resources, by node id (a node with none of a resource free lacks its key)."""
    # A developer API of Ray (no stable one gives per-node availability without the dashboard).
    return ray_state.available_resources_per_node()  # type: ignore[no-any-return,no-untyped-call]


def _settled_availability(
    pause_s: float = 0.2, readings: int = 10
) -> Mapping[str, Mapping[str, float]]:
    """Ray's free resources per node, read until two readings a pause apart agree.

    Ray's view of free resources lags removals by a moment: a service started right after
    groups were removed would otherwise take their GPUs for someone else's. At most
    ``readings`` readings (about two seconds).
    """
    # A developer API of Ray (no stable one gives per-node availability without the dashboard).
    last = ray_state.available_resources_per_node()  # type: ignore[no-untyped-call]
    for _ in range(readings - 1):
        time.sleep(pause_s)
        now = ray_state.available_resources_per_node()  # type: ignore[no-untyped-call]
        if now == last:
            break
        last = now
    return last  # type: ignore[no-any-return]


def alive_nodes() -> dict[str, Mapping[str, Any]]:
    """Node id -> ``ray.nodes()`` record of every alive node."""
    return {str(n["NodeID"]): n for n in _alive_nodes(None)}


def get_egress_nodes(nodes: Iterable[Mapping[str, Any]] | None = None) -> tuple[str, ...]:
    """Ids of alive nodes labelled ``placement-actors.io/egress=true``."""
    return tuple(sorted(n["NodeID"] for n in _alive_nodes(nodes) if is_egress(n)))


def node_names(
    nodes: Iterable[Mapping[str, Any]] | None = None, *, include_dead: bool = False
) -> dict[str, str]:
    """Node id -> friendly name, for nodes labelled ``placement-actors.io/name``.

    Alive nodes only, unless ``include_dead`` (to name the nodes a view shows as lost).
    """
    if include_dead:
        listed = list(ray.nodes()) if nodes is None else list(nodes)  # type: ignore[no-untyped-call]
    else:
        listed = _alive_nodes(nodes)
    return {
        n["NodeID"]: str(n["Labels"][NAME_LABEL])
        for n in listed
        if NAME_LABEL in (n.get("Labels") or {})
    }
