"""PlanningActor: makes the cluster reserve exactly what the ledger decided, without waiting on it.

For each `PlanReplica` it builds a detached, named placement group with every bundle pinned to its
chosen node and answers at once with a `ReplicaPlacement` of futures. Readiness, timeouts and the
bundles' IP/port probes come back as messages (from backend callbacks and timers), so the mailbox
never blocks on Ray: a hundred replicas planned together take about what Ray needs for a hundred
groups, not a hundred sequential waits.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from placement_actors.actors.futures import CallbackFuture
from placement_actors.actors.mailbox import KeepServingActor, admits, tell_if_alive
from placement_actors.actors.messages import (
    BundleGpusKnown,
    BundleProbed,
    BundleProbeFailed,
    GetReplicaGroups,
    GroupState,
    PlacementGroupFailed,
    PlacementGroupReady,
    PlacementGroupTimedOut,
    PlanReplica,
    RemoveReplicaGroups,
    ReplicaFailed,
    ReplicaGroupsRemoved,
    ReplicaGroupsView,
    ReplicaGroupView,
)
from placement_actors.backends.protocol import BundleProbe, CheckpointStore, ClusterBackend
from placement_actors.backends.timers import Deadline, Deadlines
from placement_actors.domain.checkpoints import (
    GROUP_KEYS,
    GroupCheckpoint,
    KnownEndpoint,
    decode,
    encode,
    group_key,
)
from placement_actors.domain.deployments import group_name, group_prefix
from placement_actors.domain.errors import (
    BackendError,
    InvalidSpecError,
    NodeLostError,
    PlacementCancelledError,
    PlacementError,
    PlacementGroupTimeoutError,
)
from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.results import (
    BundleEndpoint,
    NodeAssignment,
    ReplicaBundleSpec,
    ReplicaPlacement,
)
from placement_actors.domain.validation import check_timeout, revalidated
from placement_actors.policies.bundle_shapes import pinned_bundle_spec
from placement_actors.policies.port_book import (
    PortBook,
    ProbeVerdict,
    judge_probe,
    no_port_error,
)

__all__ = ["PlanningActor", "PlanningProxy", "planning_proxy"]

logger = logging.getLogger(__name__)


def _fail_future(future: pykka.Future[Any], error: BaseException) -> None:
    future.set_exception(exc_info=(type(error), error, error.__traceback__))


@dataclass(frozen=True, slots=True)
class _Unfound:
    """A group of an earlier run that Ray could not be asked about: removed by name and id."""

    group_id: str


@dataclass(slots=True, kw_only=True)
class _Group:
    """What the planner knows of one replica's group (mutable: owned by the actor thread)."""

    placement: ReplicaPlacement
    assignments: tuple[NodeAssignment, ...]
    handle: object
    ips: list[pykka.Future[str]]
    ports: list[pykka.Future[int]]
    gpu_ids: list[pykka.Future[tuple[int, ...]]]
    notify: pykka.ActorRef[Any] | None
    timeout_s: float
    attempt: int
    known: tuple[KnownEndpoint | None, ...] = ()
    claimed: set[int] = field(default_factory=set)
    state: GroupState = GroupState.PENDING
    timer: Deadline | None = None
    deadline_at: float = 0.0  # time.monotonic() of the armed deadline
    resolved: set[int] = field(default_factory=set)
    probes: dict[int, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.placement.group_name


class PlanningActor(KeepServingActor):
    """Builds each replica's placement group and hands out futures for its IPs and ports.

    Args:
        backend: the cluster (`placement_actors.backends.ray.RayBackend` on Ray).
        ready_timeout_s: default time Ray may take to make a group ready.
        checkpoints: where each group's endpoints are written as they become known, before
            their futures resolve (a `GroupCheckpoint`), and deleted with the group, so that a
            restarted service gives the same ports again (see `PlanReplica.adopt`); ``None``:
            nothing is written.
        learn_gpu_ids: find each bundle's endpoint with a probe task in the bundle that holds
            its GPUs, so that the `ReplicaPlacement`'s ``gpu_ids`` are the ids Ray gave it (and
            the ledger is renumbered to match). Default ``False``: the backend answers from the
            bundle's node without a task (on Ray, the node's port agent: much faster, no worker
            process per bundle), and ``gpu_ids`` resolve to ``()``; a worker in the bundle sees
            its GPUs as Ray sets them (``CUDA_VISIBLE_DEVICES``) either way.
    """

    def __init__(
        self,
        *,
        backend: ClusterBackend,
        ready_timeout_s: float = 60.0,
        checkpoints: CheckpointStore | None = None,
        learn_gpu_ids: bool = False,
    ) -> None:
        """Keep the backend; nothing is sent to the cluster until the first `PlanReplica`."""
        super().__init__()
        check_timeout(ready_timeout_s, "ready_timeout_s")
        if not isinstance(learn_gpu_ids, bool):
            msg = f"learn_gpu_ids must be true or false, got {type(learn_gpu_ids).__name__}"
            raise InvalidSpecError(msg, field="learn_gpu_ids")
        self._learn_gpu_ids = learn_gpu_ids
        self._backend = backend
        self._deadlines = Deadlines("placement-group deadlines")
        self._ready_timeout_s = ready_timeout_s
        self._checkpoints = checkpoints
        self._groups: dict[str, _Group] = {}
        self._unremoved: dict[str, object] = {}  # failed groups Ray would not remove yet
        self._ports = PortBook()
        self._hold_recorded_ports()
        self._next_attempt = 1
        self._handlers = {
            PlanReplica: self.plan_replica,
            RemoveReplicaGroups: self.remove_replica_groups,
            GetReplicaGroups: self.get_replica_groups,
            PlacementGroupReady: self._on_ready,
            PlacementGroupFailed: self._on_failed,
            PlacementGroupTimedOut: self._on_timed_out,
            BundleProbed: self._on_probed,
            BundleProbeFailed: self._on_probe_failed,
        }

    def on_stop(self) -> None:
        """Cancel the timers and fail unresolved futures; detached groups outlive the actor."""
        self._deadlines.stop()
        for group in self._groups.values():
            self._settle_all(group, BackendError("the planner stopped", operation="plan replica"))

    # -- commands and queries ----------------------------------------------------------------

    @admits(PlanReplica)
    def plan_replica(self, message: PlanReplica) -> ReplicaPlacement:
        """Create the replica's group and answer at once; see `PlanReplica`."""
        name = group_name(message.deployment, message.replica_index)
        self._remove_unremoved()  # a failed group of this name must not stand in the way
        known = self._groups.get(name)
        if known is not None and known.state is not GroupState.FAILED:
            if known.assignments == message.assignments:
                return known.placement
            msg = f"group {name} already holds a different reservation; remove it first"
            raise InvalidSpecError(msg, field="assignments")
        spec = pinned_bundle_spec(message.assignments)
        adopt = message.adopt
        handle, attempt = self._create(spec, name) if adopt is None else self._adopt(adopt, name)
        ips: list[pykka.Future[str]] = [CallbackFuture() for _ in message.assignments]
        ports: list[pykka.Future[int]] = [CallbackFuture() for _ in message.assignments]
        gpu_ids: list[pykka.Future[tuple[int, ...]]] = [
            CallbackFuture() for _ in message.assignments
        ]
        placement = ReplicaPlacement(
            deployment=message.deployment,
            replica_index=message.replica_index,
            group_name=name,
            spec=spec,
            bundles=tuple(
                BundleEndpoint(node=a.node, node_ip=ip, port=port, gpu_ids=ids)
                for a, ip, port, ids in zip(message.assignments, ips, ports, gpu_ids, strict=True)
            ),
        )
        timeout_s = message.ready_timeout_s or self._ready_timeout_s
        placement = dataclasses.replace(
            placement, attempt=attempt, group_id=self._backend.group_id(handle)
        )
        group = _Group(
            placement=placement,
            assignments=message.assignments,
            handle=handle,
            ips=ips,
            gpu_ids=gpu_ids,
            ports=ports,
            notify=message.notify,
            timeout_s=timeout_s,
            attempt=attempt,
            known=(None,) * len(message.assignments) if adopt is None else adopt.endpoints,
        )
        me = self.actor_ref
        try:
            self._backend.when_ready(
                handle,
                lambda error: tell_if_alive(
                    me,
                    PlacementGroupReady(group_name=name, attempt=attempt)
                    if error is None
                    else PlacementGroupFailed(group_name=name, attempt=attempt, error=error),
                ),
            )
        except BackendError:
            # A group that cannot be watched cannot be kept, adopted or not: the replica is
            # placed again, and a group of this name must not stand in the way.
            try:
                self._backend.remove_group(handle)
            except BackendError:
                self._unremoved[name] = handle  # tried again; its ports held until then
            else:
                self._ports.release(name)
            raise
        self._groups[name] = group
        for index, recorded in enumerate(group.known):
            # An adopted group's recorded ports are its own: held for it since this planner
            # started (`_hold_recorded_ports`), or taken back now if still free.
            if recorded is not None and (
                self._ports.holder(recorded.node_ip, recorded.port) == name
                or self._ports.claim(recorded.node_ip, recorded.port, name)
            ):
                group.claimed.add(index)
        self._arm_timer(group)
        return placement

    def _create(self, spec: ReplicaBundleSpec, name: str) -> tuple[object, int]:
        """A new group named ``name`` on Ray, and its attempt number."""
        if name not in self._unremoved:  # (a group Ray would not remove keeps its ports)
            self._ports.release(name)  # ports recorded for an earlier run's group of this name
        handle = self._backend.create_group(spec, name=name)
        attempt, self._next_attempt = self._next_attempt, self._next_attempt + 1
        return handle, attempt

    def _adopt(self, adopt: GroupCheckpoint, name: str) -> tuple[object, int]:
        """The earlier run's group ``adopt`` on Ray, and its attempt number."""
        try:
            found = self._backend.find_group(name, adopt.group_id)
        except BackendError:
            # It may stand still, untracked, with its GPUs, its name and a replica on its
            # recorded ports (held until then): the replica is placed again, so that group
            # goes as soon as Ray answers (`_remove_unremoved`).
            self._unremoved[name] = _Unfound(adopt.group_id)
            raise
        if found is None:
            self._ports.release(name)
            msg = f"placement group {name} of an earlier run is gone"
            raise BackendError(msg, operation="adopt placement group")
        self._next_attempt = max(self._next_attempt, adopt.attempt + 1)
        return found, adopt.attempt

    @admits(RemoveReplicaGroups)
    def remove_replica_groups(self, message: RemoveReplicaGroups) -> ReplicaGroupsRemoved:
        """Remove a deployment's groups, tracked or left over; see `RemoveReplicaGroups`."""
        prefix = group_prefix(message.deployment)
        indexes = message.replica_indexes
        names = (
            [n for n in self._groups if n.startswith(prefix)]
            if indexes is None
            else [group_name(message.deployment, i) for i in indexes]
        )
        self._remove_unremoved()
        stuck = [n for n in names if n in self._unremoved] if indexes is not None else []
        if stuck:  # failed groups of these replicas that Ray still will not remove
            msg = f"Ray would not remove the failed placement group {stuck[0]}"
            raise BackendError(msg, operation="remove placement group")
        # Ray first: should it fail, the groups stay tracked (their ports still claimed, their
        # futures unsettled), as they stay on the cluster, and the removal can be asked for again.
        removed = 0 if indexes is not None else self._backend.remove_groups_with_prefix(prefix)
        if indexes is None:  # Ray removed those too, and the earlier run's ones held ports
            self._unremoved = {n: h for n, h in self._unremoved.items() if not n.startswith(prefix)}
            names.extend(h for h in self._ports.holders() if h.startswith(prefix))
        for name in names:
            group = self._groups.get(name)
            if group is None:
                self._ports.release(name)
                continue
            if indexes is not None and group.state is not GroupState.FAILED:
                self._backend.remove_group(group.handle)
                removed += 1
            del self._groups[name]
            if group.timer is not None:
                group.timer.cancel()
            self._ports.release(name)
            self._forget(name)
            self._settle_all(
                group,
                PlacementCancelledError(group=name)
                if message.lost_node is None
                else NodeLostError(group=name, node_id=message.lost_node or None),
            )
        return ReplicaGroupsRemoved(deployment=message.deployment, removed=removed)

    def _remove_unremoved(self) -> None:
        """Try again to remove the failed groups Ray would not remove when they failed.

        Until Ray removes them, a group of the same name cannot be made, and their GPUs stay
        held on the cluster (the placement actor keeps them held on its ledger, told so by
        `ReplicaFailed.group_removed`, until a `RemoveReplicaGroups` of them succeeds).
        """
        for name, handle in list(self._unremoved.items()):
            try:
                if isinstance(handle, _Unfound):  # a group Ray could not be asked about
                    found = self._backend.find_group(name, handle.group_id)
                    if found is not None:
                        self._backend.remove_group(found)
                else:
                    self._backend.remove_group(handle)
            except BackendError:
                logger.warning("still could not remove failed placement group %s", name)
            else:
                del self._unremoved[name]
                if name not in self._groups or self._groups[name].state is GroupState.FAILED:
                    self._ports.release(name)  # the ports its bundles were told are free now

    def _hold_recorded_ports(self) -> None:
        """Hold each port an earlier run's groups were told, for its group, from the start.

        A restarted service adopts its groups one after another, and a group adopted first is
        probed as soon as it is ready: it must not be given a port recorded for a group adopted
        after it (whose replica may be about to listen on it again). A held port is kept when
        its group is adopted, and let go when it is not (gone, or placed anew) or is removed.
        """
        if self._checkpoints is None:
            return
        try:
            records = self._checkpoints.load(GROUP_KEYS)
        except PlacementError as exc:
            logger.warning("could not read the groups' records; their ports are not held: %s", exc)
            return
        for data in records.values():
            try:
                record = decode(data, GroupCheckpoint)
            except PlacementError:
                continue  # a damaged record: the service's start drops it
            name = group_name(record.deployment, record.replica_index)
            for endpoint in record.endpoints:
                if endpoint is not None:
                    self._ports.claim(endpoint.node_ip, endpoint.port, name)

    def get_replica_groups(self, message: GetReplicaGroups | None = None) -> ReplicaGroupsView:
        """Every tracked group and its state."""
        if message is not None:
            revalidated(message, GetReplicaGroups)
        return ReplicaGroupsView(
            groups=tuple(
                ReplicaGroupView(
                    group_name=name,
                    deployment=group.placement.deployment,
                    replica_index=group.placement.replica_index,
                    state=group.state,
                    nodes=tuple(a.node for a in group.assignments),
                )
                for name, group in sorted(self._groups.items())
            )
        )

    # -- events (told by backend callbacks and timers; must never raise) ---------------------

    def _pending(self, name: str, attempt: int, *states: GroupState) -> _Group | None:
        """The group an event is about, if it is still that attempt and in one of ``states``."""
        group = self._groups.get(name)
        if group is None or group.attempt != attempt or group.state not in states:
            return None
        return group

    @admits(PlacementGroupReady)
    def _on_ready(self, event: PlacementGroupReady) -> None:
        group = self._pending(event.group_name, event.attempt, GroupState.PENDING)
        if group is None:
            return
        group.state = GroupState.PROBING
        self._arm_timer(group)  # the probes get a deadline of their own
        for index in range(len(group.assignments)):
            if group.state is GroupState.FAILED:  # a bundle before this one failed the group
                return
            known = group.known[index]
            if known is not None and index in group.claimed:
                # An adopted group's recorded port: its replica may be listening on it already.
                self._resolve(group, index, known)
            else:
                self._probe(group, index)

    @admits(PlacementGroupFailed)
    def _on_failed(self, event: PlacementGroupFailed) -> None:
        group = self._pending(event.group_name, event.attempt, GroupState.PENDING)
        if group is not None:
            error = BackendError(
                f"placement group {group.name} failed: {event.error}",
                operation="wait for placement group",
            )
            error.__cause__ = event.error
            self._fail(group, error)

    @admits(PlacementGroupTimedOut)
    def _on_timed_out(self, event: PlacementGroupTimedOut) -> None:
        group = self._pending(
            event.group_name, event.attempt, GroupState.PENDING, GroupState.PROBING
        )
        if group is None or time.monotonic() < group.deadline_at:
            return  # gone, or an earlier deadline's event that fired as it was re-armed
        if group.state is GroupState.PROBING:
            error = BackendError(
                f"placement group {group.name} was ready, but its bundles' probes did not "
                f"finish within {group.timeout_s:g}s",
                operation="probe bundle",
            )
            self._fail(group, error)
            return
        try:
            state = self._backend.scheduling_state(group.handle)
        except BackendError:
            state = GroupStatus.UNKNOWN
        if state is GroupStatus.CREATED:
            # Ready, and its PlacementGroupReady is on the way or was lost: go on as if it had
            # come (the event, if it comes, then finds the group probing and is ignored).
            self._on_ready(PlacementGroupReady(group_name=group.name, attempt=group.attempt))
            return
        self._fail(
            group,
            PlacementGroupTimeoutError(
                group=group.name, timeout_s=group.timeout_s, scheduling_state=state
            ),
        )

    @admits(BundleProbed)
    def _on_probed(self, event: BundleProbed) -> None:
        group = self._pending(event.group_name, event.attempt, GroupState.PROBING)
        if group is None or not self._probed_bundle(group, event.bundle_index):
            return
        verdict = judge_probe(
            self._ports,
            event.node_ip,
            event.port,
            group.name,
            probes_made=group.probes.get(event.bundle_index, 0),
        )
        if verdict is ProbeVerdict.PROBE_AGAIN:
            self._probe(group, event.bundle_index)
            return
        if verdict is ProbeVerdict.GIVE_UP:
            self._fail(group, no_port_error(event.node_ip))
            return
        self._resolve(
            group,
            event.bundle_index,
            KnownEndpoint(node_ip=event.node_ip, port=event.port, gpu_ids=event.gpu_ids),
        )

    @admits(BundleProbeFailed)
    def _on_probe_failed(self, event: BundleProbeFailed) -> None:
        group = self._pending(event.group_name, event.attempt, GroupState.PROBING)
        if group is not None and self._probed_bundle(group, event.bundle_index):
            error = (
                event.error
                if isinstance(event.error, PlacementError)
                else BackendError(f"probe failed: {event.error}", operation="probe bundle")
            )
            self._fail(group, error)

    # -- helpers -----------------------------------------------------------------------------

    def _resolve(self, group: _Group, index: int, endpoint: KnownEndpoint) -> None:
        """Write bundle ``index``'s endpoint down, then settle its futures.

        Written first: whoever is told the port may start a replica on it at once, and a service
        that dies a moment later must give the same port again.
        """
        if group.state is GroupState.FAILED:  # its futures were failed already
            return
        group.known = (*group.known[:index], endpoint, *group.known[index + 1 :])
        if not self._record(group):
            # Nobody may be told a port that a restarted service would not give back: the
            # group fails as a failed probe does (nobody was told anything of it yet).
            group.known = (*group.known[:index], None, *group.known[index + 1 :])
            self._fail(
                group,
                BackendError(
                    f"could not write the endpoint of {group.name} down",
                    operation="write checkpoint",
                ),
            )
            return
        group.resolved.add(index)
        group.ips[index].set(endpoint.node_ip)
        group.ports[index].set(endpoint.port)
        group.gpu_ids[index].set(endpoint.gpu_ids)
        assignment = group.assignments[index]
        if group.notify is not None and endpoint.gpu_ids and endpoint.gpu_ids != assignment.gpus:
            tell_if_alive(
                group.notify,
                BundleGpusKnown(
                    deployment=group.placement.deployment,
                    replica_index=group.placement.replica_index,
                    attempt=group.attempt,
                    node=assignment.node,
                    gpu_ids=endpoint.gpu_ids,
                ),
            )
        if len(group.resolved) == len(group.assignments):
            group.state = GroupState.READY
            if group.timer is not None:
                group.timer.cancel()

    def _record(self, group: _Group) -> bool:
        """Write a group's known endpoints down; whether that worked (or nothing is written)."""
        if self._checkpoints is None:
            return True
        record = GroupCheckpoint(
            deployment=group.placement.deployment,
            replica_index=group.placement.replica_index,
            group_id=group.placement.group_id,
            attempt=group.attempt,
            assignments=group.assignments,
            endpoints=group.known,
        )
        try:
            self._checkpoints.save(group_key(group.name), encode(record))
        except PlacementError as exc:
            logger.warning("could not write the endpoints of %s down: %s", group.name, exc)
            return False
        return True

    def _forget(self, name: str) -> None:
        """Delete a group's record (a stale one is only forgotten at the next start)."""
        if self._checkpoints is None:
            return
        try:
            self._checkpoints.delete(group_key(name))
        except PlacementError as exc:
            logger.warning("could not delete the record of %s: %s", name, exc)

    @staticmethod
    def _probed_bundle(group: _Group, index: int) -> bool:
        """Whether a probe event names a bundle of ``group`` still waiting for its answer."""
        if not 0 <= index < len(group.ips) or index in group.resolved:
            logger.debug("ignored a probe event for bundle %d of %s", index, group.name)
            return False
        return True

    def _probe(self, group: _Group, index: int) -> None:
        group.probes[index] = group.probes.get(index, 0) + 1
        me, name, attempt = self.actor_ref, group.name, group.attempt

        def report(outcome: BundleProbe | BaseException) -> None:
            if isinstance(outcome, BundleProbe):
                tell_if_alive(
                    me,
                    BundleProbed(
                        group_name=name,
                        attempt=attempt,
                        bundle_index=index,
                        node_ip=outcome.node_ip,
                        port=outcome.port,
                        gpu_ids=outcome.gpu_ids,
                    ),
                )
            else:
                tell_if_alive(
                    me,
                    BundleProbeFailed(
                        group_name=name, attempt=attempt, bundle_index=index, error=outcome
                    ),
                )

        assignment = group.assignments[index]
        self._backend.probe_bundle(
            group.handle,
            index,
            exclude_ports=self._ports.given(),
            callback=report,
            # A bundle is probed only while no one has been told its endpoint (an adopted
            # group's told endpoints come back from their record, unprobed), so no replica
            # holds its GPUs yet.
            gpus=len(assignment.gpus) if self._learn_gpu_ids else 0,
            node=assignment.node,
        )

    def _arm_timer(self, group: _Group) -> None:
        if group.timer is not None:
            group.timer.cancel()
        event = PlacementGroupTimedOut(group_name=group.name, attempt=group.attempt)
        me = self.actor_ref
        group.deadline_at = time.monotonic() + group.timeout_s
        group.timer = self._deadlines.call_later(group.timeout_s, lambda: tell_if_alive(me, event))

    def _fail(self, group: _Group, error: PlacementError) -> None:
        """Remove the group, tell whoever asked to be told, then fail the futures.

        The notification goes first, so a caller that retries the moment its future fails finds
        the reservation already released.
        """
        group.state = GroupState.FAILED
        if group.timer is not None:
            group.timer.cancel()
        self._forget(group.name)
        removed = False
        try:
            self._backend.remove_group(group.handle)
            removed = True
            self._ports.release(group.name)
        except BackendError:
            # Tried again at the next command. Its ports stay held meanwhile: a bundle told its
            # port may have a replica listening on it, in a group that still stands.
            self._unremoved[group.name] = group.handle
            logger.warning("could not remove failed placement group %s", group.name, exc_info=True)
        finally:
            if group.notify is not None:
                tell_if_alive(
                    group.notify,
                    ReplicaFailed(
                        deployment=group.placement.deployment,
                        replica_index=group.placement.replica_index,
                        group_name=group.name,
                        attempt=group.attempt,
                        error=error,
                        group_removed=removed,
                    ),
                )
            self._settle_all(group, error)

    @staticmethod
    def _settle_all(group: _Group, error: PlacementError) -> None:
        """Fail every future of ``group`` that has not resolved yet."""
        for index in range(len(group.assignments)):
            if index not in group.resolved:
                group.resolved.add(index)
                _fail_future(group.ips[index], error)
                _fail_future(group.ports[index], error)
                _fail_future(group.gpu_ids[index], error)


class PlanningProxy(ActorMemberMixin, pykka.ActorProxy[PlanningActor]):
    """The static type of the PlanningActor's proxy; get one with `planning_proxy`."""

    plan_replica = proxy_method(PlanningActor.plan_replica)
    remove_replica_groups = proxy_method(PlanningActor.remove_replica_groups)
    get_replica_groups = proxy_method(PlanningActor.get_replica_groups)


def planning_proxy(ref: pykka.ActorRef[PlanningActor]) -> PlanningProxy:
    """The typed proxy of a running `PlanningActor`."""
    return cast("PlanningProxy", ref.proxy())
