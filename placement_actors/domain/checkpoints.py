"""What the service writes down so that a restarted service loses nothing.

Two records, each under its own key in a checkpoint store (Ray's GCS key-value store, on Ray):

- a `DeploymentCheckpoint` per accepted `Place`: the deployment, its constraints, where its
  replicas are now and which of Ray's groups holds each (`ReplicaGroup`), written when it is
  placed or its replicas move (one write per `Place`), removed on `Release`;
- a `GroupCheckpoint` per replica's placement group, written by the planner as each bundle's
  endpoint becomes known and *before* its futures resolve (off the path of any reply), so that
  a restarted planner hands out the same ports again (whoever was told a port may be listening
  on it already) and never gives them to anyone else.

Records are pickled (`encode`) and rebuilt through their constructors when read (`decode`):
unpickling skips validation, and a record may have been written by another version, or be
damaged.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import TypeVar

from placement_actors.domain.constraints import PlacementConstraints
from placement_actors.domain.deployments import Deployment
from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.limits import MAX_REPLICA_NODES
from placement_actors.domain.results import NodeAssignment
from placement_actors.domain.validation import check_count, check_text, revalidated

__all__ = [
    "DEPLOYMENT_KEYS",
    "GROUP_KEYS",
    "MAX_CHECKPOINT_BYTES",
    "DeploymentCheckpoint",
    "GroupCheckpoint",
    "KnownEndpoint",
    "LiveGroup",
    "ReplicaGroup",
    "decode",
    "deployment_key",
    "encode",
    "group_key",
]

DEPLOYMENT_KEYS = "deployment/"
"""The key prefix of `DeploymentCheckpoint` records."""
GROUP_KEYS = "group/"
"""The key prefix of `GroupCheckpoint` records."""
MAX_CHECKPOINT_BYTES = 16 * 1024 * 1024
"""The largest record read back (a deployment of thousands of replicas is well below it)."""

_PROTOCOL = 5
_R = TypeVar("_R", "DeploymentCheckpoint", "GroupCheckpoint")


def deployment_key(name: str) -> str:
    """The store key of a deployment's record."""
    return f"{DEPLOYMENT_KEYS}{name}"


