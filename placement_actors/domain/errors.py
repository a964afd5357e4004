"""The one error tree of placement-actors.

Every error the library raises on purpose is a `PlacementError`; each also subclasses the builtin a
caller would naturally catch, and carries structured fields, not only text::

    PlacementError
    ├── InvalidSpecError (ValueError)        a malformed deployment, message, constraint or file
    │   └── ConfigFileError                  ... in a YAML file: names the file, line and field
    ├── UnknownMessageError (TypeError)      an actor was sent a message type it does not handle
    ├── CapacityError (RuntimeError)         the cluster cannot hold this deployment
    │   ├── NoGpuNodesError                  no allowed node has any GPU
    │   ├── NoEgressNodesError               no allowed node can reach the provider's network
    │   └── NotEnoughGpusError               GPU nodes exist, but none has enough free GPUs
    ├── PlacementGroupTimeoutError (TimeoutError)  Ray did not make a group ready in time
    ├── PlacementCancelledError              a replica was released before its group was ready
    ├── NodeLostError                        a node under a replica left the cluster
    └── BackendError (RuntimeError)          the cluster backend (Ray) failed
        └── ServiceRunningError              another service runs in the namespace

`CapacityError.retryable` separates "no room now" (capacity is held by others; retry after a
release) from "never fits" (no allowed node is big enough, whatever is released).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from placement_actors.domain.group_status import GroupStatus

if TYPE_CHECKING:
    from placement_actors.domain.deployments import ProviderKind
    from placement_actors.domain.results import Rejection, ReplicaMove

__all__ = [
    "MAX_REJECTIONS",
    "BackendError",
    "CapacityError",
    "ConfigFileError",
    "ConfigProblem",
    "InvalidSpecError",
    "NoEgressNodesError",
    "NoGpuNodesError",
    "NodeLostError",
    "NotEnoughGpusError",
    "PlacementCancelledError",
    "PlacementError",
    "PlacementGroupTimeoutError",
    "ServiceRunningError",
    "StalePlacementError",
    "UnknownMessageError",
]


MAX_REJECTIONS = 20
"""Nodes listed by name in one refusal; the rest are counted (``rejections_omitted``), and a
`NotEnoughGpusError` also counts every refusing node by its free GPUs (``refusing_by_free``)."""


class PlacementError(Exception):
    """Root of every error placement-actors raises on purpose.

    Errors pickle with all their fields (they cross processes to remote clients).
    """

    def __reduce__(
        self,
    ) -> tuple[Any, tuple[type[PlacementError], tuple[Any, ...], dict[str, Any]]]:
        """Pickle the message and the structured fields, not the constructor's arguments."""
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(
    cls: type[PlacementError], args: tuple[Any, ...], fields: dict[str, Any]
) -> PlacementError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(fields)
    return error


class InvalidSpecError(PlacementError, ValueError):
    """A deployment, constraint, message or file is malformed or names something unknown.

    Attributes:
        field: the offending field, when one can be named (``"replicas"``, ``"gpu_nodes"``, ...).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        """Create the error; ``field`` names the offending field when there is one."""
        super().__init__(message)
        self.field = field


class StalePlacementError(InvalidSpecError):
    """A request refers to a placement that is no longer current.

    The replica was released, moved or placed again since the caller learned of it (its group,
    node or GPUs are not what the request says): ask for the deployment's placement
    (`GetPlacement`) again. An `InvalidSpecError`, so code that catches those catches this too.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigProblem:
    """One invalid value in a config file.

    Attributes:
        line: 1-based line of the value, or ``None`` when the file could not be read that far.
        field: the offending field (``"replicas"``), or ``None`` for a problem with the whole file.
        problem: what is wrong, e.g. ``"must be ≥ 1"``.
    """

    line: int | None
    field: str | None
    problem: str


