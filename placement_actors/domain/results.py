"""What a placement decision produces, and why a node was passed over."""

from __future__ import annotations

from dataclasses import dataclass

from placement_actors.domain.deployments import Deployment

__all__ = ["NodeAssignment", "PlacementResult", "Rejection"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """One node's reason for not taking a replica (as a scheduler reports per node).

    Attributes:
        node_id: the node.
        reason: a short sentence, e.g. ``"2 free GPUs, 4 needed"``.
        requested: the amount asked for (GPUs for a local replica, 1 egress slot for a remote one).
        available: what the node had to offer.
    """

    node_id: str
    reason: str
    requested: int
    available: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeAssignment:
    """Where one replica (or one node's share of it) runs.

    Attributes:
        replica_index: 0-based index of the replica within its deployment.
        node: the node id.
        gpus: the GPU ordinals reserved on that node, ascending; empty for a remote replica.
    """

    replica_index: int
    node: str
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementResult:
    """The answer to a `Place`: where each replica of the deployment runs.

    Attributes:
        deployment: the deployment that was placed.
        assignments: one entry per replica and node, ordered by replica index.
    """

    deployment: Deployment
    assignments: tuple[NodeAssignment, ...]

    def nodes(self) -> tuple[str, ...]:
        """The distinct nodes used, in first-use order."""
        return tuple(dict.fromkeys(a.node for a in self.assignments))

    def total_gpus(self) -> int:
        """GPUs reserved for the whole deployment."""
        return sum(len(a.gpus) for a in self.assignments)
