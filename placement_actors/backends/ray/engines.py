"""Running a replica's engine inside the placement group the service reserved for it.

The service reserves; the controller runs the engine. A `ReplicaPlacement` has one bundle per
node the replica spans: `bundle_options` gives the options of a Ray actor (or task) that runs in
one bundle and holds all of it, so its GPUs are the bundle's (what ``ray.get_gpu_ids()`` and
``CUDA_VISIBLE_DEVICES`` show there) and its node is the node the service chose. The engine in
bundle ``i`` is node rank ``i`` of ``spec.nnodes``; bundle 0's IP and port are the master address
(vLLM's ``--master-addr``/``--master-port``, SGLang's ``--dist-init-addr``).

A group is found by its Ray id, which works from a driver in any Ray namespace (a lookup by name
sees only the driver's own namespace), and is checked to be the replica's group and alive: a
replica that was released, moved or placed again since has a new group, or none.
"""

from __future__ import annotations

from typing import Any

import pykka
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from placement_actors.backends.ray.groups import find_group_by_id
from placement_actors.domain.errors import BackendError, InvalidSpecError, StalePlacementError
from placement_actors.domain.results import ReplicaPlacement
from placement_actors.domain.validation import check_count, check_timeout

__all__ = ["bundle_options", "replica_group"]


def replica_group(replica: ReplicaPlacement) -> PlacementGroup:
    """The Ray handle of ``replica``'s placement group, from any driver of the cluster.

    Raises:
        InvalidSpecError: the replica carries no group id (it was decided without a planner).
        StalePlacementError: its group is gone: the replica was released, moved or placed
            again since (ask for the deployment's placement again).
        BackendError: Ray could not be asked.
    """
    if not replica.group_id:
        msg = (
            f"replica {replica.replica_index} of {replica.deployment} carries no Ray group id: "
            "it was decided without a planner"
        )
        raise InvalidSpecError(msg, field="group_id")
    pg = find_group_by_id(group_id=replica.group_id, name=replica.group_name)
    if pg is None:
        msg = (
            f"placement group {replica.group_name} (id {replica.group_id}) is gone: the replica "
            "was released, moved or placed again since; ask for the deployment's placement again"
        )
        raise StalePlacementError(msg, field="group_id")
    return pg


def bundle_options(
    replica: ReplicaPlacement,
    bundle_index: int = 0,
    *,
    capture_child_tasks: bool = False,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Options for ``.options(**...)`` of a Ray actor or task that runs in one bundle, holding it.

    First waits, up to ``timeout_s``, until the service is done with the bundle: its IP and port
    are known (the port probe ran; with ``learn_gpu_ids`` that probe holds the bundle's GPUs
    for a moment, so an engine started earlier could keep it from running). Then the actor gets
    the bundle's GPUs and CPUs (``num_gpus``, ``num_cpus``) and a
    ``PlacementGroupSchedulingStrategy`` for that bundle: Ray starts it on the bundle's node.
    With ``capture_child_tasks``, the tasks and actors it starts go into the group too; they
    then need room there, and the engine holds the whole bundle, so only those that ask for no
    resources (``num_cpus=0``) can start.

    Raises:
        InvalidSpecError: no such bundle, or the replica carries no group id.
        StalePlacementError: the replica's group is gone (`replica_group`).
        PlacementError: the bundle never became ready (its futures' error, for example a
            `PlacementGroupTimeoutError` or a `NodeLostError`).
        BackendError: the bundle was not ready within ``timeout_s``, or Ray could not be asked.
    """
    check_count(bundle_index, "bundle_index")
    check_timeout(timeout_s, "timeout_s")
    bundles = replica.spec.bundles
    if bundle_index >= len(bundles) or bundle_index >= len(replica.bundles):
        msg = f"bundle {bundle_index} does not exist: the replica's group has {len(bundles)}"
        raise InvalidSpecError(msg, field="bundle_index")
    try:
        replica.bundles[bundle_index].port.get(timeout=timeout_s)
    except pykka.Timeout as exc:
        msg = f"bundle {bundle_index} of {replica.group_name} was not ready within {timeout_s:g}s"
        raise BackendError(msg, operation="wait for bundle") from exc
    resources = bundles[bundle_index]
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=replica_group(replica),
            placement_group_bundle_index=bundle_index,
            placement_group_capture_child_tasks=capture_child_tasks,
        ),
        "num_gpus": resources.get("GPU", 0),
        "num_cpus": resources.get("CPU", 0),
    }