class ConfigFileError(InvalidSpecError):
    """A YAML file holds invalid values; ``str()`` gives one ``file:line: field: problem`` each.

    Attributes:
        path: the file.
        problems: every problem found, in file order.
    """

    def __init__(self, *, path: str, problems: tuple[ConfigProblem, ...]) -> None:
        """Create the error for ``problems`` found in ``path``."""
        lines = []
        shown = path if path.isprintable() else repr(path)[1:-1]  # one line per problem
        for found in problems:
            where = shown if found.line is None else f"{shown}:{found.line}"
            lines.append(
                f"{where}: {found.field}: {found.problem}"
                if found.field
                else f"{where}: {found.problem}"
            )
        super().__init__("\n".join(lines), field=problems[0].field if problems else None)
        self.path = path
        self.problems = problems


class UnknownMessageError(PlacementError, TypeError):
    """An actor received a message type it does not handle.

    Attributes:
        message_type: the name of the type that was sent.
    """

    def __init__(self, actor: str, message: object) -> None:
        """Create the error for ``message`` sent to ``actor``."""
        self.message_type = type(message).__qualname__
        super().__init__(f"{actor} does not handle messages of type {self.message_type}")


class CapacityError(PlacementError, RuntimeError):
    """The cluster cannot hold the deployment.

    Attributes:
        deployment: the deployment's name.
        rejections: each allowed node's reason for not taking it, in node-id order; on a large
            cluster only the first `MAX_REJECTIONS` are listed.
        rejections_omitted: how many more nodes turned it down without being listed.
        retryable: ``True`` when releasing other deployments could make room.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        deployment: str,
        rejections: tuple[Rejection, ...] = (),
        rejections_omitted: int = 0,
    ) -> None:
        """Create the error; ``rejections`` lists each allowed node's reason."""
        super().__init__(message)
        self.deployment = deployment
        self.rejections = rejections
        self.rejections_omitted = rejections_omitted


class NoGpuNodesError(CapacityError):
    """No allowed node has a GPU at all (or every GPU node was excluded)."""


class NoEgressNodesError(CapacityError):
    """No allowed node can reach the remote provider.

    Attributes:
        provider: the provider the deployment needs to reach.
    """

    def __init__(
        self,
        message: str,
        *,
        deployment: str,
        provider: ProviderKind,
        rejections: tuple[Rejection, ...] = (),
    ) -> None:
        """Create the error for a deployment that needs ``provider``."""
        super().__init__(message, deployment=deployment, rejections=rejections)
        self.provider = provider


class NotEnoughGpusError(CapacityError):
    """GPU nodes exist, but no allowed node (nor an even split over several) can take a replica.

    Attributes:
        requested: GPUs one replica needs.
        available: the most free GPUs any allowed node had when the decision was made.
        largest_node: the most GPUs any allowed node has in total.
        moves: when enough GPUs are free in the cluster (scattered over nodes, or on nodes the
            request may not use), at most two moves of running replicas after which it would fit
            (`ReplicaMove`: which replica, from which node, to which); empty when none was found or
            none is needed.
        refusing_by_free: every allowed node that turned a replica down (head nodes aside,
            which are named first), counted by its free GPUs: ``((free, nodes), ...)``, fewest
            free first. The whole picture however large the cluster, while ``rejections`` names
            only the first `MAX_REJECTIONS` nodes.
    """

    def __init__(
        self,
        message: str,
        *,
        deployment: str,
        requested: int,
        available: int,
        largest_node: int,
        retryable: bool | None = None,
        rejections: tuple[Rejection, ...] = (),
        rejections_omitted: int = 0,
        moves: tuple[ReplicaMove, ...] = (),
        refusing_by_free: tuple[tuple[int, int], ...] = (),
    ) -> None:
        """Create the error from what was asked and the best that was on offer.

        ``retryable`` defaults to whether one node is large enough; pass it when an even split
        over several nodes could hold the replica.
        """
        super().__init__(
            message,
            deployment=deployment,
            rejections=rejections,
            rejections_omitted=rejections_omitted,
        )
        self.requested = requested
        self.available = available
        self.largest_node = largest_node
        self.retryable = requested <= largest_node if retryable is None else retryable
        self.moves = moves
        self.refusing_by_free = refusing_by_free

    def with_moves(self, moves: tuple[ReplicaMove, ...]) -> NotEnoughGpusError:
        """This refusal, saying which moves of running replicas would make room."""
        if not moves:
            return self
        shown = "; ".join(str(m) for m in moves)
        return NotEnoughGpusError(
            f"{self.args[0]}; moving {len(moves)} running replica(s) would make room: {shown}",
            deployment=self.deployment,
            requested=self.requested,
            available=self.available,
            largest_node=self.largest_node,
            retryable=self.retryable,
            rejections=self.rejections,
            rejections_omitted=self.rejections_omitted,
            moves=moves,
            refusing_by_free=self.refusing_by_free,
        )