def group_key(group_name: str) -> str:
    """The store key of a placement group's record."""
    return f"{GROUP_KEYS}{group_name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaGroup:
    """Which placement group holds one local replica: Ray's id of it and the planner's attempt."""

    replica_index: int
    group_id: str
    attempt: int

    def __post_init__(self) -> None:
        """Check the fields."""
        check_count(self.replica_index, "replica_index")
        check_text(self.group_id, "group_id", longest=256)
        check_count(self.attempt, "attempt", minimum=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentCheckpoint:
    """A placed deployment as the service must remember it across a restart.

    Attributes:
        deployment: what was placed (an `ApiKey` in it is kept as the secret it is: the store
            must be as private as the service itself).
        constraints: the constraints it was placed with.
        assignments: where its replicas are now (a replica not listed is missing: lost, failed,
            or waiting for capacity).
        groups: for local replicas, the placement group that holds each.
    """

    deployment: Deployment
    constraints: PlacementConstraints
    assignments: tuple[NodeAssignment, ...]
    groups: tuple[ReplicaGroup, ...] = ()

    def __post_init__(self) -> None:
        """Check the fields' types."""
        if not isinstance(self.deployment, Deployment):
            msg = "a deployment checkpoint needs a Deployment"
            raise InvalidSpecError(msg, field="deployment")
        if not isinstance(self.constraints, PlacementConstraints):
            msg = "a deployment checkpoint needs PlacementConstraints"
            raise InvalidSpecError(msg, field="constraints")
        if not isinstance(self.assignments, tuple) or not all(
            isinstance(a, NodeAssignment) and a.replica_index < self.deployment.replicas
            for a in self.assignments
        ):
            msg = "a deployment checkpoint's assignments must be NodeAssignment values of it"
            raise InvalidSpecError(msg, field="assignments")
        if not isinstance(self.groups, tuple) or not all(
            isinstance(g, ReplicaGroup) and g.replica_index < self.deployment.replicas
            for g in self.groups
        ):
            msg = "a deployment checkpoint's groups must be ReplicaGroup values of it"
            raise InvalidSpecError(msg, field="groups")


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownEndpoint:
    """A bundle's endpoint once its probe has answered: node IP, port and GPU ids."""

    node_ip: str
    port: int
    gpu_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        """Check the address, the port and the ids."""
        check_text(self.node_ip, "node_ip", longest=256)
        check_count(self.port, "port", minimum=1)
        if self.port > 65_535:  # noqa: PLR2004 - the largest TCP port
            msg = f"port must be at most 65535, got {self.port}"
            raise InvalidSpecError(msg, field="port")
        if not isinstance(self.gpu_ids, tuple):
            msg = "gpu_ids must be a tuple"
            raise InvalidSpecError(msg, field="gpu_ids")
        for gpu in self.gpu_ids:
            check_count(gpu, "gpu_ids")


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCheckpoint:
    """One replica's placement group as the planner must remember it across a restart.

    Attributes:
        deployment: the deployment's name.
        replica_index: which replica.
        group_id: the cluster's id of the group (a later group of the same name has another).
        attempt: the planner's attempt number of the group.
        assignments: the nodes and GPUs it reserves, one per bundle.
        endpoints: per bundle, its `KnownEndpoint` once the probe answered, else ``None``.
    """

    deployment: str
    replica_index: int
    group_id: str
    attempt: int
    assignments: tuple[NodeAssignment, ...]
    endpoints: tuple[KnownEndpoint | None, ...]

    def __post_init__(self) -> None:
        """Check the fields and that there is one endpoint slot per bundle."""
        check_text(self.deployment, "deployment", longest=1024)
        check_count(self.replica_index, "replica_index")
        check_text(self.group_id, "group_id", longest=256)
        check_count(self.attempt, "attempt", minimum=1)
        if (
            not isinstance(self.assignments, tuple)
            or not 0 < len(self.assignments) <= MAX_REPLICA_NODES
            or not all(isinstance(a, NodeAssignment) for a in self.assignments)
        ):
            msg = "a group checkpoint needs one to MAX_REPLICA_NODES NodeAssignment values"
            raise InvalidSpecError(msg, field="assignments")
        if (
            not isinstance(self.endpoints, tuple)
            or len(self.endpoints) != len(self.assignments)
            or not all(e is None or isinstance(e, KnownEndpoint) for e in self.endpoints)
        ):
            msg = "a group checkpoint needs one endpoint slot (KnownEndpoint or None) per bundle"
            raise InvalidSpecError(msg, field="endpoints")


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveGroup:
    """A placement group the cluster has now, as a restarting service finds it."""

    name: str
    group_id: str
    status: GroupStatus


def encode(record: DeploymentCheckpoint | GroupCheckpoint) -> bytes:
    """The bytes a record is stored as."""
    return pickle.dumps(record, protocol=_PROTOCOL)


def decode(data: bytes, expected: type[_R]) -> _R:
    """A stored record, rebuilt and checked.

    Raises:
        InvalidSpecError: the bytes are not a valid ``expected`` record (damaged, too large, or
            written by an incompatible version).
    """
    if not isinstance(data, bytes) or len(data) > MAX_CHECKPOINT_BYTES:
        msg = "a checkpoint record must be at most MAX_CHECKPOINT_BYTES bytes"
        raise InvalidSpecError(msg, field="checkpoint")
    try:
        value = pickle.loads(data)  # noqa: S301 - the service's own store, as private as it
    except Exception as exc:  # noqa: BLE001 - any damage to the bytes is one kind of failure
        msg = f"an unreadable checkpoint record ({type(exc).__name__})"
        raise InvalidSpecError(msg, field="checkpoint") from None
    return revalidated(value, expected)
