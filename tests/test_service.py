"""The service hosted in a named, detached Ray actor, used from this and from another driver."""

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from placement_actors import (
    BackendError,
    ClusterView,
    Deployment,
    GetClusterView,
    GetReplicaGroups,
    GroupState,
    InvalidSpecError,
    NotEnoughGpusError,
    Place,
    PlacementConstraints,
    PlacementError,
    PlacementGroupReady,
    PlacementResult,
    Release,
    ReplicaFailed,
    ReplicaGroupsView,
    UnknownMessageError,
)
from placement_actors.service import PlacementClient, _unwrap

TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("ray_nodes")


@pytest.fixture
def client(ray_cluster: Any) -> Iterator[PlacementClient]:
    name = f"test-service-{uuid.uuid4().hex[:8]}"
    yield PlacementClient.serve(ray_cluster.address, name=name)
    live = PlacementClient.connect(ray_cluster.address, name=name)  # a test may have restarted it
    for deployment in live.ask(GetClusterView()).deployments:
        live.ask(Release(deployment))
    live.stop_service()


def test_the_service_answers_the_same_messages_with_the_same_replies(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    place = Place(
        Deployment(name="served", model="m", gpus=2),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-a"],)),
    )
    result = client.ask(place)
    assert isinstance(result, PlacementResult)
    assert {a.node for a in result.assignments} == {ray_nodes["gpu-a"]}
    master = result.replicas[0].master
    assert master.port.get(timeout=TIMEOUT) > 0
    assert master.node_ip.get(timeout=TIMEOUT).count(".") == 3
    assert client.ask(place) == result  # idempotent, as with the actor itself
    view = client.ask(GetClusterView())
    assert isinstance(view, ClusterView)
    assert view.deployments == ("served",)


def test_typed_errors_cross_with_their_fields(client: PlacementClient) -> None:
    with pytest.raises(NotEnoughGpusError) as caught:
        client.ask(Place(Deployment(name="huge", model="m", gpus=1000)))
    assert caught.value.requested == 1000
    assert caught.value.rejections
    with pytest.raises(UnknownMessageError):
        client.ask("not a message")


def test_a_message_that_skipped_its_constructor_is_refused_by_the_service(
    client: PlacementClient,
) -> None:
    deployment = object.__new__(Deployment)
    fields = {"name": "a:b", "model": "m", "replicas": 1, "gpus": "4"}
    for field, value in {**fields, "runtime": None, "api_key": None}.items():
        object.__setattr__(deployment, field, value)
    forged = object.__new__(Place)
    object.__setattr__(forged, "deployment", deployment)
    object.__setattr__(forged, "constraints", PlacementConstraints())
    with pytest.raises(InvalidSpecError):
        client.ask(forged)  # pickled to the host, which never ran Deployment.__post_init__
    assert client.ask(GetClusterView()).deployments == ()  # and it keeps serving


def test_the_events_between_the_services_own_actors_are_refused_from_a_client(
    client: PlacementClient,
) -> None:
    lost = ReplicaFailed(
        deployment="d", replica_index=0, group_name="g", attempt=1, error=PlacementError("x")
    )
    for event in (lost, PlacementGroupReady(group_name="g", attempt=1)):
        with pytest.raises(InvalidSpecError, match="event between the service's own actors"):
            client.ask(event)


def test_an_endpoint_the_service_does_not_hold_is_a_typed_error(client: PlacementClient) -> None:
    host = client._host
    for key in (("no-such-group", 1, 0), (["unhashable"], 1, 0), ("g", 1, -1)):
        with pytest.raises(InvalidSpecError):
            host.later("endpoint", *key, transform=_unwrap).get(timeout=TIMEOUT)


async def test_replies_and_endpoints_can_be_awaited(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    place = Place(
        Deployment(name="awaited-remote", model="m"),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-bulk"],)),
    )
    result = await client.ask_later(place)
    assert isinstance(result, PlacementResult)
    assert await result.replicas[0].master.port > 0


SECOND_DRIVER = """
import sys
from placement_actors import Deployment, Place, PlacementConstraints
from placement_actors.service import PlacementClient, _unwrap

address, name, node = sys.argv[1:4]
client = PlacementClient.connect(address, name=name)
deployment = Deployment(name="from-elsewhere", model="m", gpus=2)
result = client.ask(Place(deployment, PlacementConstraints(gpu_nodes=(node,))))
master = result.replicas[0].master
print(master.node_ip.get(timeout=60), master.port.get(timeout=60))
"""


def test_a_second_driver_places_and_the_state_outlives_it(
    client: PlacementClient, ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    done = subprocess.run(  # noqa: S603 - this interpreter running the script above
        [
            sys.executable,
            "-c",
            SECOND_DRIVER,
            ray_cluster.address,
            client.name,
            ray_nodes["gpu-b"],
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ip, port = done.stdout.split()[-2:]
    assert int(port) > 0
    # the driver has exited; the service still holds its deployment and group
    view = client.ask(GetClusterView())
    assert view.deployments == ("from-elsewhere",)
    assert len(view.node(ray_nodes["gpu-b"]).held) == 2
    groups = client.ask(GetReplicaGroups())
    assert isinstance(groups, ReplicaGroupsView)
    assert [g.state for g in groups.groups] == [GroupState.READY]
    assert ip.count(".") == 3


def test_connecting_to_a_service_that_does_not_run_is_a_backend_error(ray_cluster: Any) -> None:
    with pytest.raises(BackendError, match="placement-actors serve"):
        PlacementClient.connect(ray_cluster.address, name="no-such-service")


def test_a_restarted_service_counts_the_gpus_its_groups_still_hold(
    client: PlacementClient, ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    node = ray_nodes["gpu-a"]
    result = client.ask(
        Place(
            Deployment(name="kept-over", model="m", gpus=4), PlacementConstraints(gpu_nodes=(node,))
        )
    )
    result.replicas[0].master.port.get(timeout=TIMEOUT)
    client.stop_service()  # the detached group stays on gpu-a
    again = PlacementClient.serve(ray_cluster.address, name=client.name)
    view = again.ask(GetClusterView())
    assert view.deployments == ("kept-over",)
    assert len(view.node(node).held) == 4
    with pytest.raises(NotEnoughGpusError):
        again.ask(
            Place(Deployment(name="newcomer", model="m"), PlacementConstraints(gpu_nodes=(node,)))
        )
    assert again.ask(Release("kept-over")).gpus_freed == 4
    assert again.ask(GetClusterView()).node(node).held == ()
