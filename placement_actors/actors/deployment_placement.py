"""DeploymentPlacementActor: decides which nodes and GPUs each replica of a deployment gets.

It owns a free-GPU ledger and an egress ledger, and answers `Place`, `Release` and
`GetClusterView` (see `placement_actors.actors.messages`). Decisions are pure policy calls; this
module only keeps the state and makes each `Place` all-or-nothing.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, TypeVar, cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from placement_actors.actors.mailbox import (
    KeepServingActor,
    admits,
    stop_first,
    tell_if_alive,
    why_stopped,
)
from placement_actors.actors.messages import (
    AnswerNow,
    BundleGpusKnown,
    ClusterView,
    DefragmentationPlan,
    GetClusterView,
    GetDefragmentationPlan,
    GetPlacement,
    GetPlacementFailure,
    GetReplicaGroups,
    GpuHolding,
    GpusInUse,
    GroupRescheduling,
    MoveReplica,
    NodeJoined,
    NodeLost,
    NodeState,
    NodeView,
    Place,
    PlacedMany,
    PlaceMany,
    Placement,
    PlacementFailure,
    PlanReplica,
    Release,
    Released,
    RemoveReplicaGroups,
    ReplicaFailed,
    ReplicaGroupsRemoved,
    ReplicaGroupsView,
    ReplicaLost,
    ReplicaMoved,
    ReplicaReplaced,
    Subscribe,
    Unsubscribe,
)
from placement_actors.backends.protocol import CheckpointStore
from placement_actors.backends.timers import Deadline, Deadlines
from placement_actors.domain.checkpoints import (
    DeploymentCheckpoint,
    ReplicaGroup,
    deployment_key,
    encode,
)
from placement_actors.domain.constraints import EgressKey, GpuStrategy, PlacementConstraints
from placement_actors.domain.deployments import is_deployment_name, replica_of_group
from placement_actors.domain.errors import (
    BackendError,
    CapacityError,
    InvalidSpecError,
    NotEnoughGpusError,
    PlacementError,
    StalePlacementError,
)
from placement_actors.domain.limits import DEFAULT_MAX_REMOTE_REPLICAS, MAX_FAILURES_KEPT
from placement_actors.domain.results import (
    NodeAssignment,
    PlacementResult,
    ReplicaPlacement,
)
from placement_actors.domain.topology import NodeTopology
from placement_actors.domain.validation import check_count, check_timeout, revalidated
from placement_actors.policies.egress_ledger import EgressLedger
from placement_actors.policies.gpu_ledger import GpuLedger
from placement_actors.policies.node_choice import gpu_fit
from placement_actors.policies.placement_decision import (
    PlacementRules,
    decide_placement,
    egress_key,
    gpu_scope,
    largest_first,
)
from placement_actors.policies.rearrangement import (
    Resident,
    Room,
    plan_defragmentation,
    room_moves,
)
from placement_actors.policies.recovery import RecoveredDeployment
from placement_actors.policies.retries import RetryBackoff

__all__ = [
    "DEFAULT_RETRY",
    "OUTSIDE_HOLDER",
    "SERVED_WHILE_WAITING",
    "DeploymentPlacementActor",
    "DeploymentPlacementProxy",
    "deployment_placement_proxy",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

OUTSIDE_HOLDER = "(outside the service)"
"""The ledger's holder of GPUs that other Ray users hold (not a deployment name: it has spaces)."""

BATCH_REMOTE_LIMITS = 10
"""A `PlaceMany` may ask for at most this many times ``max_remote_replicas`` remote replicas in
all (100,000 by default), counting those within the limit of one deployment: a batch is one
message, and its work is bounded before any of it is done."""

LEAVING_REMEMBERED = 65_536
"""(deployment, node) pairs whose freed GPUs still count as the service's own groups' in a
`GpusInUse` read before they were freed (the latest freed): such a reading may arrive after
the removal of the groups it shows."""

DEFAULT_RETRY = RetryBackoff()
"""How long a `DeploymentPlacementActor` waits to try again (5 s, doubling, at most 300 s)."""


@dataclass(frozen=True, slots=True)
class _RetryDue:
    """A try again is due, told by this actor's timer number ``timer`` (see `RetryBackoff`)."""

    timer: int


_CATCHING_UP: frozenset[type[Any]] = frozenset({Place, PlaceMany, MoveReplica, _RetryDue})
"""The messages whose handlers catch up themselves (`_catch_up`)."""

SERVED_WHILE_WAITING: frozenset[type[Any]] = frozenset({AnswerNow})
"""Answered while a command waits for the planner (its Ray work can take a while).

An `AnswerNow` query reads the state as the waiting command has left it so far: its GPUs are
already reserved on the ledger, and the deployment shows as placed once the command is done.
Every other message, plain queries included, waits for the command, in the order it came.
"""


def _no_answer(exc: PlacementError) -> bool:
    """Whether ``exc`` says the planner did not answer (it may yet carry the request out)."""
    return isinstance(exc.__cause__, pykka.Timeout | pykka.ActorDeadError)


@dataclass(slots=True, kw_only=True)
class _Placed:
    """A placed deployment (mutable: owned by the actor thread)."""

    place: Place
    result: PlacementResult
    egress_key: EgressKey | None
    # Its whole replicas by node, for move sets; kept with the assignments it was made from
    # (a tuple, replaced whenever they change), so it is made again only after a change.
    residents: tuple[tuple[NodeAssignment, ...], dict[str, list[Resident]]] | None = None

    def residents_by_node(self) -> dict[str, list[Resident]]:
        """Node -> the replicas held wholly there (split replicas stay where they are)."""
        assignments = self.result.assignments
        if self.residents is not None and self.residents[0] is assignments:
            return self.residents[1]
        replicas: dict[int, list[NodeAssignment]] = {}
        for assignment in assignments:
            replicas.setdefault(assignment.replica_index, []).append(assignment)
        found: dict[str, list[Resident]] = {}
        for replica, held in replicas.items():
            if len(held) == 1 and held[0].gpus:
                found.setdefault(held[0].node, []).append(
                    # The move budget counts the replicas serving now, not those asked for.
                    Resident(self.place.deployment.name, replica, len(held[0].gpus), len(replicas))
                )
        self.residents = (assignments, found)
        return found

    def missing_replicas(self) -> list[int]:
        """Replica indexes that have lost their reservation (their group failed)."""
        present = {a.replica_index for a in self.result.assignments}
        return [i for i in range(self.place.deployment.replicas) if i not in present]


class _PlacedResidents:
    """The placed replicas, node by node, as the move-set search reads them (for one decision).

    Built per refusal or query and read lazily: a deployment's replicas are indexed by node the
    first time one of its nodes is looked at (and the index kept until its assignments change),
    so a search that reads a few nodes costs a few deployments' records, not every record.
    """

    def __init__(
        self,
        gpus: GpuLedger,
        placed: Mapping[str, _Placed],
        avoid: frozenset[str],
        *,
        movable_only: bool = False,
        exclude: str = "",
        losing: Mapping[str, AbstractSet[int]] | None = None,
    ) -> None:
        self._gpus = gpus
        self._placed = placed
        self._avoid = avoid
        self._movable_only = movable_only
        self._exclude = exclude
        self._losing = losing or {}
        self._scopes: dict[str, frozenset[str] | None] = {}

    def on(self, node: str) -> Sequence[Resident]:
        """The whole replicas of placed deployments on ``node`` (``movable`` ones only, if so).

        Replicas being lost (their group not removed yet: ``losing``) are not offered: their
        loss is carried out with a later message.
        """
        found: list[Resident] = []
        for name in sorted(self._gpus.holder_names(node)):
            placed = self._placed.get(name)
            if (
                placed is None
                or name == self._exclude
                or (self._movable_only and not placed.place.constraints.movable)
                or self._pinned(name, placed.place.constraints, node)
            ):
                continue
            losing = self._losing.get(name, ())
            found.extend(
                r for r in placed.residents_by_node().get(node, ()) if r.replica_index not in losing
            )
        return found

    def _pinned(self, name: str, constraints: PlacementConstraints, node: str) -> bool:
        """Whether the deployment may use no node but ``node``: its replicas there cannot move."""
        if constraints.gpu_nodes is not None and len(constraints.gpu_nodes) == 1:
            return True  # the usual case, told without the ledger
        allowed = self._scope(name)
        return allowed is not None and allowed <= {node}

    def may_host(self, resident: Resident, node: str) -> bool:
        """Whether the resident's deployment may use ``node``.

        Its constraints and head exclusion say where; a SPREAD deployment's replica is also
        kept off a node that holds another of its replicas.
        """
        if node in self._avoid or node not in self._gpus:
            return False
        allowed = self.scope(resident)
        if allowed is not None and node not in allowed:
            return False
        constraints = self._placed[resident.deployment].place.constraints
        return not _stacks_spread(self._gpus, resident.deployment, constraints, node)

    def scope(self, resident: Resident) -> frozenset[str] | None:
        """The nodes the resident's deployment's constraints allow (``None``: any node)."""
        return self._scope(resident.deployment)

    def _scope(self, name: str) -> frozenset[str] | None:
        if name not in self._scopes:
            self._scopes[name] = gpu_scope(self._gpus, self._placed[name].place.constraints)
        return self._scopes[name]


def _stacks_spread(
    gpus: GpuLedger, deployment: str, constraints: PlacementConstraints, node: str
) -> bool:
    """Whether a replica of a SPREAD ``deployment`` on ``node`` would join one of its siblings."""
    return constraints.strategy is GpuStrategy.SPREAD and deployment in gpus.holder_names(node)


