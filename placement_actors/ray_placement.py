"""NeMo Curator's placement functions, by the same names, over this package's Ray backend.

Code written against ``nemo_curator.core.serve.placement`` runs unchanged after importing these
names from ``placement_actors.ray_placement`` instead (``_get_gpu_topology`` too, which
Curator's own backends import, and ``PLACEMENT_GROUP_READY_TIMEOUT_S``): plan a replica's
bundle shape from the live cluster, reserve it as a detached, named placement group, ask a
bundle's node for its IP and a free port, and remove groups by name prefix. The functions block;
they are meant for drivers and scripts. Controllers that must not block use the actors
(`placement_actors.wiring.start_on_ray`).

Each function except `plan_replica_bundle_shape` *is* the one implementation in
`placement_actors.backends.ray` (the same function object, not a copy);
`plan_replica_bundle_shape` reads the cluster and the environment and calls the pure policy
`placement_actors.policies.bundle_shapes.plan_replica_bundle_shape`.

Where this is deliberately stricter or different from Curator:

- **Typed errors that are also Curator's builtins.** A ``tp_size`` below 1 raises
  `InvalidSpecError`, a `ValueError`; a TP size no node or even split can hold raises
  `NoGpuNodesError` or `NotEnoughGpusError`, both `RuntimeError` (through `CapacityError`); a
  group not ready in time raises `PlacementGroupTimeoutError`, a `TimeoutError` telling
  "infeasible" from "capacity in use", after removing the group; other Ray failures raise
  `BackendError`, a `RuntimeError`. ``except ValueError`` / ``except RuntimeError`` /
  ``except TimeoutError`` keep working; ``except GetTimeoutError`` / ``except RayError`` (Ray's
  own types, which Curator lets through) do not.
- **An empty prefix is refused.** ``remove_named_pgs_with_prefix("")`` would remove every named
  group of the namespace; it raises `InvalidSpecError` instead.
- **A default ready timeout.** ``build_pg`` and ``build_replica_pg`` wait at most 180 s (as
  Curator does) unless told otherwise; ``bundle_label_selector`` defaults to ``None``.
- **Head exclusion by node id.** ``CURATOR_IGNORE_RAY_HEAD_NODE`` is honoured as well as
  ``PLACEMENT_ACTORS_IGNORE_HEAD_NODE`` (either one set to ``1``, ``true`` or ``yes`` turns it on).
  Curator selects ``ray.io/node-type: worker``, a label open-source Ray sets only when each worker
  is started with it; here each bundle gets a ``ray.io/node-id`` ``!in(<head ids>)`` selector,
  which every Ray node can match.
- **Ports.** Without a ``start_port`` (optional here, required by Curator) the port comes from the
  kernel's ephemeral range and lies outside Ray's worker-port range. A port is never handed out
  twice on one host while it is held: this process holds it until `remove_named_pgs_with_prefix`
  removes its group (or, once a call finds every port it may take held, one read of Ray's group
  table shows it gone: Ray's own ``remove_placement_group`` does not tell this process).
- **A frozen spec.** `ReplicaBundleSpec` is immutable: ``bundles`` is a tuple of read-only
  mappings (index, ``len``, iterate and ``dict(b)`` work; ``spec.bundles == [...]`` is false, and
  Ray's own ``placement_group`` needs ``[dict(b) for b in spec.bundles]``), and ``strategy`` is a
  `BundleStrategy`, a `str` enum equal to ``"STRICT_PACK"`` or ``"STRICT_SPREAD"``.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from placement_actors.backends.ray import (
    READY_TIMEOUT_S,
    build_pg,
    build_replica_pg,
    get_bundle_node_ip,
    get_cluster_topology,
    get_free_port_in_bundle,
    remove_named_pgs_with_prefix,
)
from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.results import ReplicaBundleSpec
from placement_actors.domain.topology import NodeTopology
from placement_actors.policies import bundle_shapes
from placement_actors.settings import IGNORE_HEAD_NODE_ENV, head_exclusion

__all__ = [
    "CURATOR_IGNORE_HEAD_NODE_ENV",
    "PLACEMENT_GROUP_READY_TIMEOUT_S",
    "ReplicaBundleSpec",
    "_get_gpu_topology",
    "build_pg",
    "build_replica_pg",
    "get_bundle_node_ip",
    "get_free_port_in_bundle",
    "plan_replica_bundle_shape",
    "remove_named_pgs_with_prefix",
]

CURATOR_IGNORE_HEAD_NODE_ENV = "CURATOR_IGNORE_RAY_HEAD_NODE"
"""NeMo Curator's head-exclusion variable, honoured with the same values as ours."""

PLACEMENT_GROUP_READY_TIMEOUT_S = READY_TIMEOUT_S
"""How long `build_pg` and `build_replica_pg` wait for a group by default (180 s, as Curator's)."""

_TopologyEntry = Mapping[str, Any] | NodeTopology


def _ignore_head_node() -> bool:
    """Whether either our variable or Curator's asks to keep replicas off head nodes."""
    curator = {IGNORE_HEAD_NODE_ENV: os.environ.get(CURATOR_IGNORE_HEAD_NODE_ENV, "")}
    return head_exclusion() or head_exclusion(environ=curator)


