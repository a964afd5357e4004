"""The placement-group shape of one tensor-parallel replica.

One node when some node has ``tp_size`` GPUs (STRICT_PACK); otherwise the smallest even split over
``nnodes >= 2`` nodes (STRICT_SPREAD). Never an uneven split: engines such as vLLM fail on a
1 + 3 layout with an invalid device ordinal.
"""

from __future__ import annotations

from collections.abc import Iterable

from placement_actors.domain.errors import (
    MAX_REJECTIONS,
    InvalidSpecError,
    NoGpuNodesError,
    NotEnoughGpusError,
)
from placement_actors.domain.results import (
    BundleStrategy,
    NodeAssignment,
    Rejection,
    ReplicaBundleSpec,
)
from placement_actors.domain.topology import NodeTopology
from placement_actors.policies.node_choice import even_split_nodes, gpu_fit

__all__ = [
    "NODE_ID_LABEL",
    "pinned_bundle_spec",
    "plan_even_split",
    "plan_replica_bundle_shape",
]

NODE_ID_LABEL = "ray.io/node-id"
"""The one label every Ray node carries (open-source Ray sets no node-type label)."""


def plan_even_split(tp_size: int, gpus_per_node: Iterable[int]) -> int | None:
    """The node count of the replica's layout on nodes with ``gpus_per_node`` GPUs each.

    1 when a node has ``tp_size`` GPUs; else the smallest ``nnodes >= 2`` dividing ``tp_size``
    with at least ``nnodes`` nodes of ``tp_size // nnodes`` GPUs; ``None`` when there is none.
    """
    histogram: list[int] = []
    for gpus in gpus_per_node:
        if gpus > 0:
            histogram.extend([0] * (gpus + 1 - len(histogram)))
            histogram[gpus] += 1
    return even_split_nodes(tp_size, histogram)


def plan_replica_bundle_shape(
    tp_size: int,
    *,
    topology: Iterable[NodeTopology],
    ignore_head_node: bool = False,
) -> ReplicaBundleSpec:
    """Plan the bundles of one replica of ``tp_size`` GPUs on ``topology``.

    Args:
        tp_size: GPUs per replica (the tensor-parallel size).
        topology: the nodes, with their GPU counts (total or free, as the caller needs).
        ignore_head_node: keep the replica off head nodes.

    Raises:
        InvalidSpecError: ``tp_size < 1`` (checked before the topology is looked at).
        NoGpuNodesError: the topology is empty, or only head nodes remain to exclude.
        NotEnoughGpusError: no single node and no even split fits.
    """
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        msg = f"tp_size must be an integer >= 1, got {tp_size!r}"
        raise InvalidSpecError(msg, field="tp_size")
    nodes = list(topology)
    if not nodes:
        msg = "the topology has no GPU nodes"
        raise NoGpuNodesError(msg, deployment="")
    exclude = ignore_head_node
    heads = sorted(n.node_id for n in nodes if n.is_head)
    if exclude:
        nodes = [n for n in nodes if not n.is_head]
        if not nodes:
            msg = "every GPU node is a head node and head exclusion is on"
            raise NoGpuNodesError(msg, deployment="")
    nnodes = plan_even_split(tp_size, (n.num_gpus for n in nodes))
    if nnodes is None:
        eligible = sum(1 for n in nodes if n.num_gpus > 0)
        msg = (
            f"no node has {tp_size} GPUs and no even split of TP size {tp_size} fits "
            f"{eligible} eligible node(s)"
        )
        # Every node refuses a whole replica (none holds tp_size), heads left out first (as the
        # placement actor names them); the first by id are named.
        left_out = [
            Rejection(
                node_id=head,
                reason="is a head node (head exclusion is on)",
                requested=tp_size,
                available=0,
            )
            for head in (heads if exclude else ())
        ]
        ordered = sorted(nodes, key=lambda n: n.node_id)
        named = (
            gpu_fit(n.node_id, capacity=n.num_gpus, free=n.num_gpus, gpus=tp_size)
            for n in ordered[: max(0, MAX_REJECTIONS - len(left_out))]
        )
        rejections = (*left_out, *(r for r in named if r is not None))[:MAX_REJECTIONS]
        raise NotEnoughGpusError(
            msg,
            deployment="",
            requested=tp_size,
            available=max((n.num_gpus for n in nodes), default=0),
            largest_node=max((n.num_gpus for n in nodes), default=0),
            rejections=rejections,
            rejections_omitted=max(0, len(nodes) + len(left_out) - len(rejections)),
        )
    per_node = tp_size // nnodes
    selector = None
    if exclude and heads:
        not_heads = {NODE_ID_LABEL: f"!in({','.join(heads)})"}
        selector = tuple(dict(not_heads) for _ in range(nnodes))
    return ReplicaBundleSpec(
        bundles=tuple({"CPU": 1, "GPU": per_node} for _ in range(nnodes)),
        strategy=BundleStrategy.STRICT_PACK if nnodes == 1 else BundleStrategy.STRICT_SPREAD,
        nnodes=nnodes,
        per_node_gpus=per_node,
        bundle_label_selector=selector,
    )


def pinned_bundle_spec(assignments: Iterable[NodeAssignment]) -> ReplicaBundleSpec:
    """The bundle shape that makes Ray reserve exactly what the ledger chose for one replica.

    One bundle per assigned node, each pinned to its node by the ``ray.io/node-id`` label:
    STRICT_PACK for a single node, STRICT_SPREAD for an even split.

    Raises:
        InvalidSpecError: no assignments, a node twice, or an uneven split.
    """
    chosen = list(assignments)
    sizes = {len(a.gpus) for a in chosen}
    nodes = [a.node for a in chosen]
    if not chosen or len(sizes) != 1 or 0 in sizes or len(set(nodes)) != len(nodes):
        msg = f"a replica needs one or more distinct nodes with equal GPU shares, got {chosen!r}"
        raise InvalidSpecError(msg, field="assignments")
    per_node = sizes.pop()
    return ReplicaBundleSpec(
        bundles=tuple({"CPU": 1, "GPU": per_node} for _ in chosen),
        strategy=BundleStrategy.STRICT_PACK if len(chosen) == 1 else BundleStrategy.STRICT_SPREAD,
        nnodes=len(chosen),
        per_node_gpus=per_node,
        bundle_label_selector=tuple({NODE_ID_LABEL: node} for node in nodes),
    )
