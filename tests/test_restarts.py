"""Restarts lose nothing: a service started again takes back what the earlier one placed.

On the real Ray test cluster: the service writes each accepted `Place` to Ray's GCS key-value
store; a new service (a new `start_on_ray`, or Ray restarting the host actor) rebuilds from those
records and the live placement groups. The measured times are printed (``pytest -s``) for
docs/reliability.md.
"""

import dataclasses
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from placement_actors import (
    ApiKey,
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    GetReplicaGroups,
    Place,
    PlacementConstraints,
    PlacementResult,
    Release,
    ReplicaGroupsView,
    start_on_ray,
)
from placement_actors.actors.messages import GetPlacement, Placement
from placement_actors.domain.checkpoints import (
    DeploymentCheckpoint,
    decode,
    deployment_key,
    encode,
    group_key,
)
from placement_actors.domain.deployments import group_name
from placement_actors.service import PlacementClient, _unwrap

TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("ray_nodes")


def on_ray() -> Any:
    from placement_actors.backends import ray as backend  # noqa: PLC0415 - Ray tests only

    return backend


@pytest.fixture
def restartable(ray_cluster: Any) -> Iterator[list[pykka.ActorRef[DeploymentPlacementActor]]]:
    """Services a test starts (in turn); the last one releases what is left."""
    del ray_cluster
    started: list[pykka.ActorRef[DeploymentPlacementActor]] = []
    yield started
    last = start_on_ray(ready_timeout_s=30) if not started or not started[-1].is_alive() else None
    ref = last or started[-1]
    view = ref.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    for name in view.deployments:
        ref.ask(Release(name), timeout=TIMEOUT)
    ref.stop(timeout=TIMEOUT)


def placement(ref: pykka.ActorRef[Any], name: str) -> PlacementResult:
    found = ref.ask(GetPlacement(name), timeout=TIMEOUT)
    assert isinstance(found, Placement)
    assert found.result is not None, f"{name} is not placed"
    return found.result


def endpoints(result: PlacementResult) -> dict[int, tuple[str, int, tuple[int, ...]]]:
    return {
        r.replica_index: (
            r.master.node_ip.get(timeout=TIMEOUT),
            r.master.port.get(timeout=TIMEOUT),
            r.master.gpu_ids.get(timeout=TIMEOUT),
        )
        for r in result.replicas
    }


def no_gpu_held_twice(view: ClusterView) -> Counter[str]:
    """Per deployment, the GPUs the view shows it holding; fails if any ordinal is held twice."""
    held: Counter[str] = Counter()
    for node in view.nodes:
        ordinals = [h.ordinal for h in node.held]
        assert len(ordinals) == len(set(ordinals)), f"a GPU of {node.node_id} is held twice"
        assert len(ordinals) + node.outside + len(node.free_gpus) == node.capacity
        held.update(h.deployment for h in node.held)
    return held


def live_groups() -> set[str]:
    return set(on_ray().live_groups())


def test_a_service_started_again_takes_back_every_deployment_with_the_same_endpoints(
    restartable: list[pykka.ActorRef[DeploymentPlacementActor]], ray_nodes: dict[str, str]
) -> None:
    first = start_on_ray(ready_timeout_s=30)
    restartable.append(first)
    llama = Place(
        Deployment(name="kept", model="m", gpus=2, replicas=2),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-a"], ray_nodes["gpu-b"])),
    )
    api = Place(Deployment(name="kept-api", model="gpt-4o", api_key=ApiKey("sk-kept")))
    before = first.ask(llama, timeout=TIMEOUT)
    assert isinstance(before, PlacementResult)
    api_before = first.ask(api, timeout=TIMEOUT)
    assert isinstance(api_before, PlacementResult)
    known = endpoints(before)
    first.stop(timeout=TIMEOUT)  # no Release: the groups and the records stay

    started = time.monotonic()
    second = start_on_ray(ready_timeout_s=30)
    restartable.append(second)
    after = placement(second, "kept")
    recovered = endpoints(after)
    took = time.monotonic() - started
    assert recovered == known  # the same nodes, ports and GPUs: a replica may be listening
    assert [(r.group_id, r.attempt) for r in after.replicas] == [
        (r.group_id, r.attempt) for r in before.replicas
    ]
    assert placement(second, "kept-api").assignments == api_before.assignments
    again = second.ask(llama, timeout=TIMEOUT)  # no Release needed: the same result
    assert isinstance(again, PlacementResult)
    assert [r.group_id for r in again.replicas] == [r.group_id for r in before.replicas]
    view = second.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    assert set(view.deployments) == {"kept", "kept-api"}
    assert no_gpu_held_twice(view)["kept"] == 4
    assert live_groups() == {group_name("kept", 0), group_name("kept", 1)}
    print(f"\nrestarted service had every endpoint back {took:.2f}s after it started")  # noqa: T201


