"""The protocol of the placement actors, on one page.

Every command, query, event and reply is a frozen value; send them with
``actor_ref.ask(message)`` (any actor system or controller) or through the typed proxy
(``proxy.place(message)``). Commands are imperative (`Place`, `Release`), queries start with
``Get`` (`GetClusterView`), events are past tense (`PlacementGroupReady`, `ReplicaFailed`),
replies are nouns (`PlacementResult`, `Released`).

Two actors speak it: the `DeploymentPlacementActor` (`Place`, `Release`, `GetClusterView`, and the
`ReplicaFailed` event) and the `PlanningActor` (`PlanReplica`, `RemoveReplicaGroups`,
`GetReplicaGroups`, and the events its Ray callbacks and timers send it).

Errors travel to the asker's future as the typed `placement_actors.domain.errors.PlacementError`
subclasses; the actor keeps serving after each.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import Any

import pykka

from placement_actors.domain.checked import Checked, mark_checked
from placement_actors.domain.checkpoints import GroupCheckpoint
from placement_actors.domain.constraints import PlacementConstraints
from placement_actors.domain.deployments import Deployment
from placement_actors.domain.errors import CapacityError, InvalidSpecError, PlacementError
from placement_actors.domain.frozen import reduce_frozen
from placement_actors.domain.limits import MAX_NODE_GPUS, MAX_NODE_ID, MAX_NODES, MAX_PLAN_MOVES
from placement_actors.domain.results import (
    DefragmentationPlan,
    NodeAssignment,
    PlacementResult,
    ReplicaMove,
    ReplicaPlacement,
)
from placement_actors.domain.topology import NodeTopology
from placement_actors.domain.validation import check_count, check_text, check_timeout

_NAME = 1024
"""Characters in a deployment or group name a message may carry (names are shorter still)."""

__all__ = [
    "MAX_BATCH",
    "MAX_GROUP_SHARES",
    "PROMPT_QUERIES",
    "AnswerNow",
    "BundleGpusKnown",
    "BundleProbeFailed",
    "BundleProbed",
    "ClusterView",
    "DefragmentationPlan",
    "GetClusterView",
    "GetDefragmentationPlan",
    "GetPlacement",
    "GetPlacementFailure",
    "GetReplicaGroups",
    "GpuHolding",
    "GpusInUse",
    "GroupRescheduling",
    "GroupState",
    "MoveReplica",
    "NodeJoined",
    "NodeLost",
    "NodeState",
    "NodeView",
    "Place",
    "PlaceMany",
    "PlacedMany",
    "Placement",
    "PlacementFailure",
    "PlacementGroupFailed",
    "PlacementGroupReady",
    "PlacementGroupTimedOut",
    "PlacementResult",
    "PlanReplica",
    "Release",
    "Released",
    "RemoveReplicaGroups",
    "ReplicaFailed",
    "ReplicaGroupView",
    "ReplicaGroupsRemoved",
    "ReplicaGroupsView",
    "ReplicaLost",
    "ReplicaMoved",
    "ReplicaPlacement",
    "ReplicaReplaced",
    "Subscribe",
    "Unsubscribe",
]


@dataclass(frozen=True, slots=True)
class Place(Checked):
    """Command: place every replica of ``deployment``, or none of them.

    Re-sending an equal `Place` answers with the first result and reserves nothing new; a `Place`
    for a name that is already placed with a different deployment or constraints is an
    `InvalidSpecError` until that name is released.

    A new `Place` that would be refused although the cluster has the GPUs free (scattered, or off
    the nodes it may use) may first move replicas of deployments placed ``movable``
    (`PlacementConstraints.movable`); their subscribers are told `ReplicaMoved`.

    Reply: `PlacementResult`. Errors: `InvalidSpecError`, `NoGpuNodesError`, `NoEgressNodesError`,
    `NotEnoughGpusError`, and `BackendError` when Ray fails to reserve the replicas.
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
        mark_checked(self)


MAX_BATCH = 1_000
"""The most `Place` messages one `PlaceMany` may carry."""


