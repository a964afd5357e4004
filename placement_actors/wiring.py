"""One wiring of the service on Ray: `start_on_ray`.

The service host, the command line, ``make run``, the README and the docs all start the actors
this way, so they are wired the same everywhere. Ray is imported only when it is called.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pykka

from placement_actors.actors.deployment_placement import DeploymentPlacementActor
from placement_actors.actors.messages import GroupRescheduling, NodeJoined, NodeLost
from placement_actors.actors.planning import PlanningActor
from placement_actors.domain.limits import DEFAULT_MAX_REMOTE_REPLICAS
from placement_actors.settings import head_exclusion

__all__ = ["start_on_ray"]


def start_on_ray(
    address: str | None = None,
    *,
    ready_timeout_s: float = 60.0,
    ignore_head_node: bool | None = None,
    max_remote_replicas: int = DEFAULT_MAX_REMOTE_REPLICAS,
    planner_timeout_s: float = 30.0,
    watch_s: float | None = 0.25,
) -> pykka.ActorRef[DeploymentPlacementActor]:
    """Start the placement service on Ray in this process; returns its front door.

    Connects to the cluster at ``address`` (``None``: the one this process is connected to, else
    ``RAY_ADDRESS``, else a new local one), reads its alive nodes, egress labels, the GPUs that
    groups of an earlier run still hold and the GPUs other Ray users hold (never offered, shown
    as ``outside`` in `GetClusterView`), and starts a `PlanningActor` and the
    `DeploymentPlacementActor` wired to it, and a `ClusterWatcher` that tells it every node that
    joins or dies and every group Ray reschedules (`NodeJoined`, `NodeLost`,
    `GroupRescheduling`). Stopping the returned actor stops the planner and the watcher too;
    the placement groups are detached and stay until released. The connection to Ray stays
    open (``ray.shutdown()`` or the `LocalCluster` context closes it).

    Args:
        address: the Ray cluster's address.
        ready_timeout_s: how long Ray may take to make each placement group ready.
        ignore_head_node: keep local replicas off head nodes; ``None`` reads
            ``PLACEMENT_ACTORS_IGNORE_HEAD_NODE``.
        max_remote_replicas: the most replicas one remote deployment may ask for.
        planner_timeout_s: how long the placement actor waits for the planner's immediate reply.
        watch_s: seconds between two looks at the cluster; ``None`` to follow nothing (the
            service then knows only the nodes of its start).

    Raises:
        BackendError: Ray could not be reached or read.
        InvalidSpecError: a setting is out of range.
    """
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray loads only here

    on_ray.connect(address)
    known = on_ray.alive_nodes()
    planner: pykka.ActorRef[Any] = PlanningActor.start(
        backend=on_ray.RayBackend(), ready_timeout_s=ready_timeout_s
    )
    held = on_ray.get_held_groups()
    outside = on_ray.gpus_held_outside(held)
    try:
        service = DeploymentPlacementActor.start(
            topology=on_ray.get_cluster_topology(nodes=known.values()),
            egress_nodes=on_ray.get_egress_nodes(nodes=known.values()),
            planner=planner,
            ignore_head_node=head_exclusion(ignore_head_node),
            planner_timeout_s=planner_timeout_s,
            held=held,
            outside=outside,
            max_remote_replicas=max_remote_replicas,
            stops_planner=True,
        )
    except BaseException:
        planner.stop()
        raise
    if watch_s is not None:
        on_ray.ClusterWatcher(
            known=known,
            on_joined=lambda node, egress: _tell(service, NodeJoined(node=node, egress=egress)),
            on_lost=lambda node_id: _tell(service, NodeLost(node_id=node_id)),
            on_rescheduling=lambda name, group_id: _tell(
                service, GroupRescheduling(group_name=name, group_id=group_id)
            ),
            alive=service.is_alive,
            interval_s=watch_s,
        ).start()
    return service


def _tell(ref: pykka.ActorRef[Any], event: object) -> None:
    with contextlib.suppress(pykka.ActorDeadError):  # stopped: the watcher stops next round
        ref.tell(event)