def test_groups_with_no_record_are_reaped_and_records_with_no_group_placed_again(
    restartable: list[pykka.ActorRef[DeploymentPlacementActor]], ray_nodes: dict[str, str]
) -> None:
    from placement_actors.policies.bundle_shapes import NODE_ID_LABEL  # noqa: PLC0415

    orphan = group_name("orphan", 0)  # a run that stopped before writing its Place down
    on_ray().build_pg(
        [{"GPU": 1}],
        "STRICT_PACK",
        name=orphan,
        bundle_label_selector=[{NODE_ID_LABEL: ray_nodes["gpu-c"]}],
        ready_timeout_s=30,
    )
    store = on_ray().GcsCheckpoints()
    ghost = Deployment(name="ghost", model="m", gpus=1)  # written down; its group is gone
    store.save(
        deployment_key("ghost"),
        encode(
            DeploymentCheckpoint(
                deployment=ghost, constraints=PlacementConstraints(), assignments=()
            )
        ),
    )
    store.save(group_key(group_name("stale", 0)), b"damaged")
    service = start_on_ray(ready_timeout_s=30)
    restartable.append(service)
    assert orphan not in live_groups()
    result = placement(service, "ghost")
    assert endpoints(result)[0][1] > 0
    assert live_groups() == {group_name("ghost", 0)}
    assert sorted(store.load("")) == [deployment_key("ghost"), group_key(group_name("ghost", 0))]


def test_a_group_still_pending_at_the_restart_is_counted_and_resolves_later(
    restartable: list[pykka.ActorRef[DeploymentPlacementActor]], ray_nodes: dict[str, str]
) -> None:
    from placement_actors.policies.bundle_shapes import NODE_ID_LABEL  # noqa: PLC0415

    gpu_a = ray_nodes["gpu-a"]
    first = start_on_ray(ready_timeout_s=60)
    restartable.append(first)
    # Another Ray user takes 3 of gpu-a's 4 GPUs after the service read the cluster: the
    # service's 2-GPU group there waits (NO_RESOURCES) when the service stops.
    other = on_ray().build_pg(
        [{"GPU": 3}],
        "STRICT_PACK",
        name="someone-else",
        bundle_label_selector=[{NODE_ID_LABEL: gpu_a}],
        ready_timeout_s=30,
    )
    try:
        first.ask(
            Place(
                Deployment(name="waiting", model="m", gpus=2),
                PlacementConstraints(gpu_nodes=(gpu_a,)),
            ),
            timeout=TIMEOUT,
        )
        first.stop(timeout=TIMEOUT)
        assert on_ray().live_groups()[group_name("waiting", 0)].status.is_waiting
        second = start_on_ray(ready_timeout_s=60)
        restartable.append(second)
        groups = second.ask(GetReplicaGroups(), timeout=TIMEOUT)
        assert isinstance(groups, ReplicaGroupsView)
        assert [g.group_name for g in groups.groups] == [group_name("waiting", 0)]
        view = second.ask(GetClusterView(), timeout=TIMEOUT)
        assert isinstance(view, ClusterView)
        assert no_gpu_held_twice(view)["waiting"] == 2  # counted while it waits
    finally:
        on_ray().remove_group(other)
    assert endpoints(placement(second, "waiting"))[0][1] > 0  # ready once the GPUs are free