def _node(entry: _TopologyEntry, head_node_id: str | None) -> NodeTopology:
    """One Curator-style ``{"node_id", "num_gpus", "is_head"}`` entry as a `NodeTopology`."""
    if isinstance(entry, NodeTopology):
        return entry
    if not isinstance(entry, Mapping) or "node_id" not in entry or "num_gpus" not in entry:
        msg = f'a topology entry needs "node_id" and "num_gpus", got {entry!r:.200}'
        raise InvalidSpecError(msg, field="_topology")
    gpus = entry["num_gpus"]
    if isinstance(gpus, float) and gpus.is_integer():
        gpus = int(gpus)  # Ray reports resources as floats
    node_id = entry["node_id"]
    is_head = entry.get("is_head", head_node_id is not None and node_id == head_node_id)
    if not isinstance(is_head, bool):
        msg = f"is_head must be True or False, got {is_head!r:.40}"
        raise InvalidSpecError(msg, field="_topology")
    return NodeTopology(node_id=node_id, num_gpus=gpus, is_head=is_head)


def _get_gpu_topology(
    head_node_id: str | None = None, nodes: Iterable[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The alive GPU nodes as Curator's ``{"node_id", "num_gpus", "is_head"}`` dicts.

    From total resources (the cluster's shape, not what is free now), by node id. ``nodes``:
    ``ray.nodes()``-shaped records to read instead of asking Ray (none or empty: Ray is asked);
    ``head_node_id``: the head's id, by default the node holding Ray's head resource. The
    result can be given to `plan_replica_bundle_shape` as ``_topology``.
    """
    return [
        {"node_id": n.node_id, "num_gpus": n.num_gpus, "is_head": n.is_head}
        for n in get_cluster_topology(head_node_id, nodes or None)
    ]


def _tp_size(tp_size: object) -> object:
    """A whole number of another type (a NumPy integer or float, ``4.0``) as an ``int``.

    Anything else is passed on as it is, for the policy to refuse (a ``bool`` too: ``True`` is
    not read as 1).
    """
    if isinstance(tp_size, bool):
        return tp_size
    try:
        return operator.index(tp_size)  # type: ignore[arg-type]
    except TypeError:
        pass
    if isinstance(tp_size, numbers.Real):
        value = float(tp_size)
        if math.isfinite(value) and value.is_integer():
            return int(value)
    return tp_size


def _gpu_nodes(
    head_node_id: str | None,
    topology: Iterable[_TopologyEntry] | None,
    nodes: Iterable[Mapping[str, Any]] | None,
) -> Iterator[NodeTopology]:
    """The GPU nodes, read only when the policy first asks (after it has checked ``tp_size``)."""
    if topology is None:
        yield from get_cluster_topology(head_node_id, nodes or None)
        return
    for entry in topology:
        node = _node(entry, head_node_id)
        if node.num_gpus >= 1:
            yield node


def plan_replica_bundle_shape(
    tp_size: int,
    *,
    head_node_id: str | None = None,
    _topology: Iterable[Mapping[str, Any] | NodeTopology] | None = None,
    _nodes: Iterable[Mapping[str, Any]] | None = None,
) -> ReplicaBundleSpec:
    """Plan the bundles of one replica of ``tp_size`` GPUs on the cluster's total GPUs.

    One node (STRICT_PACK) when an alive node has ``tp_size`` GPUs; otherwise the smallest
    ``nnodes`` dividing ``tp_size`` with ``nnodes`` nodes of ``tp_size // nnodes`` GPUs
    (STRICT_SPREAD). Head nodes are left out when ``PLACEMENT_ACTORS_IGNORE_HEAD_NODE`` or
    ``CURATOR_IGNORE_RAY_HEAD_NODE`` is ``1``, ``true`` or ``yes``; the spec's bundles then carry a
    ``ray.io/node-id`` selector that keeps them off the heads.

    Args:
        tp_size: GPUs per replica (the tensor-parallel size).
        head_node_id: the head's node id; by default the node holding Ray's head resource.
            With ``_topology``, it marks the head of entries that carry no ``is_head``.
        _topology: Curator-style ``{"node_id", "num_gpus", "is_head"}`` entries (or
            `NodeTopology` values) to plan on instead of asking Ray; nodes without a GPU are
            skipped. Takes precedence over ``_nodes``.
        _nodes: ``ray.nodes()``-shaped records to read instead of calling ``ray.nodes()``.

    Returns:
        The replica's bundle shape.

    Raises:
        InvalidSpecError: ``tp_size < 1`` (a `ValueError`; checked before the cluster is read),
            or a ``_topology`` entry is malformed.
        NoGpuNodesError: no alive node has a GPU, or only excluded heads do (a `RuntimeError`).
        NotEnoughGpusError: no node and no even split can hold ``tp_size`` (a `RuntimeError`).
    """
    return bundle_shapes.plan_replica_bundle_shape(
        _tp_size(tp_size),  # type: ignore[arg-type]  # anything else is refused there
        topology=_gpu_nodes(head_node_id, _topology, _nodes),
        ignore_head_node=_ignore_head_node(),
    )