def _egress_nodes(
    given: Iterable[str | NodeTopology] | str, topology: Sequence[NodeTopology]
) -> tuple[list[str], dict[str, Mapping[str, str]], frozenset[str]]:
    """The egress node ids, each one's labels, and the heads among them.

    A node's labels are its own, else its topology entry's; the heads are those given as a
    `NodeTopology` that says so (a head without GPUs is often an egress node).
    """
    entries = [given] if isinstance(given, str | NodeTopology) else list(given)
    labels = {n.node_id: n.labels for n in topology}
    ids: list[str] = []
    heads: set[str] = set()
    for entry in entries:
        if isinstance(entry, NodeTopology):
            ids.append(entry.node_id)
            labels[entry.node_id] = entry.labels
            if entry.is_head:
                heads.add(entry.node_id)
        elif isinstance(entry, str) and entry:
            ids.append(entry)
        else:
            msg = f"egress_nodes must be node ids or NodeTopology values, got {entry!r:.80}"
            raise InvalidSpecError(msg, field="egress_nodes")
    return ids, {n: labels[n] for n in ids if n in labels}, frozenset(heads)


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
        egress_nodes: nodes that can reach remote providers; they need not be GPU nodes. Ids,
            or `NodeTopology` values to give their labels (for a ``label_selector``); an id
            takes its labels from ``topology`` when it is there too.
        planner: the PlanningActor that reserves local replicas on the cluster, if any.
        ignore_head_node: keep local replicas off head nodes (`placement_actors.start_on_ray`
            and the service read ``PLACEMENT_ACTORS_IGNORE_HEAD_NODE`` for it).
        planner_timeout_s: how long to wait for each of the planner's replies (it answers at
            once, each group's creation call to Ray aside).
        held: GPUs that placement groups of an earlier run still hold, by deployment name (from
            `placement_actors.backends.ray.groups.get_held_groups`). They are reserved on the
            ledger at start, so nothing is double-booked; such a name must be released before it
            is placed again (a `RemoveReplicaGroups` of its groups frees their GPUs too). For a
            service wired by hand without records of its earlier run;
            `placement_actors.start_on_ray` takes deployments back whole (``recovered``).
        max_remote_replicas: the most replicas one remote deployment may ask for (a local one may
            ask for as many as the allowed nodes could ever hold).
        stops_planner: stop the planner when this actor stops (it was started for this actor
            alone, as `placement_actors.start_on_ray` does).
        outside: GPUs per node that something other than the service holds (other Ray users)
            at its start: they are not offered until a `GpusInUse` says they were given back,
            and `GetClusterView` counts them as ``outside``.
        checkpoints: where every accepted `Place` is written down (a `DeploymentCheckpoint`,
            rewritten when its replicas move, deleted on `Release`); ``None``: nothing is.
        recovered: deployments of an earlier run to take back (from
            `placement_actors.policies.recovery.plan_recovery`): their kept replicas are
            reserved again first, with their groups (the planner adopts them), then their
            missing replicas are placed again. Re-sending their `Place` answers their result.
        on_stopped: called once when this actor stops or fails, after the planner it stops
            (`placement_actors.start_on_ray` ends the service's lease on Ray with it, so that
            another service may start).
        retry: how long to wait before trying again, on a timer of this actor's own, what
            waits: the missing replicas of a deployment whose ``replace_lost`` allows it (a
            replica whose group failed, or that found no room when its node was lost), and
            the removals and records Ray or the store refused. Each deployment backs off on
            its own. ``None``: they wait for a message (capacity that appears, a re-sent
            `Place`, any message for the catch-up), as they always do besides.

    With a planner, this actor is the service's one front door: `GetReplicaGroups` and
    `RemoveReplicaGroups` sent here are passed to the planner and its reply comes back. While a
    command waits for the planner (a `Place` of many replicas waits for Ray to accept each
    group), queries wrapped in `AnswerNow` are still answered at once; every other message,
    plain queries included, waits for the command, in the order it came.
    """

    def __init__(
        self,
        *,
        topology: Iterable[NodeTopology],
        egress_nodes: Iterable[str | NodeTopology] = (),
        planner: pykka.ActorRef[Any] | None = None,
        ignore_head_node: bool = False,
        planner_timeout_s: float = 30.0,
        held: Mapping[str, Sequence[NodeAssignment]] | None = None,
        max_remote_replicas: int = DEFAULT_MAX_REMOTE_REPLICAS,
        stops_planner: bool = False,
        outside: Mapping[str, int] | None = None,
        checkpoints: CheckpointStore | None = None,
        recovered: Sequence[RecoveredDeployment] = (),
        on_stopped: Callable[[], None] | None = None,
        retry: RetryBackoff | None = DEFAULT_RETRY,
    ) -> None:
        """Build the ledgers; raises `InvalidSpecError` for a malformed topology or setting."""
        super().__init__()
        check_timeout(planner_timeout_s, "planner_timeout_s")
        check_count(max_remote_replicas, "max_remote_replicas", minimum=1)
        self._max_remote_replicas = max_remote_replicas
        self._init_retry(retry)
        # Requests the planner did not answer in time, while it may still be busy with them.
        self._unanswered: list[pykka.Future[Any]] = []
        nodes = list(topology)
        for node in nodes:
            if not isinstance(node, NodeTopology):
                msg = f"topology must hold NodeTopology values, got {type(node).__name__}"
                raise InvalidSpecError(msg, field="topology")
        egress, egress_labels, egress_heads = _egress_nodes(egress_nodes, nodes)
        self._gpus = GpuLedger(nodes)
        self._heads = frozenset(n.node_id for n in nodes if n.is_head) | egress_heads
        if not isinstance(ignore_head_node, bool):
            msg = f"ignore_head_node must be true or false, got {type(ignore_head_node).__name__}"
            raise InvalidSpecError(msg, field="ignore_head_node")
        exclude_heads = ignore_head_node
        self._avoid = self._heads if exclude_heads else frozenset()
        self._rules = PlacementRules(avoid=self._avoid, max_remote_replicas=max_remote_replicas)
        self._planner = planner
        self._stops_planner = stops_planner
        self._on_stopped = on_stopped
        self._planner_timeout_s = planner_timeout_s
        self._egress = EgressLedger(egress, egress_labels)
        self._known = frozenset(self._gpus.node_ids()) | frozenset(self._egress.node_ids())
        self._exclude_heads = exclude_heads
        self._lost: set[str] = set()
        self._degraded: set[str] = set()
        self._subscribers: list[pykka.ActorRef[Any]] = []
        self._placed: dict[str, _Placed] = {}
        self._movable_names: set[str] = set()  # placed deployments whose constraints say movable
        # The refusals of the latest `MAX_FAILURES_KEPT` refused deployments, oldest first.
        self._failures: dict[str, CapacityError] = {}
        self._held: dict[str, tuple[NodeAssignment, ...]] = {}
        self._checkpoints = checkpoints
        self._unwritten: set[str] = set()  # records whose rewrite failed: retried (see _rewrite)
        # Replicas lost while Ray would not remove their groups: tried again (see _lose_replicas).
        self._losing: dict[str, tuple[frozenset[int], str | None, frozenset[str]]] = {}
        # GPUs of groups Ray would not remove: an undone Place's (see _unplan) or a failed
        # replica's (see _on_replica_failed); held until a removal succeeds (_catch_up).
        self._stranded: dict[str, tuple[NodeAssignment, ...]] = {}
        # GPUs other Ray users hold: how many the ledger holds for them on each node, how many
        # more they hold there than it could (taken as soon as they are free: `_top_up_outside`),
        # and the GPUs the service freed whose groups Ray may still show (see `GpusInUse`).
        self._outside_held: dict[str, int] = {}
        self._outside_short: dict[str, int] = {}
        # (deployment, node) -> (GPUs, freed at), oldest first
        self._leaving: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        for name, assignments in (held or {}).items():
            self._hold(name, assignments)
        for earlier in recovered:
            self._adopt(earlier)
        self._reserve_outside(outside or {})
        for earlier in recovered:  # every kept replica is reserved: now place the missing ones
            if earlier.name in self._placed:
                self._recover_missing(earlier.name)
        self._handlers = {
            Place: self.place,
            PlaceMany: self.place_many,
            Release: self.release,
            MoveReplica: self.move_replica,
            GetClusterView: self.get_cluster_view,
            GetPlacementFailure: self.get_placement_failure,
            GetDefragmentationPlan: self.get_defragmentation_plan,
            AnswerNow: self.answer_now,
            ReplicaFailed: self._on_replica_failed,
            GetReplicaGroups: self.ask_planner,
            RemoveReplicaGroups: self.ask_planner,
            GetPlacement: self.get_placement,
            Subscribe: self.subscribe,
            Unsubscribe: self.unsubscribe,
            NodeJoined: self._on_node_joined,
            NodeLost: self._on_node_lost,
            GroupRescheduling: self._on_group_rescheduling,
            GpusInUse: self._on_gpus_in_use,
            BundleGpusKnown: self._on_bundle_gpus_known,
            _RetryDue: self._on_retry_due,
        }

    def _init_retry(self, retry: RetryBackoff | None) -> None:
        """Nothing to try again yet, and no timer (see `_schedule_retry`)."""
        if retry is not None and not isinstance(retry, RetryBackoff):
            msg = f"retry must be a RetryBackoff or None, got {type(retry).__name__}"
            raise InvalidSpecError(msg, field="retry")
        self._retry = retry
        # Deployments with replicas to try again: failures in a row, and when the latest was
        # (a failure long after the one before starts the backoff again); when the next try is.
        self._retry_failures: dict[str, tuple[int, float]] = {}
        self._retry_due: dict[str, float] = {}
        self._retry_avoid: dict[str, frozenset[str]] = {}
        self._retry_next: float | None = None  # at most the earliest of them (maybe earlier)
        self._catch_up_failures = 0
        self._catch_up_due: float | None = None
        self._timers: Deadlines | None = None  # started with the first wait
        self._timer: Deadline | None = None  # the pending one: its number, and when it rings
        self._timer_number = 0
        self._timer_at = 0.0

    def _reserve_outside(self, outside: Mapping[str, int]) -> None:
        """Keep GPUs that other Ray users hold off the market (as far as the ledger has them)."""
        for node_id, count in outside.items():
            check_count(count, "outside")
            if node_id in self._gpus and count:  # beyond the free: promised to earlier groups
                self._hold_outside(node_id, count)

    def on_stop(self) -> None:
        """Stop the planner too, when it was started for this actor alone; then `on_stopped`.

        This actor stopped ahead of its mailbox (`stop_first`, as a service that stepped down
        is): so does the planner, whose waiting messages are not carried out on Ray either.
        """
        if self._timers is not None:
            self._timers.stop()
        try:
            if self._stops_planner and self._planner is not None:
                # Blocking is safe: the planner never waits on this actor.
                try:
                    why = why_stopped(self.actor_ref)
                    if why:
                        stop_first(self._planner, why).get(timeout=self._planner_timeout_s)
                    else:
                        self._planner.stop(timeout=self._planner_timeout_s)
                except pykka.ActorDeadError:
                    pass
                except pykka.Timeout:  # in a call to Ray: it stops once that call returns
                    logger.warning(
                        "the planner did not stop within %gs; it stops after its call to Ray",
                        self._planner_timeout_s,
                    )
        finally:
            stopped, self._on_stopped = self._on_stopped, None
            if stopped is not None:
                stopped()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """An error no handler caught stops this actor: it stops what it would on `on_stop`."""
        del exception_type, exception_value, traceback  # pykka has logged them
        self.on_stop()

    def ask_planner(
        self, message: GetReplicaGroups | RemoveReplicaGroups
    ) -> ReplicaGroupsView | ReplicaGroupsRemoved:
        """Pass a query or command of the planner's to it; its reply comes back.

        A removal is only for groups that no placed deployment holds (an earlier run's, or a
        released deployment's that Ray kept): a placed deployment's groups go with its `Release`,
        which frees its GPUs on the ledger too.

        Raises:
            InvalidSpecError: this actor has no planner, the message is not for the planner, or
                it would remove a placed deployment's groups.
        """
        if isinstance(message, GetReplicaGroups):
            message = revalidated(message, GetReplicaGroups)
        else:
            message = revalidated(message, RemoveReplicaGroups)
            if message.deployment in self._placed:
                msg = (
                    f"deployment {message.deployment} is placed: send Release, which removes its "
                    "placement groups and frees their GPUs on the ledger"
                )
                raise InvalidSpecError(msg, field="deployment")
        if self._planner is None:
            msg = f"{type(message).__name__} needs a planner, and this service has none"
            raise InvalidSpecError(msg, field="message")
        reply: ReplicaGroupsView | ReplicaGroupsRemoved = self._ask_planner([message])[0]
        if isinstance(message, RemoveReplicaGroups) and message.deployment in self._held:
            self._let_go(message.deployment, message.replica_indexes)
        return reply

    def _let_go(self, name: str, indexes: tuple[int, ...] | None) -> None:
        """Free what an earlier run's groups held (``held``) once Ray removed them.

        Those of the replicas ``indexes`` names (``None``: all), as a `Release` of the name would.
        """
        adopted = self._held.pop(name, ())
        gone = [a for a in adopted if indexes is None or a.replica_index in indexes]
        kept = tuple(a for a in adopted if indexes is not None and a.replica_index not in indexes)
        self._free(name, gone, None)
        if kept:
            self._held[name] = kept
        self._retry_degraded()  # the freed capacity may hold what was lost elsewhere

    # -- commands ----------------------------------------------------------------------------

    @admits(Place)
    def place(self, message: Place) -> PlacementResult:
        """Place every replica of a deployment, or none; see `Place`."""
        return self._place_checked(message)

    def on_start(self) -> None:
        """Start the timer for what the constructor left to try again (a recovered replica)."""
        self._arm_retry()

    def _handle_receive(self, message: Any) -> Any:  # noqa: ANN401 - any value may arrive
        """Handle ``message`` (a proxy call too); then set the timer for what is left to retry.

        The pending timer is done with once its message arrives, before anything else: should
        handling it fail, the next timer is still set.
        """
        if type(message) is _RetryDue and message.timer == self._timer_number:
            self._timer = None
        try:
            return super()._handle_receive(message)
        finally:
            if self._retry is not None and not self.actor_stopped.is_set():
                self._arm_retry()

    def on_receive(self, message: Any) -> Any:  # noqa: ANN401 - any value may arrive
        """Carry out what was refused before (`_catch_up`), then handle ``message``.

        The commands that catch up themselves (reached through a proxy too) are not caught up
        twice: a removal Ray refused once is tried once per message.
        """
        if self._behind() and type(message) not in _CATCHING_UP:
            self._catch_up()
        return super().on_receive(message)

    def _place_checked(self, message: Place, *, caught_up: bool = False) -> PlacementResult:
        """`place` of a message already rebuilt through its constructors.

        ``caught_up``: the caller has just caught up (a `PlaceMany` does, once for its batch).
        """
        if not caught_up and self._behind():  # also for proxy calls, not through on_receive
            self._catch_up()
        name = message.deployment.name
        try:
            result = self._place(message)
        except CapacityError as exc:
            self._failures.pop(name, None)  # the latest refused last: the oldest goes first
            # A copy, without the traceback the raised one gathers: its frames would keep the
            # message (a whole `PlaceMany` batch) and the asker's locals alive while it is kept.
            self._failures[name] = copy.copy(exc)
            if len(self._failures) > MAX_FAILURES_KEPT:
                del self._failures[next(iter(self._failures))]
            raise
        self._failures.pop(name, None)
        return result

    @admits(PlaceMany)
    def place_many(self, message: PlaceMany) -> PlacedMany:
        """Each `Place` of the batch, as if sent alone; see `PlaceMany`.

        What Ray refused before is tried again once for the batch, not once per `Place`.
        """
        places = message.places
        remote = sum(
            p.deployment.replicas
            for p in places
            if p.deployment.replicas <= self._max_remote_replicas  # else refused on its own
            and egress_key(p.deployment) is not None
        )
        if remote > BATCH_REMOTE_LIMITS * self._max_remote_replicas:
            msg = (
                f"the batch asks for {remote:,} remote replicas in all; a PlaceMany may ask for "
                f"{BATCH_REMOTE_LIMITS} times the limit of one deployment "
                f"({BATCH_REMOTE_LIMITS * self._max_remote_replicas:,}): send it in parts"
            )
            raise InvalidSpecError(msg, field="places")
        if self._behind():  # also for proxy calls, which do not pass through on_receive
            self._catch_up()
        order = (
            largest_first([p.deployment for p in places])
            if message.largest_first
            else range(len(places))
        )
        outcomes: dict[int, PlacementResult | PlacementError] = {}
        for index in order:
            try:
                outcomes[index] = self._place_checked(places[index], caught_up=True)
            except PlacementError as exc:  # an answer, not a fault: no frames of this actor
                outcomes[index] = _without_frames(exc)
        return PlacedMany(outcomes=tuple(self._now(outcomes[i]) for i in range(len(places))))

    def _now(self, outcome: PlacementResult | PlacementError) -> PlacementResult | PlacementError:
        """A batch's result as it is now: a later `Place` of the batch may have moved replicas."""
        if isinstance(outcome, PlacementError):
            return outcome
        placed = self._placed.get(outcome.deployment.name)
        return outcome if placed is None else placed.result

    @admits(GetPlacementFailure)
    def get_placement_failure(self, message: GetPlacementFailure) -> PlacementFailure:
        """Why the last `Place` of a deployment did not fit, node by node."""
        return PlacementFailure(
            deployment=message.deployment, error=self._failures.get(message.deployment)
        )

    @admits(GetDefragmentationPlan)
    def get_defragmentation_plan(self, message: GetDefragmentationPlan) -> DefragmentationPlan:
        """Moves that would give nodes back whole; see `GetDefragmentationPlan`."""
        return plan_defragmentation(
            self._gpus,
            _PlacedResidents(self._gpus, self._placed, self._avoid, losing=self._pending_losses()),
            gpus=message.gpus,
            max_moves=message.max_moves,
            avoid=self._avoid,
        )

    def _place(self, message: Place) -> PlacementResult:
        deployment = message.deployment
        if deployment.name in self._held:
            msg = (
                f"placement groups of an earlier run still hold {deployment.name}; release it first"
            )
            raise InvalidSpecError(msg, field="name")
        if deployment.name in self._stranded:
            msg = (
                f"failed or undone placement groups of {deployment.name} still stand on the "
                "cluster; the service removes them with its next messages: try again"
            )
            raise BackendError(msg, operation="remove placement group")
        earlier = self._placed.get(deployment.name)
        if earlier is not None:
            if earlier.place != message:
                msg = (
                    f"deployment {deployment.name} is already placed with a different spec or "
                    "constraints; release it first"
                )
                raise InvalidSpecError(msg, field="name")
            if earlier.missing_replicas():  # lost or failed replicas: place those again
                self._place_missing(earlier)
                self._healed(deployment.name)
            return earlier.result
        assignments = self._decide(message)
        key = egress_key(deployment)
        result = PlacementResult(deployment=deployment, assignments=assignments)
        if key is None:
            result = self._reserve_on_cluster(result)
        placed = _Placed(place=message, result=result, egress_key=key)
        try:
            self._write(placed)
        except PlacementError:  # not written down, not accepted: undo it all
            if key is None and not self._unplan(deployment.name, assignments):
                raise  # Ray keeps the groups for now: so does the ledger keep their GPUs
            self._free(deployment.name, assignments, key)
            raise
        self._placed[deployment.name] = placed
        if message.constraints.movable and key is None:  # remote replicas hold no GPUs to move
            self._movable_names.add(deployment.name)
        return result

    def _decide(self, message: Place) -> tuple[NodeAssignment, ...]:
        """A new `Place`'s assignments, reserved; moves of movable replicas first, if they help."""
        return self._making_room(
            lambda: decide_placement(
                self._gpus,
                self._egress,
                message.deployment,
                message.constraints,
                rules=self._rules,
                residents=_PlacedResidents(
                    self._gpus, self._placed, self._avoid, losing=self._pending_losses()
                ),
            ),
            message,
        )

    def _making_room(
        self,
        attempt: Callable[[], _T],
        message: Place,
        *,
        replicas: int | None = None,
        avoid: frozenset[str] = frozenset(),
    ) -> _T:
        """``attempt()``; if refused, once more after movable replicas made room (`_made_room`)."""
        try:
            return attempt()
        except NotEnoughGpusError as refused:
            if not self._made_room(message, refused, replicas=replicas, avoid=avoid):
                raise
            return attempt()

    @admits(Release)
    def release(self, message: Release) -> Released:
        """Free all that a deployment holds, on the ledger and on the cluster; idempotent."""
        placed = self._placed.get(message.deployment)
        reap = placed is None and is_deployment_name(message.deployment)
        if self._checkpoints is not None and is_deployment_name(message.deployment):
            # The record goes first: should the service stop half-way, a group with no record
            # is reaped at the next start, while a record with no group would be placed again.
            self._checkpoints.delete(deployment_key(message.deployment))
        if self._planner is not None and (reap or (placed and placed.egress_key is None)):
            # Cluster first: if Ray fails, nothing is forgotten and the release can be retried.
            # An unknown name is sent too, to reap groups an earlier run of the service left.
            try:
                self._ask_planner([RemoveReplicaGroups(message.deployment)])
            except PlacementError as exc:
                if placed is not None and _no_answer(exc):  # it may remove them yet
                    self._release_in_doubt(message.deployment, placed)
                    msg = (
                        f"{exc}: {message.deployment} is released, and its GPUs stay held "
                        "until Ray has removed its groups (tried again with the next messages)"
                    )
                    raise BackendError(msg, operation="remove placement group") from exc
                if placed is not None:  # still placed: write it down again before saying so
                    self._rewrite(message.deployment)
                raise
        self._forget(message.deployment)  # its groups went: no loss or refusal is left
        stranded = self._stranded.pop(message.deployment, ())  # its groups went with the rest
        self._free(message.deployment, stranded, None)
        adopted = self._held.pop(message.deployment, ())
        if adopted:
            self._free(message.deployment, adopted, None)
            return Released(
                deployment=message.deployment,
                was_placed=True,
                gpus_freed=sum(len(a.gpus) for a in adopted),
                replicas_freed=len({a.replica_index for a in adopted}),
            )
        if placed is None:  # GPUs of an undone Place's groups may have waited for Ray, though
            return Released(
                deployment=message.deployment,
                was_placed=False,
                gpus_freed=sum(len(a.gpus) for a in stranded),
                replicas_freed=0,
            )
        assignments = placed.result.assignments
        self._free(message.deployment, assignments, placed.egress_key)
        self._retry_degraded()  # the freed capacity may hold what was lost elsewhere
        return Released(
            deployment=message.deployment,
            was_placed=True,
            gpus_freed=placed.result.total_gpus() + sum(len(a.gpus) for a in stranded),
            replicas_freed=len({a.replica_index for a in assignments}),
        )

    def _release_in_doubt(self, name: str, placed: _Placed) -> None:
        """A `Release` whose removal the planner did not answer: it may carry it out yet.

        The deployment goes (its record went first); its GPUs stay held (``_stranded``) until
        a removal of its groups succeeds (`_catch_up`, or a `Release` sent again), so they are
        promised to no one while its groups may stand. A deployment left placed would keep a
        result whose groups the planner may have removed, and nothing would place it again.
        """
        self._forget(name)
        self._stranded[name] = (*self._stranded.get(name, ()), *placed.result.assignments)

    def _forget(self, name: str) -> None:
        """Drop all this actor keeps of deployment ``name`` but its GPUs (and `_stranded`)."""
        self._placed.pop(name, None)
        self._retry_due.pop(name, None)
        self._retry_avoid.pop(name, None)
        self._retry_failures.pop(name, None)
        self._movable_names.discard(name)
        self._degraded.discard(name)
        self._losing.pop(name, None)
        self._failures.pop(name, None)

    @admits(MoveReplica)
    def move_replica(self, message: MoveReplica) -> ReplicaMoved:
        """Move one running replica, whole, to another node; see `MoveReplica`."""
        if self._behind():  # also for proxy calls, which do not pass through on_receive
            self._catch_up()
        again = self._moved_already(message)
        if again is not None:
            return again
        placed, source = self._movable(message)
        self._check_move_target(placed, source, message.to_node)
        done = self._carry_out(placed, source, message.to_node)
        # The GPUs given back may hold what was lost elsewhere (lost replicas come first), but
        # no other replica is moved for it: the caller may be carrying out a plan move by move.
        self._retry_degraded(make_room=False)
        return done

    def _moved_already(self, message: MoveReplica) -> ReplicaMoved | None:
        """The reply to a move from ``from_node`` whose replica runs on ``to_node`` already.

        Such a move was carried out before (a call sent again: Ray sends a restarted service
        host the calls that were on their way), or its end holds anyway: it is answered as done,
        with the replica's group now, and nothing moves. ``None`` for any other move.
        """
        name, index, target = message.deployment, message.replica_index, message.to_node
        placed = self._placed.get(name)
        if message.from_node in (None, target) or placed is None or placed.egress_key is not None:
            return None
        held = tuple(a for a in placed.result.assignments if a.replica_index == index)
        if len(held) != 1 or held[0].node != target:
            return None
        if name in self._losing and index in self._losing[name][0]:
            return None  # being lost: `_movable` says so
        if message.gpus is not None and message.gpus != len(held[0].gpus):
            return None
        placement = next((r for r in placed.result.replicas if r.replica_index == index), None)
        return ReplicaMoved(
            deployment=name,
            replica_index=index,
            from_node=message.from_node,
            to_node=target,
            placement=placement,
            assignments=held,
        )

    def _carry_out(self, placed: _Placed, source: NodeAssignment, target: str) -> ReplicaMoved:
        """Move the replica ``source`` holds to ``target`` (checked already); see `MoveReplica`."""
        name, index = placed.place.deployment.name, source.replica_index
        ordinals = self._gpus.reserve(target, len(source.gpus), name)  # first: room is kept
        moved = NodeAssignment(replica_index=index, node=target, gpus=ordinals)
        placement = None
        if self._planner is not None:
            try:
                self._ask_planner([RemoveReplicaGroups(name, (index,))])
            except PlacementError as exc:
                self._gpus.release(target, ordinals, name)
                if _no_answer(exc):
                    # No answer: the planner may still remove the group. Taken as lost (and
                    # placed again, if its Place allows), never as still running.
                    self._lose_replicas(name, [index], None)
                    self._retry_degraded()
                raise  # else Ray refused to remove it: it stands, tracked; nothing changed
            try:
                (placement,) = self._ask_planner(
                    [
                        PlanReplica(
                            deployment=name,
                            replica_index=index,
                            assignments=(moved,),
                            notify=self.actor_ref,
                        )
                    ]
                )
            except PlacementError as exc:  # the old group is gone: the replica is lost
                # No new group stands, unless the planner did not answer: it may make it yet,
                # so it is removed first, and its GPUs stay held until Ray has (`_unplan`).
                if not _no_answer(exc) or self._unplan(name, (moved,)):
                    self._gpus.release(target, ordinals, name)
                self._lose_replicas(name, [index], None)
                self._retry_degraded()
                raise
        self._gpus.release(source.node, source.gpus, name)
        self._given_back(name, source.node, len(source.gpus))
        now = replace(
            placed.result, assignments=(moved,), replicas=() if placement is None else (placement,)
        )
        placed.result = self._merge(self._without(placed.result, {index}), now)
        self._rewrite(name)
        done = ReplicaMoved(
            deployment=name,
            replica_index=index,
            from_node=source.node,
            to_node=target,
            placement=placement,
            assignments=(moved,),
        )
        logger.info("moved replica %d of %s from %s to %s", index, name, source.node, target)
        self._notify(done)
        return done

    def _made_room(
        self,
        message: Place,
        refused: NotEnoughGpusError,
        *,
        replicas: int | None = None,
        avoid: frozenset[str] = frozenset(),
    ) -> bool:
        """Move ``movable`` replicas so that a refused `Place` fits; whether any moved.

        The moves are `room_moves` among the movable replicas: a move set of one or two, else a
        defragmentation plan of the requested nodes of at most `ROOM_PLAN_MOVES` moves, and only
        if the request fits once they are made. ``replicas``: how many of the deployment's
        replicas are to be placed (all, by default; its missing ones when placed again), off
        ``avoid`` as well as the avoided nodes.
        """
        if not refused.retryable or not self._movable_names:
            return False
        deployment, constraints = message.deployment, message.constraints
        allowed = gpu_scope(self._gpus, constraints)
        room = Room(
            gpus=deployment.gpus_per_replica,
            replicas=deployment.replicas if replicas is None else replicas,
            split=not constraints.keep_whole,
            allowed=allowed,
            avoid=self._avoid | avoid,
        )
        # Never onto the nodes to avoid (a node Ray reports failing), and never the deployment's
        # own replicas: moving one to make room for another of them gains nothing.
        movable = _PlacedResidents(
            self._gpus,
            self._placed,
            self._avoid | avoid,
            movable_only=True,
            exclude=deployment.name,
            losing=self._pending_losses(),
        )
        moves = room_moves(self._gpus, movable, room)
        if not moves:
            return False
        made = 0
        for move in moves:  # each is checked again against the ledger as it is now
            try:
                placed, source = self._movable(MoveReplica.of(move))
                self._check_move_target(placed, source, move.to_node)
                self._carry_out(placed, source, move.to_node)
            except PlacementError as exc:  # Ray failed, say: the Place is decided on what moved
                logger.warning("stopped making room for %s: %s", deployment.name, exc)
                break
            made += 1
        logger.info("moved %d replica(s) to make room for %s", made, deployment.name)
        return made > 0

    def _movable(self, message: MoveReplica) -> tuple[_Placed, NodeAssignment]:
        """The deployment and the one assignment a `MoveReplica` moves, or why it cannot."""
        name, index = message.deployment, message.replica_index
        placed = self._placed.get(name)
        if placed is None:
            msg = (
                f"deployment {name} is held by placement groups of an earlier run, not placed "
                "by this service: release it, then place it"
                if name in self._held
                else f"deployment {name} is not placed here"
            )
            raise InvalidSpecError(msg, field="deployment")
        if placed.egress_key is not None:
            msg = f"deployment {name} calls a remote provider: its replicas hold no GPUs to move"
            raise InvalidSpecError(msg, field="deployment")
        held = [a for a in placed.result.assignments if a.replica_index == index]
        if not held:
            msg = f"deployment {name} has no replica {index} placed now"
            raise InvalidSpecError(msg, field="replica_index")
        if len(held) > 1:
            msg = (
                f"replica {index} of {name} is split over {len(held)} nodes; only a replica "
                "held on one node moves whole"
            )
            raise InvalidSpecError(msg, field="replica_index")
        (source,) = held
        if name in self._losing and index in self._losing[name][0]:
            msg = (
                f"replica {index} of {name} is being lost (its node or group is gone) and Ray has "
                "not removed its group yet; the service tries again with its next messages"
            )
            raise BackendError(msg, operation="remove placement group")
        for given, now, field in (
            (message.from_node, source.node, "from_node"),
            (message.gpus, len(source.gpus), "gpus"),
        ):
            if given is not None and given != now:
                msg = (
                    f"the move is stale: replica {index} of {name} holds {len(source.gpus)} "
                    f"GPUs on {source.node} now"
                )
                raise StalePlacementError(msg, field=field)
        return placed, source

    def _check_move_target(self, placed: _Placed, source: NodeAssignment, target: str) -> None:
        """Raise unless ``target`` may take the replica held by ``source`` now."""
        name, index, gpus = placed.place.deployment.name, source.replica_index, len(source.gpus)
        if target == source.node:
            msg = f"replica {index} of {name} runs on {target} already"
            raise InvalidSpecError(msg, field="to_node")
        if target not in self._gpus:
            state = "has left the cluster" if target in self._lost else "is not a GPU node here"
            msg = f"node {target[:80]} {state}"
            raise InvalidSpecError(msg, field="to_node")
        if target in self._avoid:
            msg = f"node {target} is a head node, and head exclusion is on"
            raise InvalidSpecError(msg, field="to_node")
        constraints = placed.place.constraints
        allowed = gpu_scope(self._gpus, constraints)
        if allowed is not None and target not in allowed:
            msg = f"deployment {name}'s constraints do not allow node {target}"
            raise InvalidSpecError(msg, field="to_node")
        if _stacks_spread(self._gpus, name, constraints, target):
            msg = f"deployment {name} is spread, and node {target} holds another of its replicas"
            raise InvalidSpecError(msg, field="to_node")
        free, capacity = self._gpus.free_count(target), self._gpus.capacity(target)
        rejection = gpu_fit(target, capacity=capacity, free=free, gpus=gpus)
        if rejection is not None:  # too few free: the node's reason, as a Place gives it
            msg = (
                f"replica {index} of {name} needs {gpus} free GPU{'' if gpus == 1 else 's'} on "
                f"{target}, which has {free}"
            )
            raise NotEnoughGpusError(
                msg,
                deployment=name,
                requested=gpus,
                available=free,
                largest_node=capacity,
                retryable=gpus <= capacity,
                rejections=(rejection,),
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
        """A replica's group failed after it was planned: give its GPUs back to the ledger.

        Ray first: if Ray would not remove the failed group, it still holds those GPUs, so they
        stay held here (``_stranded``) until a later removal succeeds (`_catch_up`, or a
        `Release`); the replica is off the record at once.
        """
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
        if event.group_removed:
            self._free(event.deployment, lost, None)
        else:
            self._stranded[event.deployment] = (*self._stranded.get(event.deployment, ()), *lost)
        placed.result = self._without(placed.result, {event.replica_index})
        self._not_losing(event.deployment, event.replica_index)  # its group is seen to already
        logger.warning(
            "replica %d of %s failed and is missing: %s",
            event.replica_index,
            event.deployment,
            event.error,
        )
        # Missing now: placed again by a re-sent Place, or (like a lost replica) when capacity
        # appears or its backoff is over, if its Place allows. Not at once: its group just
        # failed where the ledger had room, and would likely fail again there.
        self._degraded.add(event.deployment)
        self._schedule_retry(event.deployment)
        self._rewrite(event.deployment)

    @admits(BundleGpusKnown)
    def _on_bundle_gpus_known(self, event: BundleGpusKnown) -> None:
        """Ray said which GPUs a bundle got: the ledger's ordinals become those devices."""
        placed = self._placed.get(event.deployment)
        if placed is None or not any(
            r.replica_index == event.replica_index and r.attempt == event.attempt
            for r in placed.result.replicas
        ):
            return  # about a group this record no longer holds
        mine = next(
            (
                a
                for a in placed.result.assignments
                if a.replica_index == event.replica_index and a.node == event.node
            ),
            None,
        )
        if mine is None or mine.gpus == event.gpu_ids or event.node not in self._gpus:
            return
        try:
            moves = self._gpus.renumber(event.node, event.deployment, mine.gpus, event.gpu_ids)
        except InvalidSpecError as exc:  # an event handler is total: log, keep the ledger
            logger.warning("could not take Ray's GPU ids for %s: %s", event.deployment, exc)
            return
        target = (event.replica_index, event.node)
        self._renumbered(event.deployment, event.node, moves.get(event.deployment, {}), target)
        placed.result = replace(
            placed.result,
            assignments=tuple(
                replace(a, gpus=event.gpu_ids) if (a.replica_index, a.node) == target else a
                for a in placed.result.assignments
            ),
        )
        self._rewrite(event.deployment)  # a restart must give the same devices back
        for holder, moved in moves.items():
            if holder != event.deployment:
                self._renumbered(holder, event.node, moved, None)
                if holder in self._placed:
                    self._rewrite(holder)

    def _renumbered(
        self, holder: str, node: str, moved: dict[int, int], skip: tuple[int, str] | None
    ) -> None:
        """Carry ledger swaps into ``holder``'s records of ``node`` (except ``skip``)."""
        if not moved:
            return

        def moved_on(assignment: NodeAssignment) -> NodeAssignment:
            if assignment.node != node or (assignment.replica_index, assignment.node) == skip:
                return assignment
            return replace(assignment, gpus=tuple(sorted(moved.get(o, o) for o in assignment.gpus)))

        placed = self._placed.get(holder)
        if placed is not None:
            placed.result = replace(
                placed.result, assignments=tuple(moved_on(a) for a in placed.result.assignments)
            )
        if holder in self._held:
            self._held[holder] = tuple(moved_on(a) for a in self._held[holder])
        if holder in self._stranded:  # a failed replica's GPUs, held until Ray removes its group
            self._stranded[holder] = tuple(moved_on(a) for a in self._stranded[holder])

    # -- the cluster as it changes -------------------------------------------------------------

    @admits(Subscribe)
    def subscribe(self, message: Subscribe) -> None:
        """Tell ``message.subscriber`` the cluster's events from now on; see `Subscribe`."""
        if message.subscriber not in self._subscribers:
            self._subscribers.append(message.subscriber)

    @admits(Unsubscribe)
    def unsubscribe(self, message: Unsubscribe) -> None:
        """Stop telling ``message.subscriber`` events; see `Unsubscribe`."""
        if message.subscriber in self._subscribers:
            self._subscribers.remove(message.subscriber)

    def _notify(self, event: object) -> None:
        """Tell every subscriber ``event``; one that cannot be told is dropped, the rest are.

        Never raises: the change the event tells of is carried out whatever a subscriber does.
        """
        for subscriber in list(self._subscribers):
            try:
                subscriber.tell(event)
            except pykka.ActorDeadError:
                self._subscribers.remove(subscriber)
            except Exception as exc:  # noqa: BLE001 - a subscriber's fault, not this actor's
                logger.warning(
                    "subscriber %s dropped: telling it %s failed: %s: %s",
                    getattr(subscriber, "actor_urn", "?"),
                    type(event).__name__,
                    type(exc).__name__,
                    exc,
                )
                self._subscribers.remove(subscriber)

    @admits(NodeJoined)
    def _on_node_joined(self, event: NodeJoined) -> None:
        """A node joined: its GPUs (and egress) become placeable; degraded deployments retry."""
        node = event.node
        if node.node_id in self._known and node.node_id not in self._lost:
            return  # known and alive: nothing changed
        if node.num_gpus > 0 and node.node_id not in self._gpus:
            self._gpus.add_node(node)
            self._hold_standing(node.node_id)
            own = len(self._gpus.holders(node.node_id))  # the standing groups', if any
            if event.in_use > own:  # someone else's, before a degraded deployment takes them
                self._hold_outside(node.node_id, event.in_use - own)
        if node.is_head and node.node_id not in self._heads:  # shown as the head, GPUs or not
            self._heads |= {node.node_id}
            if self._exclude_heads:
                self._avoid |= {node.node_id}
                self._rules = replace(self._rules, avoid=self._avoid)
        if event.egress:
            self._egress.add_node(node.node_id, node.labels)
        self._lost.discard(node.node_id)
        self._known = (  # nodes that left stay known (and shown as lost)
            frozenset(self._gpus.node_ids()) | frozenset(self._egress.node_ids()) | self._lost
        )
        logger.info("node %s joined with %d GPUs", node.node_id, node.num_gpus)
        self._notify(event)
        self._retry_degraded()

    def _hold_standing(self, node_id: str) -> None:
        """A node joined again: hold its GPUs that groups Ray has not removed yet still take.

        Those of replicas whose loss waits for Ray (`_losing`, still on the record there) and of
        failed groups Ray would not remove (``_stranded``): they are given back when the
        removal succeeds, as on any node.
        """
        standing = [
            (name, a)
            for name, (indexes, _, _) in self._losing.items()
            if name in self._placed
            for a in self._placed[name].result.assignments
            if a.replica_index in indexes
        ]
        standing += [(name, a) for name, kept in self._stranded.items() for a in kept]
        for name, assignment in standing:
            if assignment.node == node_id and assignment.gpus:
                self._gpus.hold(node_id, assignment.gpus, name)

    @admits(NodeLost)
    def _on_node_lost(self, event: NodeLost) -> None:
        """A node left: it leaves the ledgers, and every replica on it is lost (and re-placed)."""
        node_id = event.node_id
        if node_id not in self._known or node_id in self._lost:
            return
        if node_id in self._gpus:
            self._gpus.remove_node(node_id)
        self._outside_held.pop(node_id, None)  # what others held there went with the node
        self._outside_short.pop(node_id, None)
        self._egress.remove_node(node_id)
        self._lost.add(node_id)
        self._known = (
            frozenset(self._gpus.node_ids()) | frozenset(self._egress.node_ids()) | self._lost
        )
        for name, adopted in list(self._held.items()):
            kept = tuple(a for a in adopted if a.node != node_id)
            if kept:
                self._held[name] = kept
            else:
                del self._held[name]
        logger.info("node %s left the cluster", node_id)
        self._notify(event)
        for name in sorted(self._placed):
            placed = self._placed[name]
            lost = sorted({a.replica_index for a in placed.result.assignments if a.node == node_id})
            if lost:
                self._lose_replicas(name, lost, node_id)
        self._retry_degraded()  # the lost replicas' GPUs on other nodes are free again

    @admits(GroupRescheduling)
    def _on_group_rescheduling(self, event: GroupRescheduling) -> None:
        """Ray moves a group that was ready (a node under it died): the replica is lost."""
        found = replica_of_group(event.group_name)
        placed = None if found is None else self._placed.get(found[0])
        if found is None or placed is None:
            return
        name, replica = found
        if any(
            r.replica_index == replica and r.group_id == event.group_id
            for r in placed.result.replicas
        ):
            # A node under the group is gone, even if its loss has not been told yet: the
            # replica is placed again off the group's nodes (they are offered again later).
            suspect = frozenset(
                a.node for a in placed.result.assignments if a.replica_index == replica
            )
            self._lose_replicas(name, [replica], None, suspect=suspect)
            self._retry_degraded(avoid=suspect)  # its GPUs elsewhere are free again

    @admits(GpusInUse)
    def _on_gpus_in_use(self, event: GpusInUse) -> None:
        """Ray's GPUs in use, settled: hold what other users took, offer what they gave back.

        On each node whose reading has settled, the GPUs in use that no group of the service
        holds are someone else's: the ledger holds that many for them (``outside``), as far as
        it has them free; the rest it takes as soon as the service frees them. A group is the
        service's by its name, for no more GPUs on a node than the ledger holds for that
        deployment there, and what it freed there after the reading began (a reading may
        arrive after a removal): a group of the same name that another namespace made is
        someone else's beyond that. Nodes whose reading still moves (``unsettled``) are left as
        they are.
        """
        unsettled = frozenset(event.unsettled)
        read_at = time.monotonic() if event.read_at is None else event.read_at
        ours = self._own_gpus_in_use(event.groups, unsettled, read_at)
        in_use = dict(event.in_use)
        freed = False
        for node in sorted({*in_use, *self._outside_held, *self._outside_short} - unsettled):
            self._outside_short.pop(node, None)
            if node in self._gpus:
                freed |= self._hold_outside(node, max(0, in_use.get(node, 0) - ours.get(node, 0)))
        if freed:
            logger.info("GPUs held outside the service were given back")
            self._retry_degraded()  # what others gave back may hold what was lost

    def _own_gpus_in_use(
        self, groups: Iterable[tuple[str, str, int]], unsettled: AbstractSet[str], read_at: float
    ) -> dict[str, int]:
        """Node id -> GPUs the service's own groups hold there, of Ray's (group, node, GPUs).

        GPUs freed on a node before a settled reading of it began are forgotten: the reading
        no longer shows their groups (Ray's table says a group is gone as its removal returns,
        and a node's reading settles only half a second after its last change).
        """
        shares: dict[tuple[str, str], int] = {}
        for group, node, gpus in groups:
            found = replica_of_group(group)
            if found is not None:
                shares[found[0], node] = shares.get((found[0], node), 0) + gpus
        holding: dict[str, Counter[str]] = {}

        def held(name: str, node: str) -> int:
            if node not in holding:
                holding[node] = Counter(
                    self._gpus.holders(node).values() if node in self._gpus else ()
                )
            return holding[node][name]

        for key in [k for k, (_, at) in self._leaving.items() if at < read_at]:
            if key[1] not in unsettled:
                del self._leaving[key]
        ours: dict[str, int] = {}
        for (name, node), gpus in shares.items():
            allowed = held(name, node) + self._leaving.get((name, node), (0, 0.0))[0]
            ours[node] = ours.get(node, 0) + min(gpus, allowed)
        return ours

    def _hold_outside(self, node: str, wanted: int) -> bool:
        """Hold ``wanted`` GPUs of ``node`` for other users; whether some were given back."""
        held = self._outside_held.get(node, 0)
        if wanted < held:
            ordinals = [o for o, h in self._gpus.holders(node).items() if h == OUTSIDE_HOLDER]
            self._gpus.release(node, ordinals[wanted:], OUTSIDE_HOLDER)
            self._set_outside(node, min(wanted, len(ordinals)))
            return True
        if wanted > held:
            self._outside_short[node] = wanted - held
            self._top_up_outside(node)
        return False

    def _given_back(self, name: str, node: str, gpus: int) -> None:
        """``name`` gave back ``gpus`` GPUs of ``node`` on the ledger: what it means for others."""
        self._leave(name, node, gpus)
        if self._outside_short and node in self._outside_short:
            self._top_up_outside(node)

    def _leave(self, name: str, node: str, gpus: int) -> None:
        """Count ``gpus`` freed of ``name`` on ``node`` as its groups' in older readings.

        Only with a planner: without one the service makes no groups for readings to show.
        """
        if self._planner is None:
            return
        key = (name, node)
        earlier, _ = self._leaving.pop(key, (0, 0.0))
        self._leaving[key] = (earlier + gpus, time.monotonic())
        if len(self._leaving) > LEAVING_REMEMBERED:
            self._leaving.popitem(last=False)

    def _set_outside(self, node: str, held: int) -> None:
        if held:
            self._outside_held[node] = held
        else:
            self._outside_held.pop(node, None)

    def _top_up_outside(self, node: str) -> None:
        """Hold for other users the GPUs of ``node`` they hold but the ledger had not free."""
        short = self._outside_short.get(node, 0)
        taken = min(short, self._gpus.free_count(node)) if node in self._gpus else 0
        if taken:
            self._gpus.reserve(node, taken, OUTSIDE_HOLDER)
            self._set_outside(node, self._outside_held.get(node, 0) + taken)
        if short - taken > 0:
            self._outside_short[node] = short - taken
        else:
            self._outside_short.pop(node, None)

    def _not_losing(self, name: str, index: int) -> None:
        """Drop replica ``index`` of ``name`` from the losses waiting for Ray (`_losing`).

        Its group is dealt with otherwise (it failed, or the deployment was released): a loss
        carried out later would take the replica placed in its stead.
        """
        losing = self._losing.get(name)
        if losing is None:
            return
        indexes, node_id, suspect = losing
        if indexes - {index}:
            self._losing[name] = (indexes - {index}, node_id, suspect)
        else:
            del self._losing[name]

    def _lose_replicas(
        self,
        name: str,
        indexes: Sequence[int],
        node_id: str | None,
        *,
        suspect: frozenset[str] = frozenset(),
    ) -> None:
        """Forget replicas whose node (or group) is gone; place them again if their Place allows.

        ``suspect`` nodes are not used for the immediate re-placement.
        """
        placed = self._placed[name]
        earlier = self._losing.pop(name, None)
        gone = set(indexes) | (earlier[0] if earlier else frozenset())
        gone &= {a.replica_index for a in placed.result.assignments}  # still on the record
        if not gone:
            return
        if placed.egress_key is None and self._planner is not None:
            removal = RemoveReplicaGroups(name, tuple(sorted(gone)), lost_node=node_id or "")
            try:
                self._ask_planner([removal])
            except PlacementError as exc:  # an event handler is total: log, try again later
                # Ray first: the groups stand, so their GPUs stay held and the replicas stay on
                # the record; the loss is carried out with a later message (`_catch_up`).
                logger.warning("could not remove the lost groups of %s: %s", name, exc)
                self._losing[name] = (frozenset(gone), node_id, suspect)
                return
        lost = [a for a in placed.result.assignments if a.replica_index in gone]
        self._free(name, lost, placed.egress_key)  # a node that left holds nothing any more
        placed.result = self._without(placed.result, gone)
        will = placed.place.constraints.replace_lost
        for index in sorted(gone):
            self._notify(
                ReplicaLost(
                    deployment=name, replica_index=index, node_id=node_id, will_replace=will
                )
            )
        self._degraded.add(name)
        if will:
            self._replace_missing(name, avoid=suspect)
        if name in self._placed:
            self._rewrite(name)

    def _replace_missing(
        self, name: str, *, avoid: frozenset[str] = frozenset(), make_room: bool = True
    ) -> None:
        """Place a deployment's missing replicas again, on what capacity there is now.

        ``make_room``: movable replicas may be moved to make room (`_making_room`).
        """
        placed = self._placed[name]
        missing = placed.missing_replicas()
        if not missing:
            self._healed(name)
            return
        if name in self._stranded:  # a failed group of it still stands: placed again once gone
            self._schedule_retry(name, avoid)
            return
        try:
            more = (
                self._making_room(
                    lambda: self._place_missing(placed, avoid=avoid),
                    placed.place,
                    replicas=len(missing),
                    avoid=avoid,
                )
                if make_room
                else self._place_missing(placed, avoid=avoid)
            )
        except PlacementError as exc:
            logger.info("%s stays degraded: %s", name, exc)
            self._schedule_retry(name, avoid)
            return
        self._healed(name)
        for index in missing:
            self._notify(
                ReplicaReplaced(
                    deployment=name,
                    replica_index=index,
                    placement=next((r for r in more.replicas if r.replica_index == index), None),
                    assignments=tuple(a for a in more.assignments if a.replica_index == index),
                )
            )

    def _place_missing(
        self, placed: _Placed, *, avoid: frozenset[str] = frozenset()
    ) -> PlacementResult:
        """Place a deployment's missing replicas again (one call); returns what was added.

        Nodes its constraints name that are gone are simply not available, nor are ``avoid``
        nodes. Raises the refusal (nothing changes) when they do not fit.
        """
        deployment, constraints = placed.place.deployment, placed.place.constraints
        rules = replace(self._rules, avoid=self._avoid | avoid) if avoid else self._rules
        again = decide_placement(
            self._gpus,
            self._egress,
            deployment,
            constraints,
            rules=rules,
            indexes=placed.missing_replicas(),
            own=placed.result.assignments,
            named_nodes_known=False,
        )
        more = PlacementResult(deployment=deployment, assignments=again)
        if placed.egress_key is None:
            more = self._reserve_on_cluster(more)
        placed.result = self._merge(placed.result, more)
        self._rewrite(deployment.name)
        return more

    def _retry_degraded(
        self, *, avoid: frozenset[str] = frozenset(), make_room: bool = True
    ) -> None:
        """Place the degraded deployments' missing replicas again where they fit, off ``avoid``.

        ``make_room``: movable replicas may be moved to make room for them.
        """
        for name in sorted(self._degraded):
            placed = self._placed.get(name)
            if placed is None:
                self._degraded.discard(name)
            elif placed.place.constraints.replace_lost:
                self._replace_missing(name, avoid=avoid, make_room=make_room)

    # -- trying again, on a timer ----------------------------------------------------------------

    def _healed(self, name: str) -> None:
        """``name`` has every replica placed again: no try of it is due any more."""
        self._degraded.discard(name)
        self._retry_due.pop(name, None)
        self._retry_avoid.pop(name, None)

    def _schedule_retry(self, name: str, avoid: frozenset[str] = frozenset()) -> None:
        """Try ``name``'s missing replicas again after its backoff, unless a try is due already.

        Each call that finds no try due counts one more failure in a row (the wait doubles);
        a failure ``reset_after_s`` after the latest try counts as the first of a new run.
        ``avoid``: nodes the tries keep off (those under a group Ray rescheduled, which the node
        table may not show dead yet), until the deployment is whole again.
        """
        placed = self._placed.get(name)
        retry = self._retry
        if (
            retry is None
            or name in self._retry_due
            or placed is None
            or not placed.place.constraints.replace_lost
        ):
            return
        now = time.monotonic()
        failures, latest_try = self._retry_failures.get(name, (0, None))
        failures = retry.failures_now(failures, latest_try, now)
        due = now + retry.delay_s(failures)
        self._retry_failures[name] = (failures, due)
        self._retry_due[name] = due
        if avoid:
            self._retry_avoid[name] = avoid
        if self._retry_next is None or due < self._retry_next:
            self._retry_next = due

    def _arm_retry(self) -> None:
        """Set the timer for the earliest try due: a deployment's, or the catch-up's.

        The catch-up (`_catch_up`) runs with any message: while something is behind, the timer
        sends one after the catch-up's own backoff, in case no other message comes. A timer
        that has rung already is left alone (its message is on the way), so only one is ever
        pending. Never raises: it runs after each message, whose reply must stand.
        """
        retry = self._retry
        if retry is None:
            return
        behind = self._behind()
        if not behind and self._retry_next is None and self._catch_up_due is None:
            self._catch_up_failures = 0
            return  # nothing waits: the common case, after each message
        try:
            now = time.monotonic()
            if behind:
                if self._catch_up_due is None:
                    self._catch_up_failures += 1
                    self._catch_up_due = now + retry.delay_s(self._catch_up_failures)
            else:
                self._catch_up_failures, self._catch_up_due = 0, None
            due = self._retry_next
            if self._catch_up_due is not None and (due is None or self._catch_up_due < due):
                due = self._catch_up_due
            timer = self._timer
            if due is None or (
                timer is not None and (self._timer_at <= due or self._timer_at <= now)
            ):
                return  # nothing to try, or a timer rings (or rang) for it already
            if timer is not None:
                timer.cancel()
            if self._timers is None:
                self._timers = Deadlines("placement retries")
            ref, self._timer_number = self.actor_ref, self._timer_number + 1
            ring = _RetryDue(self._timer_number)
            self._timer_at = due
            self._timer = self._timers.call_later(
                max(due - now, 0.0), lambda: tell_if_alive(ref, ring)
            )
        except Exception:  # a broken timer must not take a handled message's reply with it
            logger.exception("could not set the retry timer; what waits is tried with messages")

    @admits(_RetryDue)
    def _on_retry_due(self, message: _RetryDue) -> None:
        """The timer rang: catch up, then try again each deployment whose try is due.

        A deployment placed whole again since, or released, is simply dropped; one that still
        does not fit is given its next, longer wait (`_replace_missing`).
        """
        del message  # a timer that was replaced, and rang anyway, counts the same
        now = time.monotonic()
        due = sorted(n for n, at in self._retry_due.items() if at <= now)
        for name in due:
            del self._retry_due[name]
        self._retry_next = min(self._retry_due.values(), default=None)
        if self._catch_up_due is not None and self._catch_up_due <= now:
            self._catch_up_due = None  # still behind after this: the next, longer wait
        try:
            if self._behind():
                self._catch_up()
        finally:
            for name in due:
                if name in self._degraded and name in self._placed:
                    self._replace_missing(name, avoid=self._retry_avoid.pop(name, frozenset()))

    # -- what a restart must not lose ------------------------------------------------------------

    def _write(self, placed: _Placed) -> None:
        """Write a deployment down as it is now (raises `BackendError` if the store fails)."""
        if self._checkpoints is None:
            return
        result = placed.result
        record = DeploymentCheckpoint(
            deployment=placed.place.deployment,
            constraints=placed.place.constraints,
            assignments=result.assignments,
            groups=tuple(
                ReplicaGroup(replica_index=r.replica_index, group_id=r.group_id, attempt=r.attempt)
                for r in result.replicas
                if r.group_id and r.attempt > 0
            ),
        )
        self._checkpoints.save(deployment_key(result.deployment.name), encode(record))

    def _rewrite(self, name: str) -> None:
        """Write a deployment down again after its replicas moved.

        A failure is logged and the name kept in ``_unwritten``: the write is tried again with
        every later message (`_write_unwritten`) until it succeeds or the deployment is released.
        """
        try:
            self._write(self._placed[name])
        except PlacementError as exc:
            self._unwritten.add(name)
            logger.warning("could not write %s down again (will retry): %s", name, exc)
        else:
            self._unwritten.discard(name)

    def _pending_losses(self) -> dict[str, frozenset[int]]:
        """The replicas still on the record whose loss waits for Ray to remove their groups."""
        return {name: losing[0] for name, losing in self._losing.items()}

    def _behind(self) -> bool:
        """Whether something Ray or the record store refused is still to be carried out."""
        return bool(self._unwritten or self._losing or self._stranded)

    def _catch_up(self) -> None:
        """Carry out what Ray or the record store refused before: removals, then records.

        Each kind stops at its first refusal (Ray or the store is likely still down), without
        holding up the others: GPUs freed are offered to degraded deployments, and records are
        written even while a removal waits. While a removal sent before is still unanswered
        (the planner is stuck in a call to Ray), no removal is sent again: each message would
        otherwise wait ``planner_timeout_s`` for it, and queue one more removal behind it.
        """
        if self._planner_stuck():
            if self._unwritten:
                self._write_unwritten()
            return
        freed = False
        for name, stranded in sorted(self._stranded.items()):
            replicas = tuple(sorted({a.replica_index for a in stranded}))
            try:
                self._ask_planner([RemoveReplicaGroups(name, replicas)])
            except PlacementError:
                break  # Ray still refuses: the rest waits for the next message
            del self._stranded[name]
            self._free(name, stranded, None)
            freed = True
        if freed:  # a failed replica's GPUs are back: it (or another) may be placed again
            self._retry_degraded()
        for name, (indexes, node_id, suspect) in sorted(self._losing.items()):
            if name not in self._placed:  # released since: its groups went with it
                self._losing.pop(name, None)
                continue
            self._lose_replicas(name, sorted(indexes), node_id, suspect=suspect)
            if name in self._losing:  # Ray still refuses: the rest waits for the next message
                break
        if self._unwritten:
            self._write_unwritten()

    def _write_unwritten(self) -> None:
        """Retry the records whose rewrite failed; stop at the first failure (the store is down)."""
        for name in sorted(self._unwritten):
            placed = self._placed.get(name)
            if placed is None:  # released since: its record is deleted, nothing to write
                self._unwritten.discard(name)
                continue
            try:
                self._write(placed)
            except PlacementError:
                return
            self._unwritten.discard(name)

    def _adopt(self, earlier: RecoveredDeployment) -> None:
        """Take back a deployment of an earlier run: its kept replicas, where they are."""
        checkpoint = earlier.checkpoint
        deployment, name = checkpoint.deployment, earlier.name
        key = egress_key(deployment)
        assignments: list[NodeAssignment] = []
        adopting: list[PlanReplica] = []
        for replica in earlier.adopted:
            kept = self._reserve_again(name, replica.assignments, key)
            if kept is None:
                if replica.group is not None and self._planner is not None:
                    with contextlib.suppress(PlacementError):  # cannot be kept: reap its group
                        self._ask_planner(
                            [
                                PlanReplica(
                                    deployment=name,
                                    replica_index=replica.replica_index,
                                    assignments=replica.assignments,
                                    adopt=replica.group,
                                ),
                                RemoveReplicaGroups(name, (replica.replica_index,)),
                            ]
                        )
                continue
            if replica.group is not None and self._planner is not None:
                adopting.append(
                    PlanReplica(
                        deployment=name,
                        replica_index=replica.replica_index,
                        assignments=kept,
                        notify=self.actor_ref,
                        adopt=replica.group,
                    )
                )
            assignments.extend(kept)
        replicas = []
        for message in adopting:  # one at a time: a group that is gone is only that replica
            try:
                replicas.extend(self._ask_planner([message]))
            except PlacementError as exc:
                index = message.replica_index
                logger.info("replica %d of %s is placed again: %s", index, name, exc)
                # Its group goes first: a planner that answered too late may adopt it yet, and
                # it would stand, holding GPUs the ledger gives to others, and in the way of the
                # new group's name. Until Ray removes it, its GPUs stay held (`_unplan`).
                if self._unplan(name, message.assignments):
                    self._free(name, message.assignments, None)
                assignments = [a for a in assignments if a.replica_index != message.replica_index]
        result = PlacementResult(
            deployment=deployment, assignments=tuple(assignments), replicas=tuple(replicas)
        )
        self._placed[name] = _Placed(
            place=Place(deployment, checkpoint.constraints), result=result, egress_key=key
        )
        if checkpoint.constraints.movable and key is None:
            self._movable_names.add(name)
        logger.info(
            "recovered %s: %d of %d replicas kept",
            name,
            len({a.replica_index for a in assignments}),
            deployment.replicas,
        )

    def _reserve_again(
        self, name: str, assignments: Sequence[NodeAssignment], key: EgressKey | None
    ) -> tuple[NodeAssignment, ...] | None:
        """Reserve a kept replica's GPUs (numbered anew) or egress slots; ``None`` if it can't."""
        if key is not None:
            if not all(a.node in self._egress for a in assignments):
                return None
            for assignment in assignments:
                self._egress.add(assignment.node, key)
            return tuple(assignments)
        kept: list[NodeAssignment] = []
        for assignment in assignments:
            count = len(assignment.gpus)
            if assignment.node not in self._gpus or self._gpus.free_count(assignment.node) < count:
                logger.warning("%s's GPUs on %s cannot be reserved again", name, assignment.node)
                self._free(name, kept, None)
                return None
            ordinals = self._gpus.reserve(assignment.node, count, name)
            kept.append(replace(assignment, gpus=ordinals))
        return tuple(kept)

    def _recover_missing(self, name: str) -> None:
        """After a restart: place a recovered deployment's missing replicas, or mark it degraded."""
        placed = self._placed[name]
        if placed.missing_replicas():
            self._degraded.add(name)
            if placed.place.constraints.replace_lost:
                self._replace_missing(name)
        self._rewrite(name)

    # -- queries -----------------------------------------------------------------------------

    @admits(AnswerNow)
    def answer_now(self, message: AnswerNow) -> object:
        """The wrapped query's reply (at once, even during a command's wait; see `AnswerNow`)."""
        return KeepServingActor.on_receive(self, message.query)

    @admits(GetPlacement)
    def get_placement(self, message: GetPlacement) -> Placement:
        """A deployment's current result, after any re-placement; see `GetPlacement`."""
        placed = self._placed.get(message.deployment)
        if placed is None:
            return Placement(deployment=message.deployment, result=None)
        return Placement(
            deployment=message.deployment,
            result=placed.result,
            missing=tuple(placed.missing_replicas()),
        )

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
                    held=tuple(
                        GpuHolding(ordinal=o, deployment=d)
                        for o, d in holders.items()
                        if d != OUTSIDE_HOLDER
                    ),
                    outside=sum(1 for d in holders.values() if d == OUTSIDE_HOLDER),
                    outside_waiting=self._outside_short.get(node_id, 0),
                    is_head=node_id in self._heads,
                    egress=node_id in self._egress,
                    remote_replicas=self._egress.load(node_id) if node_id in self._egress else 0,
                    state=NodeState.LOST if node_id in self._lost else NodeState.ALIVE,
                    labels=(
                        self._gpus.topology(node_id).labels
                        if in_ledger
                        else self._egress.labels(node_id)
                        if node_id in self._egress
                        else {}
                    ),
                )
            )
        return ClusterView(
            nodes=tuple(views),
            deployments=tuple(sorted({*self._placed, *self._held})),
            degraded=tuple(sorted(n for n, p in self._placed.items() if p.missing_replicas())),
        )

    # -- decisions ---------------------------------------------------------------------------

    def _reserve_on_cluster(self, result: PlacementResult) -> PlacementResult:
        """Hand the decided local replicas to the planner; undo them on the ledger if it fails."""
        if self._planner is None:
            return result
        name = result.deployment.name
        try:
            replicas = self._plan(name, list(result.assignments))
        except PlacementError:
            if self._unplan(name, result.assignments):
                self._free(name, result.assignments, None)
            raise
        return replace(result, replicas=replicas)

    def _unplan(self, name: str, assignments: Sequence[NodeAssignment]) -> bool:
        """Remove the groups planned for ``assignments`` (a Place being undone); whether Ray did.

        Ray first: if it will not remove them, their GPUs stay held on the ledger (``_stranded``)
        and the removal is tried again with later messages (`_catch_up`), or by a `Release`.
        """
        if self._planner is None:
            return True
        indexes = tuple(sorted({a.replica_index for a in assignments}))
        try:
            self._ask_planner([RemoveReplicaGroups(name, indexes)])
        except PlacementError as exc:
            logger.warning("could not remove the groups of an undone Place of %s: %s", name, exc)
            self._stranded[name] = (*self._stranded.get(name, ()), *assignments)
            return False
        return True

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
        return tuple(self._ask_planner(messages))  # undone by the caller (`_unplan`) if it fails

    def _ask_planner(self, messages: list[Any]) -> list[Any]:
        if self._planner is None:  # pragma: no cover - callers check
            return []
        futures = [self._planner.ask(m, block=False) for m in messages]
        try:
            self._wait_serving(futures, self._planner_timeout_s, serve=SERVED_WHILE_WAITING)
            return [f.get(timeout=0) for f in futures]
        except pykka.Timeout as exc:
            self._unanswered = [f for f in (*self._unanswered, *futures) if not _settled(f)]
            msg = f"the planner did not answer within {self._planner_timeout_s:g}s"
            raise BackendError(msg, operation="plan") from exc
        except pykka.ActorDeadError as exc:
            msg = "the planner has stopped"
            raise BackendError(msg, operation="plan") from exc

    def _planner_stuck(self) -> bool:
        """Whether a request the planner did not answer in time is still unanswered."""
        if self._unanswered:
            self._unanswered = [f for f in self._unanswered if not _settled(f)]
        return bool(self._unanswered)

    @staticmethod
    def _without(result: PlacementResult, indexes: AbstractSet[int]) -> PlacementResult:
        """``result`` less the replicas numbered ``indexes`` (their assignments and groups)."""
        return replace(
            result,
            assignments=tuple(a for a in result.assignments if a.replica_index not in indexes),
            replicas=tuple(r for r in result.replicas if r.replica_index not in indexes),
        )

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

    def _free(
        self, name: str, assignments: Iterable[NodeAssignment], key: EgressKey | None
    ) -> None:
        for assignment in assignments:
            if assignment.gpus and assignment.node in self._gpus:
                try:
                    self._gpus.release(assignment.node, assignment.gpus, name)
                except InvalidSpecError:  # the node left and joined again since: what it holds
                    holders = self._gpus.holders(assignment.node)
                    mine = [o for o in assignment.gpus if holders.get(o) == name]
                    self._gpus.release(assignment.node, mine, name)
            if key is not None and assignment.node in self._egress:
                self._egress.remove(assignment.node, key)
            if assignment.gpus:
                self._given_back(name, assignment.node, len(assignment.gpus))


