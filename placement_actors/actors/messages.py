"""The protocol of the placement actors, on one page.

Every command, query and reply is a frozen value; send them with ``actor_ref.ask(message)`` (any
actor system or controller) or through the typed proxy (``proxy.place(message)``). Commands are
imperative (`Place`, `Release`), queries start with ``Get`` (`GetClusterView`), replies are nouns
(`PlacementResult`, `Released`, `ClusterView`).

Errors travel to the asker's future as the typed `placement_actors.domain.errors.PlacementError`
subclasses; the actor keeps serving after each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from placement_actors.domain.constraints import PlacementConstraints
from placement_actors.domain.deployments import Deployment
from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.results import PlacementResult

__all__ = [
    "ClusterView",
    "GetClusterView",
    "GpuHolding",
    "NodeView",
    "Place",
    "PlacementResult",
    "Release",
    "Released",
]


@dataclass(frozen=True, slots=True)
class Place:
    """Command: place every replica of ``deployment``, or none of them.

    Re-sending an equal `Place` answers with the first result and reserves nothing new; a `Place`
    for a name that is already placed with a different deployment or constraints is an
    `InvalidSpecError` until that name is released.

    Reply: `PlacementResult`. Errors: `InvalidSpecError`, `NoGpuNodesError`, `NoEgressNodesError`,
    `NotEnoughGpusError`.
    """

    deployment: Deployment
    constraints: PlacementConstraints = field(default_factory=PlacementConstraints)

    def __post_init__(self) -> None:
        """Reject fields of the wrong type (messages may come from untyped senders)."""
        if not isinstance(self.deployment, Deployment):
            msg = f"Place.deployment must be a Deployment, got {type(self.deployment).__name__}"
            raise InvalidSpecError(msg, field="deployment")
        if not isinstance(self.constraints, PlacementConstraints):
            msg = (
                "Place.constraints must be PlacementConstraints, "
                f"got {type(self.constraints).__name__}"
            )
            raise InvalidSpecError(msg, field="constraints")


@dataclass(frozen=True, slots=True)
class Release:
    """Command: free everything the named deployment holds. Idempotent.

    Reply: `Released`.
    """

    deployment: str

    def __post_init__(self) -> None:
        """Reject a name that is not a string."""
        if not isinstance(self.deployment, str):
            msg = f"Release.deployment must be a deployment name, got {self.deployment!r}"
            raise InvalidSpecError(msg, field="deployment")


@dataclass(frozen=True, slots=True, kw_only=True)
class Released:
    """Reply to `Release`.

    Attributes:
        deployment: the name that was released.
        was_placed: ``False`` when nothing by that name was placed (a repeated release).
        gpus_freed: GPUs returned to the ledger.
        replicas_freed: replicas (local and remote) that were removed.
    """

    deployment: str
    was_placed: bool
    gpus_freed: int
    replicas_freed: int


@dataclass(frozen=True, slots=True)
class GetClusterView:
    """Query: every node's capacity, free GPUs and holders. Reply: `ClusterView`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuHolding:
    """One held GPU: its ordinal and the deployment holding it."""

    ordinal: int
    deployment: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    """One node as the ledger sees it.

    Attributes:
        node_id: the node.
        capacity: GPUs in total.
        free_gpus: free GPU ordinals, ascending.
        held: held GPUs, by ordinal.
        is_head: whether the node is the cluster head.
        egress: whether remote deployments may run here.
        remote_replicas: remote replicas running here.
    """

    node_id: str
    capacity: int
    free_gpus: tuple[int, ...]
    held: tuple[GpuHolding, ...]
    is_head: bool
    egress: bool
    remote_replicas: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterView:
    """Reply to `GetClusterView`: every node, in node-id order, and the placed deployments."""

    nodes: tuple[NodeView, ...]
    deployments: tuple[str, ...]

    def node(self, node_id: str) -> NodeView:
        """The view of one node.

        Raises:
            KeyError: no such node.
        """
        for view in self.nodes:
            if view.node_id == node_id:
                return view
        raise KeyError(node_id)
