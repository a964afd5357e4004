"""One wiring of the service on Ray: `start_on_ray`.

The service host, the command line, ``make run``, the README and the docs all start the actors
this way, so they are wired the same everywhere. Ray is imported only when it is called.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pykka

from placement_actors.actors.deployment_placement import DEFAULT_RETRY, DeploymentPlacementActor
from placement_actors.actors.mailbox import stop_first, tell_if_alive
from placement_actors.actors.messages import GpusInUse, GroupRescheduling, NodeJoined, NodeLost
from placement_actors.actors.planning import PlanningActor
from placement_actors.backends.protocol import CheckpointStore
from placement_actors.domain.checkpoints import (
    DEPLOYMENT_KEYS,
    GROUP_KEYS,
    DeploymentCheckpoint,
    GroupCheckpoint,
    decode,
    group_key,
)
from placement_actors.domain.deployments import GROUP_NAME_ROOT
from placement_actors.domain.errors import InvalidSpecError, PlacementError
from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.limits import DEFAULT_MAX_REMOTE_REPLICAS
from placement_actors.domain.results import NodeAssignment
from placement_actors.domain.topology import NodeTopology
from placement_actors.policies.recovery import RecoveryPlan, plan_recovery
from placement_actors.policies.retries import RetryBackoff
from placement_actors.settings import head_exclusion

if TYPE_CHECKING:
    from collections.abc import Mapping
    from collections.abc import Set as AbstractSet

    from placement_actors.backends.ray import ServiceLease
    from placement_actors.domain.checkpoints import LiveGroup

__all__ = ["start_on_ray"]

logger = logging.getLogger(__name__)


def start_on_ray(
    address: str | None = None,
    *,
    ready_timeout_s: float = 60.0,
    ignore_head_node: bool | None = None,
    max_remote_replicas: int = DEFAULT_MAX_REMOTE_REPLICAS,
    planner_timeout_s: float = 30.0,
    watch_s: float | None = 0.25,
    learn_gpu_ids: bool = False,
    retry: RetryBackoff | None = DEFAULT_RETRY,
) -> pykka.ActorRef[DeploymentPlacementActor]:
    """Start the placement service on Ray in this process; returns its front door.

    Connects to the cluster at ``address`` (``None``: the one this process is connected to, else
    ``RAY_ADDRESS``, else a new local one), reads its alive nodes, egress labels and the GPUs
    other Ray users hold (not offered while they hold them, shown as ``outside`` in
    `GetClusterView`), and starts a `PlanningActor` and the `DeploymentPlacementActor` wired to
    it, and a `ClusterWatcher` that tells it every node that joins or dies, every group Ray
    reschedules, and the GPUs in use once a change has settled (`NodeJoined`, `NodeLost`,
    `GroupRescheduling`, `GpusInUse`): GPUs other Ray users take or give back later are held or
    offered again within about a second. Stopping the returned actor stops the planner and the
    watcher too; the placement groups are detached and stay until released. The connection to
    Ray stays open (``ray.shutdown()`` or the `LocalCluster` context closes it).

    Every accepted `Place` is written to Ray's GCS key-value store (`GcsCheckpoints`, in the
    service's namespace) and deleted on `Release`. A service that starts where an earlier one
    ran takes its deployments back (`placement_actors.policies.recovery`): replicas whose groups
    live are kept, with the same ports; groups still pending are counted; missing replicas are
    placed again; groups with no record are removed.

    One service per Ray namespace: two at once would take each other's deployments. The service
    holds the namespace's lease (a named Ray actor) from before it reads anything until it
    stops; a second service is refused while the first holds it, whether the first runs in a
    driver or a service host. A driver's lease ends with its process too; a service host's
    outlives Ray's restarts of it (`placement_actors.backends.ray.lease`). Should someone end
    the lease from outside and another service take it before this one takes it back, the
    actor returned stops by itself (logged), and leaves its deployments to that service.

    Args:
        address: the Ray cluster's address.
        ready_timeout_s: how long Ray may take to make each placement group ready.
        ignore_head_node: keep local replicas off head nodes; ``None`` reads
            ``PLACEMENT_ACTORS_IGNORE_HEAD_NODE``.
        max_remote_replicas: the most replicas one remote deployment may ask for.
        planner_timeout_s: how long the placement actor waits for each of the planner's replies
            (the planner answers at once, each group's creation call to Ray aside).
        watch_s: seconds between two looks at the cluster; ``None`` to follow nothing (the
            service then knows only the nodes of its start).
        learn_gpu_ids: probe each bundle with a task that holds its GPUs, so that each
            replica's ``gpu_ids`` are the ids Ray gave it (see `PlanningActor`). Default: each
            GPU node's port agent (started here, and when a node joins) gives bundles their
            ports, without a task per bundle, and ``gpu_ids`` resolve to ``()``.
        retry: how long the service waits before it tries again a replica whose group failed
            or that found no room, and a removal Ray refused (`RetryBackoff`: 5 s, doubling
            to 300 s, per deployment); ``None``: they wait for a message.

    Raises:
        ServiceRunningError: another service runs in the namespace (nothing was read or changed).
        BackendError: Ray could not be reached or read.
        InvalidSpecError: a setting is out of range.
    """
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray loads only here

    on_ray.connect(address)
    on_ray.check_namespace()
    # Before anything is read: a second service in the namespace would take this one's deployments.
    lease = on_ray.take_service_lease()
    try:
        return _start(
            lease,
            ready_timeout_s=ready_timeout_s,
            ignore_head_node=ignore_head_node,
            max_remote_replicas=max_remote_replicas,
            planner_timeout_s=planner_timeout_s,
            watch_s=watch_s,
            learn_gpu_ids=learn_gpu_ids,
            retry=retry,
        )
    except BaseException:
        lease.release()  # once the service stopped, a second time does nothing
        raise


def _start(
    lease: ServiceLease,
    *,
    ready_timeout_s: float,
    ignore_head_node: bool | None,
    max_remote_replicas: int,
    planner_timeout_s: float,
    watch_s: float | None,
    learn_gpu_ids: bool,
    retry: RetryBackoff | None,
) -> pykka.ActorRef[DeploymentPlacementActor]:
    """`start_on_ray`, once the lease is held: stopping the service it returns ends the lease."""
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray loads only here

    known = on_ray.alive_nodes()
    store = on_ray.GcsCheckpoints()
    live = on_ray.live_groups()
    plan = _recovery(store, live, set(known))
    for name in plan.reap:  # exactly that group (a prefix would also match r10 for r1)
        orphan = on_ray.find_group(name, live[name].group_id)
        if orphan is not None:
            on_ray.remove_group(orphan)
    ours: dict[str, list[NodeAssignment]] = {}  # what our kept, created groups hold now
    for deployment in plan.deployments:
        for replica in deployment.adopted:
            group = live.get(f"{GROUP_NAME_ROOT}{deployment.name}:r{replica.replica_index}")
            if group is not None and group.status is GroupStatus.CREATED:
                ours.setdefault(deployment.name, []).extend(replica.assignments)
    outside = on_ray.gpus_held_outside(ours)
    topology = on_ray.get_cluster_topology(nodes=known.values())
    if not learn_gpu_ids:  # each GPU node's agent starts now, not with the first Place there
        on_ray.start_port_agents([n.node_id for n in topology if n.num_gpus])
    planner: pykka.ActorRef[Any] = PlanningActor.start(
        backend=on_ray.RayBackend(),
        ready_timeout_s=ready_timeout_s,
        checkpoints=store,
        learn_gpu_ids=learn_gpu_ids,
    )
    try:
        started = DeploymentPlacementActor.start(
            topology=topology,
            egress_nodes=[
                on_ray.node_topology(known[n]) for n in on_ray.get_egress_nodes(known.values())
            ],
            planner=planner,
            ignore_head_node=head_exclusion(ignore_head_node),
            planner_timeout_s=planner_timeout_s,
            outside=outside,
            max_remote_replicas=max_remote_replicas,
            stops_planner=True,
            checkpoints=store,
            recovered=plan.deployments,
            on_stopped=lease.release,
            retry=retry,
        )
    except BaseException:
        planner.stop()
        raise
    if watch_s is not None:
        try:
            on_ray.ClusterWatcher(
                known=known,
                on_joined=lambda node, egress, in_use: _joined(
                    started, node, egress=egress, in_use=in_use, agent=not learn_gpu_ids
                ),
                on_lost=lambda node_id: _lost(started, node_id),
                on_rescheduling=lambda name, group_id: tell_if_alive(
                    started, GroupRescheduling(group_name=name, group_id=group_id)
                ),
                on_gpu_use=lambda use, unsettled, read_at: tell_if_alive(
                    started, _gpus_in_use(*use, unsettled, read_at=read_at)
                ),
                alive=started.is_alive,
                interval_s=watch_s,
                lease=lease,
                on_lease_lost=lambda holder: _step_down(started, holder),
            ).start()
        except BaseException:
            started.stop()  # which ends the lease
            raise
    return started


def _recovery(
    store: CheckpointStore, live: dict[str, LiveGroup], alive: AbstractSet[str]
) -> RecoveryPlan:
    """Read an earlier run's records and reconcile them with the live groups.

    A damaged record (or one filed under another name) is logged and deleted: what it described
    cannot be taken back, and its groups are reaped as groups with no record.
    """
    deployments: dict[str, DeploymentCheckpoint] = {}
    for key, data in store.load(DEPLOYMENT_KEYS).items():
        try:
            record = decode(data, DeploymentCheckpoint)
            if key != f"{DEPLOYMENT_KEYS}{record.deployment.name}":
                msg = f"a record of {record.deployment.name} filed under {key}"
                raise InvalidSpecError(msg, field="checkpoint")
        except PlacementError as exc:
            logger.warning("dropped checkpoint %s: %s", key, exc)
            store.delete(key)
            continue
        deployments[record.deployment.name] = record
    groups: dict[str, GroupCheckpoint] = {}
    for key, data in store.load(GROUP_KEYS).items():
        try:
            group = decode(data, GroupCheckpoint)
        except PlacementError as exc:
            logger.warning("dropped checkpoint %s: %s", key, exc)
            store.delete(key)
            continue
        groups[key.removeprefix(GROUP_KEYS)] = group
    plan = plan_recovery(deployments, groups, live, alive)
    for name in plan.forget:
        store.delete(group_key(name))
    return plan


def _joined(
    service: pykka.ActorRef[Any], node: NodeTopology, *, egress: bool, in_use: int, agent: bool
) -> None:
    """A node joined: start its port agent (a GPU node's), then tell the service."""
    if agent and node.num_gpus:
        from placement_actors.backends import ray as on_ray  # noqa: PLC0415

        try:
            on_ray.start_port_agents([node.node_id])
        except PlacementError as exc:  # its first probe starts one, or fails as a probe does
            logger.warning("no port agent on node %s yet: %s", node.node_id, exc)
    tell_if_alive(service, NodeJoined(node=node, egress=egress, in_use=in_use))


def _step_down(service: pykka.ActorRef[Any], holder: str) -> None:
    """Another service took the namespace's lease: this one stops, and leaves Ray as it is.

    Its deployments' records and groups stay on Ray for the service that holds the lease now
    (it took them back as it started); this one serving on would hand out the same GPUs and
    ports twice, and its `Release` would remove groups the other has taken back. So it stops
    before any message waiting in its mailbox: the one it is handling ends, and the others are
    answered that it stepped down (`pykka.ActorDeadError`).
    """
    logger.error(
        "%s took this namespace's lease after it was ended from outside: this service stops, "
        "and leaves its deployments to it",
        holder,
    )
    stop_first(service, f"this service stepped down: {holder} holds the namespace's lease")


def _lost(service: pykka.ActorRef[Any], node_id: str) -> None:
    """A node died or left: forget its port agent (gone with it), then tell the service."""
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415

    on_ray.forget_port_agent(node_id)
    tell_if_alive(service, NodeLost(node_id=node_id))


def _gpus_in_use(
    in_use: Mapping[str, int],
    groups: Mapping[str, Mapping[str, int]],
    unsettled: AbstractSet[str],
    *,
    read_at: float,
) -> GpusInUse:
    """The watcher's reading of the GPUs in use, as the message the service takes."""
    return GpusInUse(
        in_use=tuple(sorted(in_use.items())),
        groups=tuple(
            (name, node, gpus) for name in sorted(groups) for node, gpus in groups[name].items()
        ),
        unsettled=tuple(sorted(unsettled)),
        read_at=read_at,
    )
