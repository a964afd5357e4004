"""`start_on_ray`: both actors wired together on the real Ray test cluster."""

import subprocess
import sys
import time
from typing import Any

import pykka
import pytest

from placement_actors import (
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    GetReplicaGroups,
    InvalidSpecError,
    NodeTopology,
    NotEnoughGpusError,
    Place,
    PlacementConstraints,
    PlacementResult,
    PlanningActor,
    Release,
    ReplicaGroupsView,
    start_on_ray,
)

TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("ray_nodes")


def test_start_on_ray_wires_both_actors_and_stopping_it_stops_the_planner(
    ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    service = start_on_ray(ray_cluster.address, ready_timeout_s=30)
    place = Place(
        Deployment(name="wired", model="m", gpus=2),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-b"],)),
    )
    result = service.ask(place, timeout=TIMEOUT)
    assert isinstance(result, PlacementResult)
    assert result.replicas[0].master.port.get(timeout=TIMEOUT) > 0
    groups = service.ask(GetReplicaGroups(), timeout=TIMEOUT)  # passed on to the planner
    assert isinstance(groups, ReplicaGroupsView)
    assert [g.deployment for g in groups.groups] == ["wired"]
    assert len(pykka.ActorRegistry.get_by_class(PlanningActor)) == 1
    service.ask(Release("wired"), timeout=TIMEOUT)
    service.stop(timeout=TIMEOUT)
    assert pykka.ActorRegistry.get_by_class(PlanningActor) == []


def test_the_planners_messages_need_a_planner() -> None:
    ref = DeploymentPlacementActor.start(topology=[NodeTopology(node_id="n", num_gpus=1)])
    with pytest.raises(InvalidSpecError, match="needs a planner"):
        ref.ask(GetReplicaGroups(), timeout=TIMEOUT)


def test_gpus_another_ray_user_holds_at_the_start_are_not_offered(
    ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray tests only
    from placement_actors.policies.bundle_shapes import NODE_ID_LABEL  # noqa: PLC0415

    other = on_ray.build_pg(
        [{"GPU": 3}],
        "STRICT_PACK",
        name="someone-elses",
        bundle_label_selector=[{NODE_ID_LABEL: ray_nodes["gpu-a"]}],
        ready_timeout_s=30,
    )
    try:
        service = start_on_ray(ray_cluster.address)
        view = service.ask(GetClusterView(), timeout=TIMEOUT)
        assert isinstance(view, ClusterView)
        gpu_a = view.node(ray_nodes["gpu-a"])
        assert (gpu_a.outside, len(gpu_a.free_gpus)) == (3, 1)
        with pytest.raises(NotEnoughGpusError):
            service.ask(
                Place(
                    Deployment(name="crowded", model="m", gpus=2),
                    PlacementConstraints(gpu_nodes=(ray_nodes["gpu-a"],)),
                ),
                timeout=TIMEOUT,
            )
        service.stop(timeout=TIMEOUT)
    finally:
        on_ray.remove_group(other)


def _outside_until(
    service: pykka.ActorRef[Any], node: str, wanted: int, timeout_s: float = 20.0
) -> int:
    """The node's GPUs held outside the service, read until ``wanted`` (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = service.ask(GetClusterView(), timeout=TIMEOUT)
        assert isinstance(view, ClusterView)
        outside = view.node(node).outside
        if outside == wanted or time.monotonic() > deadline:
            return outside
        time.sleep(0.1)


def test_gpus_another_ray_user_takes_and_gives_back_after_the_start_are_followed(
    ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray tests only
    from placement_actors.policies.bundle_shapes import NODE_ID_LABEL  # noqa: PLC0415

    node = ray_nodes["gpu-a"]
    service = start_on_ray(ray_cluster.address)
    mine = Place(
        Deployment(name="mine-beside", model="m", gpus=1),
        PlacementConstraints(gpu_nodes=(node,)),
    )
    result = service.ask(mine, timeout=TIMEOUT)
    assert isinstance(result, PlacementResult)
    assert result.replicas[0].master.port.get(timeout=TIMEOUT) > 0
    other = on_ray.build_pg(
        [{"GPU": 2}],
        "STRICT_PACK",
        name="someone-elses-later",
        bundle_label_selector=[{NODE_ID_LABEL: node}],
        ready_timeout_s=30,
    )
    try:
        assert _outside_until(service, node, 2) == 2  # its own group is not counted
        with pytest.raises(NotEnoughGpusError):
            service.ask(
                Place(
                    Deployment(name="crowded-later", model="m", gpus=2),
                    PlacementConstraints(gpu_nodes=(node,)),
                ),
                timeout=TIMEOUT,
            )
    finally:
        on_ray.remove_group(other)
    assert _outside_until(service, node, 0) == 0
    service.ask(Release("mine-beside"), timeout=TIMEOUT)
    # Its group going away is not taken for someone else's GPUs coming back.
    time.sleep(1.5)
    assert _outside_until(service, node, 0, timeout_s=0) == 0
    service.stop(timeout=TIMEOUT)


OTHER_NAMESPACE = """
import sys

import ray

from placement_actors import BackendError, start_on_ray
from placement_actors.service import PlacementClient

ray.init(address=sys.argv[1], namespace="an-app-of-its-own", log_to_driver=False)
for start in (start_on_ray, lambda: PlacementClient.serve(name="never-served")):
    try:
        start()
    except BackendError as exc:
        print("refused:", exc)
"""


def test_a_service_is_not_started_from_another_namespace_where_its_groups_would_be_lost(
    ray_cluster: Any,
) -> None:
    done = subprocess.run(  # noqa: S603 - this interpreter running the script above
        [sys.executable, "-c", OTHER_NAMESPACE, ray_cluster.address],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    refusals = done.stdout.splitlines()
    assert len(refusals) == 2
    for line in refusals:
        assert line.startswith(
            "refused: this process is connected to Ray in namespace 'an-app-of-its-own'"
        )
        assert "namespace='placement-actors'" in line