def test_a_killed_host_comes_back_with_every_deployment_and_clients_carry_on(
    ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    client = PlacementClient.serve(ray_cluster.address, name="restarted-service")
    # on the head node, so that no worker node that leaves takes the service with it
    assert on_ray().find_host("restarted-service").node_id() == ray_nodes["head"]
    try:
        place = Place(
            Deployment(name="survivor", model="m", gpus=1, replicas=2),
            PlacementConstraints(gpu_nodes=(ray_nodes["gpu-c"],)),
        )
        before = client.ask(place)
        known = endpoints(before)
        killed = time.monotonic()
        client.restart_service()
        back = time.monotonic()
        again = client.ask(place)  # the same client, no reconnecting, no Release
        assert endpoints(again) == known
        found = client.ask(GetPlacement("survivor"))
        assert endpoints(found.result) == known
        recovered = time.monotonic()
        view = client.ask(GetClusterView())
        assert no_gpu_held_twice(view)["survivor"] == 2
        assert live_groups() == {group_name("survivor", 0), group_name("survivor", 1)}
        print(  # noqa: T201
            f"\nhost killed: back {back - killed:.2f}s later, every endpoint recovered "
            f"{recovered - killed:.2f}s after the kill"
        )
    finally:
        client.ask(Release("survivor"))
        client.stop_service()


def test_a_client_finds_a_service_that_was_stopped_and_served_again(ray_cluster: Any) -> None:
    client = PlacementClient.serve(ray_cluster.address, name="served-twice")
    client.stop_service()
    PlacementClient.serve(ray_cluster.address, name="served-twice")
    try:
        assert isinstance(client.ask(GetClusterView()), ClusterView)  # the old client, unchanged
    finally:
        client.stop_service()


def test_every_call_on_its_way_when_the_service_was_served_again_goes_to_the_new_one(
    ray_cluster: Any,
) -> None:
    client = PlacementClient.serve(ray_cluster.address, name="served-thrice")
    host = client._host
    # Two long polls on their way to the first service (each waits 5 s for an event).
    polls = [host.later("events", 0, 5.0, 10, transform=_unwrap) for _ in range(2)]
    time.sleep(0.5)
    client.stop_service()
    PlacementClient.serve(ray_cluster.address, name="served-thrice")
    try:
        for poll in polls:  # each is sent again to the new service, which has no events yet
            found, position, _ = poll.get(timeout=60)
            assert (found, position) == ((), 0)
    finally:
        client.stop_service()


EXITING_DRIVER = """
import os
import sys

from placement_actors import Deployment, Place, PlacementConstraints, start_on_ray

address, node = sys.argv[1:3]
service = start_on_ray(address, ready_timeout_s=60)
result = service.ask(
    Place(Deployment(name="outlives-its-driver", model="m", gpus=2),
          PlacementConstraints(gpu_nodes=(node,))),
    timeout=60,
)
master = result.replicas[0].master
print(master.node_ip.get(timeout=60), master.port.get(timeout=60), flush=True)
os._exit(0)  # dies at once: no Release, no stopping the actors, no goodbye to Ray
"""
"""A driver that runs the service itself, places one deployment and dies without a Release."""


def test_a_driver_that_exits_leaves_a_deployment_the_next_driver_takes_back(
    restartable: list[pykka.ActorRef[DeploymentPlacementActor]],
    ray_cluster: Any,
    ray_nodes: dict[str, str],
) -> None:
    done = subprocess.run(  # noqa: S603 - this interpreter running the script above
        [sys.executable, "-c", EXITING_DRIVER, ray_cluster.address, ray_nodes["gpu-b"]],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ip, port = done.stdout.split()[-2:]
    service = start_on_ray(ready_timeout_s=30)
    restartable.append(service)
    result = placement(service, "outlives-its-driver")
    assert endpoints(result)[0][:2] == (ip, int(port))
    assert [a.node for a in result.assignments] == [ray_nodes["gpu-b"]]
    assert live_groups() == {group_name("outlives-its-driver", 0)}


def test_reaping_one_replicas_group_leaves_the_groups_of_replicas_whose_names_extend_it(
    restartable: list[pykka.ActorRef[DeploymentPlacementActor]], ray_nodes: dict[str, str]
) -> None:
    first = start_on_ray(ready_timeout_s=30)
    restartable.append(first)
    many = Place(
        Deployment(name="many", model="m", gpus=1, replicas=11),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-bulk"],)),
    )
    before = first.ask(many, timeout=TIMEOUT)
    assert isinstance(before, PlacementResult)
    known = endpoints(before)
    first.stop(timeout=TIMEOUT)
    # r1's record names another group: r1 is not taken back, its group is reaped. r10's name
    # starts with r1's; it must be kept, with its port.
    store = on_ray().GcsCheckpoints()
    record = decode(
        store.load(deployment_key("many"))[deployment_key("many")], DeploymentCheckpoint
    )
    groups = tuple(
        dataclasses.replace(g, group_id="0" * 36) if g.replica_index == 1 else g
        for g in record.groups
    )
    store.save(deployment_key("many"), encode(dataclasses.replace(record, groups=groups)))
    second = start_on_ray(ready_timeout_s=30)
    restartable.append(second)
    after = placement(second, "many")
    again = endpoints(after)
    ids = {r.replica_index: r.group_id for r in after.replicas}
    was = {r.replica_index: r.group_id for r in before.replicas}
    assert ids[1] != was[1]  # reaped and placed again
    assert {i: ids[i] for i in ids if i != 1} == {i: was[i] for i in was if i != 1}
    assert {i: again[i] for i in again if i != 1} == {i: known[i] for i in known if i != 1}


def stand_in_replica(seconds: float) -> None:
    """What an engine does with its bundle's GPUs, for this test: holds them."""
    time.sleep(seconds)


def test_an_adopted_bundle_whose_replica_holds_its_gpus_gets_its_recorded_endpoint_back(
    restartable: list[pykka.ActorRef[DeploymentPlacementActor]], ray_nodes: dict[str, str]
) -> None:
    """No probe (which would ask for the GPUs the running replica holds, and wait for ever)."""
    import ray  # noqa: PLC0415 - a stand-in replica, as a Ray task in the bundle
    from ray.util import get_placement_group  # noqa: PLC0415

    first = start_on_ray(ready_timeout_s=30)
    restartable.append(first)
    place = Place(
        Deployment(name="busy", model="m", gpus=2),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-c"],)),
    )
    result = first.ask(place, timeout=TIMEOUT)
    assert isinstance(result, PlacementResult)
    known = endpoints(result)
    first.stop(timeout=TIMEOUT)
    pg = get_placement_group(group_name("busy", 0))
    replica = on_ray().submit_in_bundle(pg, 0, stand_in_replica, 120, gpus=2)  # holds both GPUs
    try:
        second = start_on_ray(ready_timeout_s=30)
        restartable.append(second)
        assert endpoints(placement(second, "busy")) == known  # IP, port and GPU ids
    finally:
        ray.cancel(replica, force=True)