class PlacementGroupTimeoutError(PlacementError, TimeoutError):
    """Ray did not make a placement group ready within the timeout; the group was removed.

    Attributes:
        group: the placement group's name.
        timeout_s: how long was waited.
        scheduling_state: the cluster's last word on the group: `GroupStatus.INFEASIBLE` (no node
            of the cluster can ever hold it), `GroupStatus.NO_RESOURCES` (it would fit, but the
            capacity is in use), or another `GroupStatus`.
        retryable: ``False`` only when the cluster called the group infeasible.
    """

    def __init__(self, *, group: str, timeout_s: float, scheduling_state: GroupStatus) -> None:
        """Create the error for ``group``, which was still pending after ``timeout_s``."""
        self.group = group
        self.timeout_s = timeout_s
        self.scheduling_state = scheduling_state
        self.retryable = scheduling_state is not GroupStatus.INFEASIBLE
        why = (
            "no node of the cluster can ever hold it (infeasible)"
            if not self.retryable
            else f"its capacity is in use ({scheduling_state.value}); retry after a release"
        )
        super().__init__(f"placement group {group} was not ready after {timeout_s:g}s: {why}")


class BackendError(PlacementError, RuntimeError):
    """The cluster backend failed; the original error is the ``__cause__``.

    Attributes:
        operation: what was being done, e.g. ``"create placement group"``.
    """

    def __init__(self, message: str, *, operation: str) -> None:
        """Create the error for a failed ``operation``."""
        super().__init__(message)
        self.operation = operation


class ServiceRunningError(BackendError):
    """Another placement service runs in the namespace: a second would take its deployments.

    Attributes:
        holder: who holds the namespace's service lease (a service host's name, or a driver's
            process id and node).
        namespace: the Ray namespace.
    """

    def __init__(self, *, holder: str, namespace: str) -> None:
        """Create the error for the service ``holder`` runs."""
        super().__init__(
            f"a placement service already runs in Ray namespace {namespace!r}, held by "
            f"{holder}: one service per namespace (two would take each other's deployments); "
            "stop it first, or send your messages to it (a service host: PlacementClient.connect)",
            operation="take service lease",
        )
        self.holder = holder
        self.namespace = namespace


class PlacementCancelledError(PlacementError):
    """The replica was released (or its group removed) before its futures resolved.

    Attributes:
        group: the placement group's name.
    """

    def __init__(self, *, group: str) -> None:
        """Create the error for ``group``."""
        super().__init__(f"placement group {group} was removed before it was ready")
        self.group = group


class NodeLostError(PlacementError):
    """A node under the replica left the cluster (or Ray moved its group); the group was removed.

    The replica is placed again elsewhere unless its `Place` turned that off; its new futures
    come with the deployment's current result.

    Attributes:
        group: the placement group's name.
        node_id: the node that was lost, or ``None`` when Ray moved the group without saying why.
    """

    def __init__(self, *, group: str, node_id: str | None) -> None:
        """Create the error for ``group``, lost with ``node_id``."""
        where = f"node {node_id} left the cluster" if node_id else "Ray is rescheduling it"
        super().__init__(f"placement group {group} was lost: {where}")
        self.group = group
        self.node_id = node_id
