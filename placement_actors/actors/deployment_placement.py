"""DeploymentPlacementActor: decides which nodes and GPUs each replica of a deployment gets.

It owns a free-GPU ledger and an egress ledger, and answers `Place`, `Release` and
`GetClusterView` (see `placement_actors.actors.messages`). Decisions are pure policy calls; this
module only keeps the state and makes each `Place` all-or-nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from placement_actors.actors.mailbox import KeepServingActor, admits
from placement_actors.actors.messages import (
    ClusterView,
    GetClusterView,
    GetPlacementFailure,
    GpuHolding,
    NodeView,
    Place,
    PlacementFailure,
    PlanReplica,
    Release,
    Released,
    RemoveReplicaGroups,
    ReplicaFailed,
)
from placement_actors.domain.constraints import EgressKey, PlacementConstraints
from placement_actors.domain.deployments import (
    Deployment,
    ProviderKind,
    RemoteNetwork,
    is_deployment_name,
)
from placement_actors.domain.errors import (
    BackendError,
    CapacityError,
    InvalidSpecError,
    NoEgressNodesError,
    PlacementError,
)
from placement_actors.domain.limits import DEFAULT_MAX_REMOTE_REPLICAS
from placement_actors.domain.results import (
    NodeAssignment,
    PlacementResult,
    Rejection,
    ReplicaPlacement,
)
from placement_actors.domain.topology import NodeTopology
from placement_actors.domain.validation import check_count, check_timeout, revalidated
from placement_actors.policies.bundle_shapes import head_exclusion_from_env
from placement_actors.policies.egress_ledger import EgressLedger
from placement_actors.policies.gpu_ledger import GpuLedger
from placement_actors.policies.replica_placement import LocalRequest, reserve_local_replicas

__all__ = ["DeploymentPlacementActor", "DeploymentPlacementProxy", "deployment_placement_proxy"]

logger = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class _Placed:
    """A placed deployment (mutable: owned by the actor thread)."""

    place: Place
    result: PlacementResult
    egress_key: EgressKey | None

    def missing_replicas(self) -> list[int]:
        """Replica indexes that have lost their reservation (their group failed)."""
        present = {a.replica_index for a in self.result.assignments}
        return [i for i in range(self.place.deployment.replicas) if i not in present]


class DeploymentPlacementActor(KeepServingActor):
    """Places deployments on nodes and GPUs from a ledger of free capacity.

    Start it with the nodes it may use::

        ref = DeploymentPlacementActor.start(
            topology=[NodeTopology(node_id="gpu-a", num_gpus=8)], egress_nodes=["cpu-1"]
        )
        result = ref.ask(Place(Deployment(name="llama", model="meta-llama/Llama-3.1-8B")))

    With a ``planner`` (a `PlanningActor`), every local replica is also reserved on the cluster:
    the `PlacementResult` then carries one `ReplicaPlacement` per replica, whose futures give each
    bundle's node IP and a free port, and a replica whose group fails is released again.

    Args:
        topology: the GPU nodes (and, with ``num_gpus=0``, any CPU nodes) the service knows.
        egress_nodes: ids of nodes that can reach remote providers; they need not be GPU nodes.
        planner: the PlanningActor that reserves local replicas on the cluster, if any.
        ignore_head_node: keep local replicas off head nodes; ``None`` reads
            ``PLACEMENT_ACTORS_IGNORE_HEAD_NODE``.
        planner_timeout_s: how long to wait for the planner's (immediate) reply.
        held: GPUs that placement groups of an earlier run still hold, by deployment name (from
            `placement_actors.backends.ray_backend.get_held_groups`). They are reserved on the
            ledger at start, so nothing is double-booked; such a name must be released before it
            is placed again.
        max_remote_replicas: the most replicas one remote deployment may ask for (a local one may
            ask for as many as the allowed nodes could ever hold).
    """

    def __init__(
        self,
        *,
        topology: Iterable[NodeTopology],
        egress_nodes: Iterable[str] = (),
        planner: pykka.ActorRef[Any] | None = None,
        ignore_head_node: bool | None = None,
        planner_timeout_s: float = 30.0,
        held: Mapping[str, Sequence[NodeAssignment]] | None = None,
        max_remote_replicas: int = DEFAULT_MAX_REMOTE_REPLICAS,
    ) -> None:
        """Build the ledgers; raises `InvalidSpecError` for a malformed topology or setting."""
        super().__init__()
        check_timeout(planner_timeout_s, "planner_timeout_s")
        check_count(max_remote_replicas, "max_remote_replicas", minimum=1)
        self._max_remote_replicas = max_remote_replicas
        nodes = list(topology)
        for node in nodes:
            if not isinstance(node, NodeTopology):
                msg = f"topology must hold NodeTopology values, got {type(node).__name__}"
                raise InvalidSpecError(msg, field="topology")
        egress = [egress_nodes] if isinstance(egress_nodes, str) else list(egress_nodes)
        if not all(isinstance(node_id, str) and node_id for node_id in egress):
            msg = f"egress_nodes must be node-id strings, got {egress!r}"
            raise InvalidSpecError(msg, field="egress_nodes")
        self._gpus = GpuLedger(nodes)
        self._gpu_ids = frozenset(self._gpus.node_ids())
        self._heads = frozenset(n.node_id for n in nodes if n.is_head)
        exclude_heads = head_exclusion_from_env() if ignore_head_node is None else ignore_head_node
        self._avoid = self._heads if exclude_heads else frozenset()
        self._planner = planner
        self._planner_timeout_s = planner_timeout_s
        self._egress = EgressLedger(egress)
        self._known = frozenset(self._gpus.node_ids()) | frozenset(self._egress.node_ids())
        self._placed: dict[str, _Placed] = {}
        self._failures: dict[str, CapacityError] = {}
        self._held: dict[str, tuple[NodeAssignment, ...]] = {}
        for name, assignments in (held or {}).items():
            self._hold(name, assignments)
        self._handlers = {
            Place: self.place,
            Release: self.release,
            GetClusterView: self.get_cluster_view,
            GetPlacementFailure: self.get_placement_failure,
            ReplicaFailed: self._on_replica_failed,
        }

    # -- commands ----------------------------------------------------------------------------

    @admits(Place)
    def place(self, message: Place) -> PlacementResult:
        """Place every replica of a deployment, or none; see `Place`."""
        name = message.deployment.name
        try:
            result = self._place(message)
        except CapacityError as exc:
            self._failures[name] = exc
            raise
        self._failures.pop(name, None)
        return result

    @admits(GetPlacementFailure)
    def get_placement_failure(self, message: GetPlacementFailure) -> PlacementFailure:
        """Why the last `Place` of a deployment did not fit, node by node."""
        return PlacementFailure(
            deployment=message.deployment, error=self._failures.get(message.deployment)
        )

    def _place(self, message: Place) -> PlacementResult:
        deployment, constraints = message.deployment, message.constraints
        if deployment.name in self._held:
            msg = (
                f"placement groups of an earlier run still hold {deployment.name}; release it first"
            )
            raise InvalidSpecError(msg, field="name")
        earlier = self._placed.get(deployment.name)
        if earlier is not None:
            if earlier.place != message:
                msg = (
                    f"deployment {deployment.name} is already placed with a different spec or "
                    "constraints; release it first"
                )
                raise InvalidSpecError(msg, field="name")
            missing = earlier.missing_replicas()
            if missing:  # some replicas' groups failed: place those again
                more = self._place_local(message, missing, own=earlier.result.assignments)
                earlier.result = self._merge(earlier.result, more)
            return earlier.result
        unknown = sorted(constraints.named_nodes() - self._known)
        if unknown:
            msg = f"constraints name nodes the service does not know: {', '.join(unknown)}"
            raise InvalidSpecError(msg, field="constraints")
        transport = deployment.transport_kind()
        if isinstance(transport, RemoteNetwork):
            key: EgressKey | None = (transport.provider, deployment.api_key)
            result = self._place_remote(deployment, constraints, transport.provider)
        else:
            key = None
            result = self._place_local(message, None)
        self._placed[deployment.name] = _Placed(place=message, result=result, egress_key=key)
        return result

    @admits(Release)
    def release(self, message: Release) -> Released:
        """Free all that a deployment holds, on the ledger and on the cluster; idempotent."""
        placed = self._placed.get(message.deployment)
        reap = placed is None and is_deployment_name(message.deployment)
        if self._planner is not None and (reap or (placed and placed.egress_key is None)):
            # Cluster first: if Ray fails, nothing is forgotten and the release can be retried.
            # An unknown name is sent too, to reap groups an earlier run of the service left.
            self._ask_planner([RemoveReplicaGroups(message.deployment)])
        self._failures.pop(message.deployment, None)
        adopted = self._held.pop(message.deployment, ())
        if adopted:
            self._free(message.deployment, adopted, None)
            return Released(
                deployment=message.deployment,
                was_placed=True,
                gpus_freed=sum(len(a.gpus) for a in adopted),
                replicas_freed=len({a.replica_index for a in adopted}),
            )
        if placed is None:
            return Released(
                deployment=message.deployment, was_placed=False, gpus_freed=0, replicas_freed=0
            )
        del self._placed[message.deployment]
        assignments = placed.result.assignments
        self._free(message.deployment, assignments, placed.egress_key)
        return Released(
            deployment=message.deployment,
            was_placed=True,
            gpus_freed=placed.result.total_gpus(),
            replicas_freed=len({a.replica_index for a in assignments}),
        )

    # -- events ------------------------------------------------------------------------------

    def _hold(self, name: str, assignments: Sequence[NodeAssignment]) -> None:
        """Reserve what a group of an earlier run holds (the ledger numbers the GPUs anew)."""
        kept = []
        for assignment in assignments:
            count = len(assignment.gpus)
            if assignment.node in self._gpus and self._gpus.free_count(assignment.node) >= count:
                ordinals = self._gpus.reserve(assignment.node, count, name)
                kept.append(replace(assignment, gpus=ordinals))
            else:
                logger.warning(
                    "%s holds %d GPUs on %s, which the ledger cannot match",
                    name,
                    count,
                    assignment.node,
                )
        if kept:
            self._held[name] = tuple(kept)

    @admits(ReplicaFailed)
    def _on_replica_failed(self, event: ReplicaFailed) -> None:
        """A replica's group failed after it was planned: give its GPUs back to the ledger."""
        placed = self._placed.get(event.deployment)
        if placed is None:
            return
        current = [
            r
            for r in placed.result.replicas
            if r.replica_index == event.replica_index and r.attempt == event.attempt
        ]
        if not current:
            return  # about a group this record no longer holds (released, or planned again)
        lost = [a for a in placed.result.assignments if a.replica_index == event.replica_index]
        self._free(event.deployment, lost, None)
        placed.result = replace(
            placed.result,
            assignments=tuple(
                a for a in placed.result.assignments if a.replica_index != event.replica_index
            ),
            replicas=tuple(
                r for r in placed.result.replicas if r.replica_index != event.replica_index
            ),
        )

    # -- queries -----------------------------------------------------------------------------

    def get_cluster_view(self, message: GetClusterView | None = None) -> ClusterView:
        """Every node's capacity, free GPUs and holders."""
        if message is not None:
            revalidated(message, GetClusterView)
        views = []
        for node_id in sorted(self._known):
            in_ledger = node_id in self._gpus
            holders = self._gpus.holders(node_id) if in_ledger else {}
            views.append(
                NodeView(
                    node_id=node_id,
                    capacity=self._gpus.capacity(node_id) if in_ledger else 0,
                    free_gpus=self._gpus.free_ordinals(node_id) if in_ledger else (),
                    held=tuple(GpuHolding(ordinal=o, deployment=d) for o, d in holders.items()),
                    is_head=node_id in self._heads,
                    egress=node_id in self._egress,
                    remote_replicas=self._egress.load(node_id) if node_id in self._egress else 0,
                )
            )
        return ClusterView(
            nodes=tuple(views), deployments=tuple(sorted({*self._placed, *self._held}))
        )

    # -- decisions ---------------------------------------------------------------------------

    def _place_local(
        self, message: Place, indexes: list[int] | None, own: Sequence[NodeAssignment] = ()
    ) -> PlacementResult:
        deployment, constraints = message.deployment, message.constraints
        allowed = None
        if constraints.gpu_nodes is not None:
            allowed = frozenset(constraints.gpu_nodes) & self._gpu_ids
            if allowed == self._gpu_ids:
                allowed = None  # every node: the ledger's free-capacity index serves it

        request = LocalRequest(
            deployment=deployment.name,
            gpus=deployment.gpus_per_replica,
            replicas=deployment.replicas,
            indexes=None if indexes is None else tuple(indexes),
            strategy=constraints.strategy,
            allowed=allowed,
            avoid=self._avoid,
            own=tuple(own),
            no_nodes_named=constraints.gpu_nodes == (),
        )
        assignments = list(reserve_local_replicas(self._gpus, request))
        replicas: tuple[ReplicaPlacement, ...] = ()
        if self._planner is not None:
            try:
                replicas = self._plan(deployment.name, assignments)
            except PlacementError:
                self._free(deployment.name, assignments, None)
                raise
        return PlacementResult(
            deployment=deployment, assignments=tuple(assignments), replicas=replicas
        )

    def _plan(self, name: str, assignments: list[NodeAssignment]) -> tuple[ReplicaPlacement, ...]:
        """Hand each replica to the planner, which answers at once (it never waits on Ray)."""
        by_replica: dict[int, list[NodeAssignment]] = {}
        for assignment in assignments:
            by_replica.setdefault(assignment.replica_index, []).append(assignment)
        messages = [
            PlanReplica(
                deployment=name,
                replica_index=replica,
                assignments=tuple(chosen),
                notify=self.actor_ref,
            )
            for replica, chosen in sorted(by_replica.items())
        ]
        try:
            return tuple(self._ask_planner(messages))
        except PlacementError:  # undo this call's groups only: earlier replicas stay
            self._ask_planner([RemoveReplicaGroups(name, tuple(sorted(by_replica)))])
            raise

    def _ask_planner(self, messages: list[Any]) -> list[Any]:
        if self._planner is None:  # pragma: no cover - callers check
            return []
        futures = [self._planner.ask(m, block=False) for m in messages]
        try:
            return [f.get(timeout=self._planner_timeout_s) for f in futures]
        except pykka.Timeout as exc:
            msg = f"the planner did not answer within {self._planner_timeout_s:g}s"
            raise BackendError(msg, operation="plan") from exc
        except pykka.ActorDeadError as exc:
            msg = "the planner has stopped"
            raise BackendError(msg, operation="plan") from exc

    @staticmethod
    def _merge(result: PlacementResult, more: PlacementResult) -> PlacementResult:
        return replace(
            result,
            assignments=tuple(
                sorted((*result.assignments, *more.assignments), key=lambda a: a.replica_index)
            ),
            replicas=tuple(
                sorted((*result.replicas, *more.replicas), key=lambda r: r.replica_index)
            ),
        )

    def _place_remote(
        self, deployment: Deployment, constraints: PlacementConstraints, provider: ProviderKind
    ) -> PlacementResult:
        if deployment.replicas > self._max_remote_replicas:
            msg = (
                f"deployment {deployment.name} asks for more remote replicas than the service's "
                f"limit of {self._max_remote_replicas}"
            )
            raise InvalidSpecError(msg, field="replicas")
        key: EgressKey = (provider, deployment.api_key)
        allowed = (
            self._egress.node_ids()
            if constraints.egress_nodes is None
            else [n for n in constraints.egress_nodes if n in self._egress]
        )
        if not allowed:
            rejections = tuple(
                Rejection(node_id=n, reason="has no egress", requested=1, available=0)
                for n in sorted(constraints.egress_nodes or ())
            )
            msg = f"deployment {deployment.name} calls {provider.value}; no allowed node has egress"
            raise NoEgressNodesError(
                msg,
                deployment=deployment.name,
                provider=provider,
                rejections=rejections,
            )
        told = frozenset(constraints.egress_preference.get(key, ()))
        nodes = self._egress.choose_many(
            deployment.replicas,
            allowed=allowed,
            preferred=told | self._egress.serving(key),
            strategy=constraints.egress_strategy,
        )
        self._egress.add_many(nodes, key)
        assignments = tuple(
            NodeAssignment(replica_index=replica, node=node) for replica, node in enumerate(nodes)
        )
        return PlacementResult(deployment=deployment, assignments=assignments)

    def _free(
        self, name: str, assignments: Iterable[NodeAssignment], key: EgressKey | None
    ) -> None:
        for assignment in assignments:
            if assignment.gpus:
                self._gpus.release(assignment.node, assignment.gpus, name)
            if key is not None:
                self._egress.remove(assignment.node, key)


class DeploymentPlacementProxy(ActorMemberMixin, pykka.ActorProxy[DeploymentPlacementActor]):
    """The static type of the actor's proxy; get one with `deployment_placement_proxy`.

    Each method sends the message and returns a `pykka.Future` of the reply.
    """

    place = proxy_method(DeploymentPlacementActor.place)
    release = proxy_method(DeploymentPlacementActor.release)
    get_cluster_view = proxy_method(DeploymentPlacementActor.get_cluster_view)
    get_placement_failure = proxy_method(DeploymentPlacementActor.get_placement_failure)


def deployment_placement_proxy(
    ref: pykka.ActorRef[DeploymentPlacementActor],
) -> DeploymentPlacementProxy:
    """The typed proxy of a running `DeploymentPlacementActor`."""
    return cast("DeploymentPlacementProxy", ref.proxy())