@dataclass(frozen=True, slots=True)
class PlaceMany(Checked):
    """Command: several `Place` messages in one, for callers that place many deployments at once.

    The actor hop (and, through `PlacementClient`, the round trip to the service) is paid once.
    Each `Place` is decided on its own, exactly as if sent alone: one that does not fit is
    refused without undoing the others. They are decided in order; with ``largest_first``, those
    with the most GPUs per replica first (ties in order), so that small replicas placed before a
    large one cannot leave it only a split. The outcomes come back in the batch's order either way.

    Reply: `PlacedMany`. Errors: `InvalidSpecError` for a malformed batch, or one that asks for
    more than ten times the actor's ``max_remote_replicas`` remote replicas in all (then nothing
    is placed).
    """

    places: tuple[Place, ...]
    largest_first: bool = False

    def __post_init__(self) -> None:
        """Check that it holds 1 to `MAX_BATCH` `Place` values."""
        if not isinstance(self.largest_first, bool):
            msg = f"largest_first must be true or false, got {type(self.largest_first).__name__}"
            raise InvalidSpecError(msg, field="largest_first")
        if (
            not isinstance(self.places, tuple)
            or not 0 < len(self.places) <= MAX_BATCH
            or not all(isinstance(p, Place) for p in self.places)
        ):
            msg = f"PlaceMany needs a tuple of 1 to {MAX_BATCH} Place values"
            raise InvalidSpecError(msg, field="places")
        if self.largest_first:
            try:
                names = {p.deployment.name for p in self.places}
            except (AttributeError, TypeError):  # a Place forged past its constructor
                msg = "PlaceMany holds a Place whose deployment has no valid name"
                raise InvalidSpecError(msg, field="places") from None
            if len(names) < len(self.places):
                # Reordered, a later Place of a name could win over an earlier one: say which.
                msg = "a PlaceMany with largest_first must name each deployment once"
                raise InvalidSpecError(msg, field="places")
        mark_checked(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacedMany:
    """Reply to `PlaceMany`: one outcome per `Place`, in order.

    Attributes:
        outcomes: each `Place`'s `PlacementResult`, or the `PlacementError` it was refused with.
    """

    outcomes: tuple[PlacementResult | PlacementError, ...]

    @property
    def results(self) -> tuple[PlacementResult, ...]:
        """The placed ones."""
        return tuple(o for o in self.outcomes if isinstance(o, PlacementResult))

    @property
    def errors(self) -> tuple[PlacementError, ...]:
        """The refused ones."""
        return tuple(o for o in self.outcomes if isinstance(o, PlacementError))


@dataclass(frozen=True, slots=True)
class Release(Checked):
    """Command: free everything the named deployment holds. Idempotent.

    Reply: `Released`. `BackendError` when Ray refuses to remove the deployment's groups: it
    stays placed, and the release may be sent again. When the planner does not answer in time,
    the `BackendError` says the deployment is released all the same; its GPUs stay held until
    Ray has removed its groups.
    """

    deployment: str

    def __post_init__(self) -> None:
        """Reject a name that is not a string."""
        check_text(self.deployment, "deployment", longest=_NAME)
        mark_checked(self)


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
class GetClusterView(Checked):
    """Query: every node's capacity, free GPUs and holders. Reply: `ClusterView`."""

    def __post_init__(self) -> None:
        """Nothing to check: mark it so."""
        mark_checked(self)


@dataclass(frozen=True, slots=True)
class GetPlacementFailure(Checked):
    """Query: why the last `Place` of a deployment did not fit. Reply: `PlacementFailure`.

    The refusal is kept until the deployment is placed, for the latest `MAX_FAILURES_KEPT`
    refused deployments (`placement_actors.domain.limits`); of an older one, none is told.
    """

    deployment: str

    def __post_init__(self) -> None:
        """Reject a name that is not text."""
        check_text(self.deployment, "deployment", longest=_NAME)
        mark_checked(self)


@dataclass(frozen=True, slots=True)
class GetDefragmentationPlan(Checked):
    """Query: moves of running replicas that would free nodes. Reply: `DefragmentationPlan`.

    Nodes closest to empty are freed first, each only if the replicas it gives up have a node to
    go to (best fit, within their deployments' constraints); a replica that cannot move stays,
    when the others free enough around it. Nothing moves until each move
    is sent as a `MoveReplica`, in the plan's order.

    Attributes:
        gpus: the free GPUs a freed node must have; ``None``: the largest node's GPU count.
        max_moves: the most moves the plan may list (1 to `MAX_PLAN_MOVES`).
    """

    gpus: int | None = None
    max_moves: int = 16

    def __post_init__(self) -> None:
        """Check both counts before any work is sized by them."""
        if self.gpus is not None:
            check_count(self.gpus, "gpus", minimum=1)
            if self.gpus > MAX_NODE_GPUS:
                msg = f"gpus must be at most {MAX_NODE_GPUS}, got {self.gpus}"
                raise InvalidSpecError(msg, field="gpus")
        check_count(self.max_moves, "max_moves", minimum=1)
        if self.max_moves > MAX_PLAN_MOVES:
            msg = f"max_moves must be at most {MAX_PLAN_MOVES}, got {self.max_moves}"
            raise InvalidSpecError(msg, field="max_moves")
        mark_checked(self)


@dataclass(frozen=True, slots=True)
class MoveReplica(Checked):
    """Command: move one running replica, whole, to ``to_node``. Reply: `ReplicaMoved`.

    What a controller sends to carry out a `ReplicaMove` (a refusal's `NotEnoughGpusError.moves`,
    or a `DefragmentationPlan`'s): ``MoveReplica.of(move)``. The service checks the move against
    the ledger as it is now, reserves the GPUs on ``to_node``, removes the replica's placement
    group and builds one pinned to ``to_node`` (new IP, port and GPU-id futures), then gives
    the old node's GPUs back. Whatever ran in the old group stops with it, as in Ray any task or
    actor in a removed placement group does: the controller starts the replica again on the new
    group, exactly as after a `ReplicaReplaced`. Subscribers are told the same `ReplicaMoved`.

    Errors that change nothing: `InvalidSpecError` when the deployment is not placed here, is
    remote, has no such replica, the replica is split over nodes or is no longer where
    ``from_node`` and ``gpus`` say (a stale move: `StalePlacementError`, a subclass), or
    ``to_node`` is unknown, lost, avoided
    (head exclusion) or outside the deployment's constraints (a SPREAD deployment's replica is
    also kept off a node that holds another of its replicas); `NotEnoughGpusError` (retryable)
    when ``to_node`` has too few GPUs free; `BackendError` when Ray refuses to remove the old
    group (it still stands, and the move may be asked for again). A `BackendError` after the old
    group is gone (Ray refused the new one, or the planner did not answer) means the replica is
    lost: subscribers are told `ReplicaLost`, and it is placed again if its `Place` allows. As
    with any group, a moved replica whose new group then fails is lost the same way.

    A move that names ``from_node`` and finds the replica on ``to_node`` already (the same move
    sent again after it was carried out, as Ray sends a restarted service host the calls that
    were on their way) is answered as done: the same `ReplicaMoved`, with the replica's group
    now; nothing moves and no subscriber is told. Without ``from_node``, a move to where the
    replica runs is an `InvalidSpecError`.

    Attributes:
        deployment: the deployment's name.
        replica_index: the replica.
        to_node: where it is to run.
        from_node: where the sender believes it runs (``None``: wherever it runs).
        gpus: the GPUs the sender believes it holds (``None``: however many it holds).
    """

    deployment: str
    replica_index: int
    to_node: str
    _: KW_ONLY
    from_node: str | None = None
    gpus: int | None = None

    def __post_init__(self) -> None:
        """Check every field's type and range."""
        check_text(self.deployment, "deployment", longest=_NAME)
        check_count(self.replica_index, "replica_index")
        check_text(self.to_node, "to_node", longest=MAX_NODE_ID)
        if self.from_node is not None:
            check_text(self.from_node, "from_node", longest=MAX_NODE_ID)
        if self.gpus is not None:
            check_count(self.gpus, "gpus", minimum=1)
            if self.gpus > MAX_NODE_GPUS:
                msg = f"gpus must be at most {MAX_NODE_GPUS}, got {self.gpus}"
                raise InvalidSpecError(msg, field="gpus")
        mark_checked(self)

    @classmethod
    def of(cls, move: ReplicaMove) -> MoveReplica:
        """The command that carries out ``move`` (refused if the replica is no longer there)."""
        return cls(
            deployment=move.deployment,
            replica_index=move.replica_index,
            to_node=move.to_node,
            from_node=move.from_node,
            gpus=move.gpus,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaMoved:
    """Reply to `MoveReplica`, and the event its subscribers are told.

    Attributes:
        deployment: the deployment's name.
        replica_index: the replica that moved.
        from_node: where it ran.
        to_node: where it runs now.
        placement: its new placement group's futures (``None`` without a planner).
        assignments: its GPUs on ``to_node``.
    """

    deployment: str
    replica_index: int
    from_node: str
    to_node: str
    placement: ReplicaPlacement | None
    assignments: tuple[NodeAssignment, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementFailure:
    """Reply to `GetPlacementFailure`.

    Attributes:
        deployment: the name asked about.
        error: the `CapacityError` of its last `Place`, with each node's rejection; ``None`` when
            that `Place` succeeded, or the name was released or never placed.
    """

    deployment: str
    error: CapacityError | None


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuHolding:
    """One held GPU: its ordinal and the deployment holding it."""

    ordinal: int
    deployment: str


class NodeState(enum.Enum):
    """Whether a node the service knows is in the cluster."""

    ALIVE = "alive"
    LOST = "lost"


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
        state: whether the node is alive, or was lost (a lost node holds nothing).
        outside: GPUs other Ray users hold (held when the service started, or taken since):
            not offered until they are given back, not among ``free_gpus`` nor ``held``.
        outside_waiting: GPUs other Ray users took that the service had already promised to
            groups of its own Ray has not made yet (among ``held``): those groups wait for them
            and time out; the GPUs are held as ``outside`` as soon as the service frees them.
        labels: the node's labels, as a ``label_selector`` reads them (empty for a node whose
            labels the service does not know, and for a lost node).
    """

    node_id: str
    capacity: int
    free_gpus: tuple[int, ...]
    held: tuple[GpuHolding, ...]
    is_head: bool
    egress: bool
    remote_replicas: int
    state: NodeState = NodeState.ALIVE
    outside: int = 0
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    outside_waiting: int = 0

    def __post_init__(self) -> None:
        """Keep a read-only copy of ``labels``."""
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def __reduce__(self) -> tuple[Any, tuple[type[Any], dict[str, object]]]:
        """Pickle through a plain copy of ``labels`` (``outside_waiting`` only when not 0)."""
        return reduce_frozen(self, added=frozenset({"outside_waiting"}))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterView:
    """Reply to `GetClusterView`: every node, in node-id order, and the placed deployments.

    ``degraded`` names the placed deployments that miss replicas (a node under them was lost and
    nothing fits yet, or their `Place` turned re-placement off).
    """

    nodes: tuple[NodeView, ...]
    deployments: tuple[str, ...]
    degraded: tuple[str, ...] = ()

    def node(self, node_id: str) -> NodeView:
        """The view of one node.

        Raises:
            KeyError: no such node.
        """
        for view in self.nodes:
            if view.node_id == node_id:
                return view
        raise KeyError(node_id)


# -- PlanningActor ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanReplica:
    """Command to the PlanningActor: reserve one replica on Ray exactly where the ledger chose.

    The reply comes at once, before Ray has scheduled anything: a `ReplicaPlacement` whose futures
    resolve when the group is ready and each bundle's node IP and a free port are known, or fail
    with `PlacementGroupTimeoutError` / `BackendError`.

    Attributes:
        deployment: the deployment's name.
        replica_index: which replica.
        assignments: the nodes and GPUs the ledger chose (one per node; equal GPU shares).
        notify: an actor told `ReplicaFailed` if the group fails after the reply.
        ready_timeout_s: how long Ray may take to make the group ready; ``None`` for the
            planner's default.
        adopt: a group an earlier run of the service made for this replica, to take back
            instead of making a new one (a restarted service, see
            `placement_actors.policies.recovery`): its attempt and group id are kept, its
            recorded ports are claimed again and its other bundles probed anew. ``None``: make
            a new group.
    """

    deployment: str
    replica_index: int
    assignments: tuple[NodeAssignment, ...]
    notify: pykka.ActorRef[Any] | None = None
    ready_timeout_s: float | None = None
    adopt: GroupCheckpoint | None = None

    def __post_init__(self) -> None:
        """Check the fields' types and the timeout."""
        check_text(self.deployment, "deployment", longest=_NAME)
        check_count(self.replica_index, "replica_index")
        if (
            not isinstance(self.assignments, tuple)
            or not 0 < len(self.assignments) <= MAX_NODES
            or not all(isinstance(a, NodeAssignment) for a in self.assignments)
        ):
            msg = "PlanReplica needs a tuple of one or more NodeAssignment values"
            raise InvalidSpecError(msg, field="assignments")
        if self.notify is not None and not isinstance(self.notify, pykka.ActorRef):
            msg = f"notify must be a pykka ActorRef or None, got {type(self.notify).__name__}"
            raise InvalidSpecError(msg, field="notify")
        if self.ready_timeout_s is not None:
            check_timeout(self.ready_timeout_s, "ready_timeout_s")
        if self.adopt is not None and (
            not isinstance(self.adopt, GroupCheckpoint)
            or (self.adopt.deployment, self.adopt.replica_index)
            != (self.deployment, self.replica_index)
            or len(self.adopt.assignments) != len(self.assignments)
        ):
            msg = "adopt must be the GroupCheckpoint of this replica, with one bundle per node"
            raise InvalidSpecError(msg, field="adopt")


@dataclass(frozen=True, slots=True)
class RemoveReplicaGroups:
    """Command: remove a deployment's placement groups.

    Without ``replica_indexes``: every group of the deployment, also ones an earlier run of the
    service left behind (found by name prefix). With them: only those replicas' tracked groups,
    and their failed groups Ray would not remove before (`ReplicaFailed.group_removed`); if Ray
    still will not, the reply is a `BackendError` and nothing is removed.
    Unresolved futures of removed groups fail with `PlacementCancelledError`, or with
    `NodeLostError` when ``lost_node`` is given (``""``: Ray rescheduled the group, node unknown);
    their ports are forgotten.
    Sent to the `DeploymentPlacementActor` (or the service), it is passed to the planner only
    for a deployment it has not placed (leftovers: GPUs it holds for an earlier run's groups,
    given as ``held``, are freed once Ray removed them); a placed one's groups go with its `Release`
    (else an `InvalidSpecError`: its GPUs would stay held on the ledger for groups that are gone).
    Reply: `ReplicaGroupsRemoved`.
    """

    deployment: str
    replica_indexes: tuple[int, ...] | None = None
    lost_node: str | None = None

    def __post_init__(self) -> None:
        """Check the name, the indexes and the node."""
        if self.lost_node is not None:
            check_text(self.lost_node, "lost_node", longest=_NAME)
        check_text(self.deployment, "deployment", longest=_NAME)
        if self.replica_indexes is not None:
            if not isinstance(self.replica_indexes, tuple) or len(self.replica_indexes) > MAX_NODES:
                msg = f"replica_indexes must be a tuple of at most {MAX_NODES} indexes, or None"
                raise InvalidSpecError(msg, field="replica_indexes")
            for index in self.replica_indexes:
                check_count(index, "replica_indexes")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaGroupsRemoved:
    """Reply to `RemoveReplicaGroups`: how many groups Ray removed."""

    deployment: str
    removed: int


@dataclass(frozen=True, slots=True)
class GetReplicaGroups:
    """Query: every placement group the PlanningActor tracks. Reply: `ReplicaGroupsView`."""


class GroupState(enum.Enum):
    """Where a replica's placement group is in its life."""

    PENDING = "pending"
    """Created; Ray has not made it ready yet."""
    PROBING = "probing"
    """Ready; the bundles' IPs and ports are being found."""
    READY = "ready"
    """Ready, and every future has resolved."""
    FAILED = "failed"
    """Timed out or failed; the group was removed and the futures failed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaGroupView:
    """One tracked placement group."""

    group_name: str
    deployment: str
    replica_index: int
    state: GroupState
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaGroupsView:
    """Reply to `GetReplicaGroups`, in group-name order."""

    groups: tuple[ReplicaGroupView, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaFailed:
    """Event: a replica's group failed after it was planned; its reservation should be freed.

    ``attempt`` is the failed group's `ReplicaPlacement.attempt`: a late event about an older
    group of the same replica changes nothing. ``group_removed`` is false when Ray would not
    remove the failed group: it still holds its GPUs on the cluster, so they stay held until a
    later `RemoveReplicaGroups` of that replica succeeds.
    """

    deployment: str
    replica_index: int
    group_name: str
    attempt: int
    error: PlacementError
    group_removed: bool = True

    def __post_init__(self) -> None:
        """Check every field's type."""
        check_text(self.deployment, "deployment", longest=_NAME)
        check_count(self.replica_index, "replica_index")
        _check_group(self.group_name, self.attempt)
        if not isinstance(self.error, PlacementError):
            msg = f"error must be a PlacementError, got {type(self.error).__name__}"
            raise InvalidSpecError(msg, field="error")
        if not isinstance(self.group_removed, bool):
            msg = f"group_removed must be true or false, got {type(self.group_removed).__name__}"
            raise InvalidSpecError(msg, field="group_removed")


def _check_group(group_name: object, attempt: object) -> None:
    check_text(group_name, "group_name", longest=_NAME)
    check_count(attempt, "attempt")


def _check_subscriber(subscriber: object) -> None:
    if not isinstance(subscriber, pykka.ActorRef):
        msg = f"a subscriber is a pykka ActorRef, got {type(subscriber).__name__}"
        raise InvalidSpecError(msg, field="subscriber")
    if not isinstance(getattr(subscriber, "actor_urn", None), str) or not hasattr(
        subscriber, "actor_inbox"
    ):  # made without its actor (unpickled, or built by hand): it can be told nothing
        msg = "a subscriber is the ActorRef of a started pykka actor"
        raise InvalidSpecError(msg, field="subscriber")


def _check_gpu_ids(gpu_ids: object) -> None:
    if not isinstance(gpu_ids, tuple) or len(gpu_ids) > MAX_NODE_GPUS:
        msg = f"gpu_ids must be a tuple of at most {MAX_NODE_GPUS} GPU ids"
        raise InvalidSpecError(msg, field="gpu_ids")
    for gpu in gpu_ids:
        check_count(gpu, "gpu_ids")


def _check_error(error: object) -> None:
    if not isinstance(error, BaseException):
        msg = f"error must be an exception, got {type(error).__name__}"
        raise InvalidSpecError(msg, field="error")


# The events below come from Ray callbacks and timers. ``attempt`` numbers the planner's groups, so
# a late event about a removed group never touches a newer group of the same name.


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementGroupReady:
    """Event (from a Ray callback): the group is ready."""

    group_name: str
    attempt: int

    def __post_init__(self) -> None:
        """Check the fields' types."""
        _check_group(self.group_name, self.attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementGroupFailed:
    """Event (from a Ray callback): waiting for the group failed."""

    group_name: str
    attempt: int
    error: BaseException

    def __post_init__(self) -> None:
        """Check the fields' types."""
        _check_group(self.group_name, self.attempt)
        _check_error(self.error)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementGroupTimedOut:
    """Event (from a timer): the group's ready timeout elapsed."""

    group_name: str
    attempt: int

    def __post_init__(self) -> None:
        """Check the fields' types."""
        _check_group(self.group_name, self.attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleProbed:
    """Event (from a Ray callback): a bundle's probe found its node IP and a free port."""

    group_name: str
    attempt: int
    bundle_index: int
    node_ip: str
    port: int
    gpu_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        """Check the fields' types and the port's range."""
        _check_gpu_ids(self.gpu_ids)
        _check_group(self.group_name, self.attempt)
        check_count(self.bundle_index, "bundle_index")
        check_text(self.node_ip, "node_ip", longest=256)
        check_count(self.port, "port", minimum=1)
        if self.port > 65535:  # noqa: PLR2004 - the largest TCP port
            msg = f"port must be at most 65535, got {self.port}"
            raise InvalidSpecError(msg, field="port")


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleProbeFailed:
    """Event (from a Ray callback): a bundle's probe failed."""

    group_name: str
    attempt: int
    bundle_index: int
    error: BaseException

    def __post_init__(self) -> None:
        """Check the fields' types."""
        _check_group(self.group_name, self.attempt)
        check_count(self.bundle_index, "bundle_index")
        _check_error(self.error)


# -- the cluster as it changes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeJoined:
    """Event (from the cluster watcher, and to subscribers): a node joined the cluster.

    Attributes:
        node: the node, with its GPUs, head flag and labels.
        egress: whether it may run remote deployments.
        in_use: the GPUs Ray showed in use on it, by anyone, in its first settled reading (the
            watcher tells a GPU node's joining once that reading has settled, or after
            ``JOIN_WAIT_S`` with the most its readings showed): those no group of the service
            holds there are held for other users before anything is placed on the node, until
            a later settled `GpusInUse` says otherwise.
    """

    node: NodeTopology
    egress: bool = False
    in_use: int = 0

    def __post_init__(self) -> None:
        """Check the fields' types, and that no more GPUs are in use than the node has."""
        if not isinstance(self.node, NodeTopology) or not isinstance(self.egress, bool):
            msg = "NodeJoined needs a NodeTopology and an egress flag"
            raise InvalidSpecError(msg, field="node")
        check_count(self.in_use, "in_use")
        if self.in_use > self.node.num_gpus:
            msg = f"in_use must be at most the node's {self.node.num_gpus} GPUs, got {self.in_use}"
            raise InvalidSpecError(msg, field="in_use")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLost:
    """Event (from the cluster watcher, and to subscribers): a node left the cluster."""

    node_id: str

    def __post_init__(self) -> None:
        """Check the node id."""
        check_text(self.node_id, "node_id", longest=_NAME)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupRescheduling:
    """Event (from the cluster watcher): Ray is rescheduling a group that was ready.

    ``group_id`` is the cluster's id of that group: an event about an older group of the same
    name (already replaced) changes nothing.
    """

    group_name: str
    group_id: str

    def __post_init__(self) -> None:
        """Check the group's name and id."""
        check_text(self.group_name, "group_name", longest=_NAME)
        check_text(self.group_id, "group_id", longest=_NAME)


MAX_GROUP_SHARES = MAX_NODES * 16
"""(group, node) entries one `GpusInUse` may carry: each holds a GPU, so a cluster of
`MAX_NODES` nodes has at most this many unless its nodes average more than 16 GPUs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GpusInUse:
    """Event (from the cluster watcher): the GPUs Ray has handed out, node by node, settled.

    Attributes:
        in_use: (node id, GPUs) for each alive node where Ray has handed out GPUs, to anyone:
            tasks, actors and placement groups.
        groups: (group name, node id, GPUs) for each node where a live group named like the
            service's groups (``placement-actors:<deployment>:r<replica>``) holds GPUs.
        unsettled: nodes whose reading still moves: what they hold is not said (the other
            fields leave them out), and the service leaves them as they are.
        read_at: when the reading began (before Ray's group table it was made of was read),
            on this process's ``time.monotonic()`` clock (``None``: as it arrives). GPUs the
            service freed after it still count as its own groups' in it.

    The service takes GPUs in use that none of its own groups holds as held by someone else
    (``outside``): it holds more of them off the market when other users take more, and offers
    them again when those users give them back.
    """

    in_use: tuple[tuple[str, int], ...] = ()
    groups: tuple[tuple[str, str, int], ...] = ()
    unsettled: tuple[str, ...] = ()
    read_at: float | None = None

    def __post_init__(self) -> None:
        """Check the sizes and every entry: node ids, names and counts of GPUs."""
        if self.read_at is not None and (
            isinstance(self.read_at, bool)
            or not isinstance(self.read_at, int | float)
            or not math.isfinite(self.read_at)
        ):
            msg = "read_at must be a finite number of seconds, or None"
            raise InvalidSpecError(msg, field="read_at")
        if not all(isinstance(f, tuple) for f in (self.in_use, self.groups, self.unsettled)):
            msg = "GpusInUse needs tuples of (node, gpus), (group, node, gpus) and node ids"
            raise InvalidSpecError(msg, field="in_use")
        if (
            len(self.in_use) > MAX_NODES
            or len(self.unsettled) > MAX_NODES
            or len(self.groups) > MAX_GROUP_SHARES
        ):
            msg = (
                f"GpusInUse may name at most {MAX_NODES} nodes and {MAX_GROUP_SHARES} group "
                f"shares, got {len(self.in_use)} + {len(self.unsettled)} and {len(self.groups)}"
            )
            raise InvalidSpecError(msg, field="in_use")
        for node in self.unsettled:
            check_text(node, "node_id", longest=MAX_NODE_ID)
        for entry in self.in_use:
            if not isinstance(entry, tuple) or len(entry) != 2:  # noqa: PLR2004 - a pair
                msg = f"not a (node, gpus) pair: {entry!r:.80}"
                raise InvalidSpecError(msg, field="in_use")
            check_text(entry[0], "node_id", longest=MAX_NODE_ID)
            _check_gpus(entry[1])
        for share in self.groups:
            if not isinstance(share, tuple) or len(share) != 3:  # noqa: PLR2004 - a triple
                msg = f"not a (group, node, gpus) triple: {share!r:.80}"
                raise InvalidSpecError(msg, field="groups")
            check_text(share[0], "group_name", longest=_NAME)
            check_text(share[1], "node_id", longest=MAX_NODE_ID)
            _check_gpus(share[2])


def _check_gpus(value: object) -> None:
    """GPUs of one node: 1 to `MAX_NODE_GPUS`, else an `InvalidSpecError`."""
    check_count(value, "gpus", minimum=1)
    if value > MAX_NODE_GPUS:  # type: ignore[operator]
        msg = f"gpus must be at most {MAX_NODE_GPUS}, got {value}"
        raise InvalidSpecError(msg, field="gpus")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaLost:
    """Event to subscribers: a replica lost its group; its old futures failed with NodeLostError.

    Attributes:
        deployment: the deployment's name.
        replica_index: which replica.
        node_id: the lost node, or ``None`` when Ray rescheduled the group.
        will_replace: whether the service places it again (its `Place` allows it).
    """

    deployment: str
    replica_index: int
    node_id: str | None
    will_replace: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaReplaced:
    """Event to subscribers: a lost replica was placed again, with new futures."""

    deployment: str
    replica_index: int
    placement: ReplicaPlacement | None
    assignments: tuple[NodeAssignment, ...]


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Command: tell ``subscriber`` the cluster's events from now on. Reply: ``None``.

    The events: `NodeJoined`, `NodeLost`, `ReplicaLost`, `ReplicaReplaced` and `ReplicaMoved`.
    Idempotent.
    """

    subscriber: pykka.ActorRef[Any]

    def __post_init__(self) -> None:
        """Check that the subscriber is an actor."""
        _check_subscriber(self.subscriber)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Command: stop telling ``subscriber`` events. Idempotent. Reply: ``None``."""

    subscriber: pykka.ActorRef[Any]

    def __post_init__(self) -> None:
        """Check that the subscriber is an actor."""
        _check_subscriber(self.subscriber)


@dataclass(frozen=True, slots=True)
class GetPlacement(Checked):
    """Query: a deployment's current result (after any re-placement). Reply: `Placement`."""

    deployment: str

    def __post_init__(self) -> None:
        """Check the name."""
        check_text(self.deployment, "deployment", longest=_NAME)
        mark_checked(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Reply to `GetPlacement`.

    Attributes:
        deployment: the name asked about.
        result: its current result, or ``None`` when it is not placed.
        missing: replica indexes that have no placement now (lost, not placed again yet).
    """

    deployment: str
    result: PlacementResult | None
    missing: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleGpusKnown:
    """Event (from the PlanningActor): the GPU ids Ray gave a bundle, found from inside it.

    The DeploymentPlacementActor sets the ledger's ordinals of that replica on that node to them
    (``attempt`` tells an event about an older group of the replica from the current one).
    """

    deployment: str
    replica_index: int
    attempt: int
    node: str
    gpu_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        """Check the fields' types."""
        check_text(self.deployment, "deployment", longest=_NAME)
        check_count(self.replica_index, "replica_index")
        check_count(self.attempt, "attempt")
        check_text(self.node, "node", longest=_NAME)
        _check_gpu_ids(self.gpu_ids)


PROMPT_QUERIES = (GetClusterView, GetPlacement, GetPlacementFailure, GetDefragmentationPlan)
"""The read-only queries `AnswerNow` may carry."""


@dataclass(frozen=True, slots=True)
class AnswerNow(Checked):
    """Query: answer ``query`` at once, even while a command sent earlier is still under way.

    A plain query waits its turn behind every message sent before it (a pykka mailbox keeps each
    sender's order), so it sees every command sent earlier. Wrapped in `AnswerNow`, it is
    answered as it arrives even while the actor waits for the planner on an earlier command (a
    `Place` of many replicas waits for Ray to accept each group): it then sees that command's
    GPUs already reserved on the ledger, but not its result yet. `PlacementClient` sends its
    queries this way while none of its own commands is under way, so one client's large `Place`
    holds no other client's queries up, and each client still reads its own writes.

    Reply: ``query``'s own reply. Errors: ``query``'s own, and `InvalidSpecError` for a ``query``
    that is not one of `PROMPT_QUERIES`.
    """

    query: GetClusterView | GetPlacement | GetPlacementFailure | GetDefragmentationPlan

    def __post_init__(self) -> None:
        """Check that it carries one of the read-only queries."""
        if not isinstance(self.query, PROMPT_QUERIES):
            names = ", ".join(q.__name__ for q in PROMPT_QUERIES)
            msg = f"AnswerNow carries one of {names}, got {type(self.query).__name__}"
            raise InvalidSpecError(msg, field="query")
        mark_checked(self)