def _settled(future: pykka.Future[Any]) -> bool:
    """Whether ``future`` has its value or its error (without waiting)."""
    try:
        future.get(timeout=0)
    except pykka.Timeout:
        return False
    except Exception:  # noqa: BLE001 - an error is a settled answer too
        return True
    return True


def _without_frames(error: PlacementError) -> PlacementError:
    """``error``, and the errors it was raised from, without their tracebacks.

    Their frames would keep this actor's locals (a whole `PlaceMany` batch) alive for as long as
    the asker keeps the reply; the causes themselves, and their messages, stay.
    """
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error


class DeploymentPlacementProxy(ActorMemberMixin, pykka.ActorProxy[DeploymentPlacementActor]):
    """The static type of the actor's proxy; get one with `deployment_placement_proxy`.

    Each method sends the message and returns a `pykka.Future` of the reply.
    """

    place = proxy_method(DeploymentPlacementActor.place)
    place_many = proxy_method(DeploymentPlacementActor.place_many)
    release = proxy_method(DeploymentPlacementActor.release)
    move_replica = proxy_method(DeploymentPlacementActor.move_replica)
    get_cluster_view = proxy_method(DeploymentPlacementActor.get_cluster_view)
    get_placement_failure = proxy_method(DeploymentPlacementActor.get_placement_failure)
    get_defragmentation_plan = proxy_method(DeploymentPlacementActor.get_defragmentation_plan)
    get_placement = proxy_method(DeploymentPlacementActor.get_placement)
    subscribe = proxy_method(DeploymentPlacementActor.subscribe)
    unsubscribe = proxy_method(DeploymentPlacementActor.unsubscribe)
    ask_planner = proxy_method(DeploymentPlacementActor.ask_planner)


def deployment_placement_proxy(
    ref: pykka.ActorRef[DeploymentPlacementActor],
) -> DeploymentPlacementProxy:
    """The typed proxy of a running `DeploymentPlacementActor`."""
    return cast("DeploymentPlacementProxy", ref.proxy())
