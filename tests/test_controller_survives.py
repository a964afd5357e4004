"""A controller that only sends `Place` at the start keeps every deployment placed.

On the real Ray test cluster, with the service hosted in its Ray actor: a node dies under a
replica, a node joins, and the host is killed. After all of it, every deployment is placed,
every replica's endpoints resolve, no placement group is leaked and no GPU is held twice. The
test itself only queries after its first `Place` messages.
"""

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from placement_actors import (
    ApiKey,
    ClusterView,
    Deployment,
    GetClusterView,
    Place,
    PlacementConstraints,
    Release,
)
from placement_actors.actors.messages import (
    GetPlacement,
    GetPlacementFailure,
    GetReplicaGroups,
    NodeState,
    Placement,
)
from placement_actors.domain.deployments import group_name
from placement_actors.service import PlacementClient

TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("ray_nodes")


def lost(view: ClusterView) -> set[str]:
    return {n.node_id for n in view.nodes if n.state is NodeState.LOST}


def eventually(check: Callable[[], bool], what: str, state: Callable[[], object]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"never: {what}; at the end: {state()}"
        time.sleep(0.1)


def test_a_controller_that_only_places_ends_with_everything_placed_and_nothing_leaked(
    ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray tests only

    doomed = ray_cluster.add_worker(gpus=64, name="gpu-doomed")
    client = PlacementClient.serve(
        ray_cluster.address, name="survives-everything", learn_gpu_ids=True
    )
    joined: str | None = None
    places = {
        # two replicas of 64 GPUs: one on gpu-bulk, one on gpu-doomed (nothing else holds 64)
        "wide": Place(Deployment(name="wide", model="m", gpus=64, replicas=2)),
        "small": Place(
            Deployment(name="small", model="m", gpus=1, replicas=2),
            PlacementConstraints(gpu_nodes=(ray_nodes["gpu-a"], ray_nodes["gpu-b"])),
        ),
        "api": Place(Deployment(name="api", model="gpt-4o", api_key=ApiKey("sk-survives"))),
    }
    try:
        for place in places.values():  # the only commands the controller sends
            client.ask(place)

        def view() -> ClusterView:
            found = client.ask(GetClusterView())
            assert isinstance(found, ClusterView)
            return found

        ray_cluster.remove_worker(doomed)  # a node dies under one replica of "wide"
        # Ray may show the group rescheduling a moment before it shows the node dead
        eventually(
            lambda: view().degraded == ("wide",) and doomed in lost(view()),
            "wide shows as degraded and the node as lost",
            lambda: (view().degraded, lost(view()), doomed, client.ask(GetPlacement("wide"))),
        )

        joined = ray_cluster.add_worker(gpus=64, name="gpu-joined")  # a node joins
        eventually(
            lambda: view().degraded == (),
            "wide is placed again on the new node",
            lambda: (
                view().degraded,
                [
                    (n.node_id[:8], n.state.value, n.capacity, len(n.free_gpus))
                    for n in view().nodes
                ],
                joined,
                client.ask(GetPlacementFailure("wide")),
                client.ask(GetReplicaGroups()),
            ),
        )

        client.restart_service()  # the host is killed; Ray starts it again

        results = {}
        for name in places:
            found = client.ask(GetPlacement(name))
            assert isinstance(found, Placement)
            assert found.result is not None, f"{name} is not placed"
            assert found.missing == ()
            results[name] = found.result
        assert {a.node for a in results["wide"].assignments} == {
            ray_nodes["gpu-bulk"],
            joined,
        }
        for result in results.values():
            for replica in result.replicas:
                for bundle in replica.bundles:  # every endpoint resolves
                    assert bundle.node_ip.get(timeout=TIMEOUT)
                    assert bundle.port.get(timeout=TIMEOUT) > 0
                    share = (result.deployment.gpus or 0) // len(replica.bundles)
                    assert len(bundle.gpu_ids.get(timeout=TIMEOUT)) == share
        expected_groups = {
            group_name(name, r.replica_index)
            for name, result in results.items()
            for r in result.replicas
        }
        assert set(on_ray.live_groups()) == expected_groups  # no group leaked
        assert len(expected_groups) == 4  # wide x 2, small x 2 (api is remote)
        held: Counter[str] = Counter()
        for node in view().nodes:
            ordinals = [h.ordinal for h in node.held]
            assert len(ordinals) == len(set(ordinals)), f"a GPU of {node.node_id} held twice"
            held.update(h.deployment for h in node.held)
        assert held == Counter({"wide": 128, "small": 2})
    finally:
        for name in places:
            client.ask(Release(name))
        client.stop_service()
        if joined is not None:
            ray_cluster.remove_worker(joined)
