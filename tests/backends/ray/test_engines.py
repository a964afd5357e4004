"""A controller's engine runs in the bundles the service reserved, on a real local Ray cluster."""

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
import ray

from placement_actors import (
    Deployment,
    InvalidSpecError,
    Place,
    PlacementConstraints,
    PlacementResult,
    Release,
    StalePlacementError,
    start_on_ray,
)
from placement_actors.backends import ray as on_ray
from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.results import ReplicaPlacement

TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("ray_nodes")


@ray.remote
class Rank:
    """Stands in for one node's engine process: says where it runs and talks to rank 0."""

    def where(self) -> tuple[str, list[int], str, str]:
        context = ray.get_runtime_context()
        group = ray.util.get_current_placement_group()
        return (
            context.get_node_id(),
            sorted(int(i) for i in ray.get_gpu_ids()),
            group.id.hex() if group is not None else "",
            os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )

    def listen(self, ip: str, port: int) -> bool:
        self._server = socket.create_server((ip, port))  # as rank 0 binds the master port
        return True

    def accept(self) -> str:
        connection, _ = self._server.accept()
        with connection:
            return connection.recv(64).decode()

    def join(self, ip: str, port: int, rank: int) -> bool:
        with socket.create_connection((ip, port), timeout=30) as connection:
            connection.sendall(f"rank {rank}".encode())
        return True


@pytest.fixture
def service(ray_cluster: Any) -> Iterator[pykka.ActorRef[Any]]:
    ref = start_on_ray(ray_cluster.address, ready_timeout_s=30, learn_gpu_ids=True)
    yield ref
    ref.stop(timeout=TIMEOUT)


def placed(service: pykka.ActorRef[Any], name: str, gpus: int, *nodes: str) -> ReplicaPlacement:
    """The one replica of ``name``, placed on ``nodes``, once its master port is known."""
    result = service.ask(
        Place(Deployment(name=name, model="m", gpus=gpus), PlacementConstraints(gpu_nodes=nodes)),
        timeout=TIMEOUT,
    )
    assert isinstance(result, PlacementResult)
    (replica,) = result.replicas
    assert replica.master.port.get(timeout=TIMEOUT) > 0
    return replica


def test_an_engine_started_with_bundle_options_runs_on_the_chosen_node_with_the_bundles_gpus(
    service: pykka.ActorRef[Any], ray_nodes: dict[str, str]
) -> None:
    node = ray_nodes["gpu-c"]
    result = service.ask(
        Place(
            Deployment(name="engine", model="m", gpus=2),
            PlacementConstraints(gpu_nodes=(node,)),
        ),
        timeout=TIMEOUT,
    )
    assert isinstance(result, PlacementResult)
    (replica,) = result.replicas
    gpu_ids = replica.master.gpu_ids.get(timeout=TIMEOUT)
    rank = Rank.options(**on_ray.bundle_options(replica, 0)).remote()  # type: ignore[attr-defined]
    try:
        where, gpus, group, visible = ray.get(rank.where.remote(), timeout=TIMEOUT)
    finally:
        ray.kill(rank)
    assert where == node
    assert gpus == sorted(gpu_ids)
    assert len(gpus) == 2
    assert visible == ",".join(str(i) for i in gpus)
    assert group == replica.group_id
    service.ask(Release("engine"), timeout=TIMEOUT)


def test_the_ranks_of_a_split_replica_meet_at_its_master_address_and_port(
    service: pykka.ActorRef[Any], ray_nodes: dict[str, str]
) -> None:
    nodes = (ray_nodes["gpu-a"], ray_nodes["gpu-b"])  # 4 GPUs each: 8 are split 2 x 4
    result = service.ask(
        Place(Deployment(name="split", model="m", gpus=8), PlacementConstraints(gpu_nodes=nodes)),
        timeout=TIMEOUT,
    )
    assert isinstance(result, PlacementResult)
    (replica,) = result.replicas
    assert replica.spec.nnodes == 2
    ip, port = replica.master.node_ip.get(timeout=TIMEOUT), replica.master.port.get(timeout=TIMEOUT)
    ranks = [
        Rank.options(**on_ray.bundle_options(replica, i)).remote()  # type: ignore[attr-defined]
        for i in range(replica.spec.nnodes)
    ]
    try:
        places = ray.get([r.where.remote() for r in ranks], timeout=TIMEOUT)
        assert [p[0] for p in places] == [b.node for b in replica.bundles]
        assert sorted(p[0] for p in places) == sorted(nodes)
        assert all(len(p[1]) == 4 for p in places)
        assert ray.get(ranks[0].listen.remote(ip, port), timeout=TIMEOUT)
        heard = ranks[0].accept.remote()
        assert ray.get(ranks[1].join.remote(ip, port, 1), timeout=TIMEOUT)
        assert ray.get(heard, timeout=TIMEOUT) == "rank 1"
    finally:
        for rank in ranks:
            ray.kill(rank)
    service.ask(Release("split"), timeout=TIMEOUT)


def test_a_released_replicas_group_is_gone_and_says_so(
    service: pykka.ActorRef[Any], ray_nodes: dict[str, str]
) -> None:
    replica = placed(service, "gone", 1, ray_nodes["gpu-a"])
    group = on_ray.replica_group(replica)
    assert on_ray.status_of(group) is GroupStatus.CREATED
    assert group.bundle_count == len(replica.spec.bundles) == 1
    renamed = dataclasses.replace(replica, group_name="placement-actors:other:r0")
    with pytest.raises(StalePlacementError):  # a live id, but not the group of that name
        on_ray.replica_group(renamed)
    service.ask(Release("gone"), timeout=TIMEOUT)
    with pytest.raises(StalePlacementError, match="is gone") as gone:
        on_ray.bundle_options(replica, 0)
    assert gone.value.field == "group_id"
    assert isinstance(gone.value, InvalidSpecError)  # caught where bad input is caught
    with pytest.raises(InvalidSpecError, match="bundle 1 does not exist"):
        on_ray.bundle_options(replica, 1)
    for group_id, error in (
        ("", "no Ray group id"),
        ("not-hex", "not a Ray placement-group id"),
        ("ab" * 18, "is gone"),  # an id of the right form that Ray never gave out
    ):
        with pytest.raises(InvalidSpecError, match=error):
            on_ray.replica_group(dataclasses.replace(replica, group_id=group_id))


ELSEWHERE = """
import sys
import ray
from placement_actors import NodeAssignment
from placement_actors.backends.ray import bundle_options
from placement_actors.domain.results import BundleEndpoint, Known, ReplicaPlacement
from placement_actors.policies.bundle_shapes import pinned_bundle_spec

address, group_id, name, node = sys.argv[1:]
ray.init(address=address, namespace="a-controllers-own-namespace")
replica = ReplicaPlacement(  # as a controller would hold it, from a client's reply
    deployment="elsewhere",
    replica_index=0,
    group_name=name,
    spec=pinned_bundle_spec([NodeAssignment(replica_index=0, node=node, gpus=(0,))]),
    bundles=(BundleEndpoint(node=node, node_ip=Known("-"), port=Known(1)),),
    group_id=group_id,
)
where = ray.remote(lambda: (ray.get_runtime_context().get_node_id(), len(ray.get_gpu_ids())))
print(*ray.get(where.options(**bundle_options(replica)).remote(), timeout=60))
"""


def test_a_driver_in_another_namespace_finds_the_group_by_its_id(
    service: pykka.ActorRef[Any], ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    replica = placed(service, "elsewhere", 1, ray_nodes["gpu-b"])
    done = subprocess.run(  # noqa: S603 - this interpreter running the script above
        [
            sys.executable,
            "-c",
            ELSEWHERE,
            ray_cluster.address,
            replica.group_id,
            replica.group_name,
            ray_nodes["gpu-b"],
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == [ray_nodes["gpu-b"], "1"]  # its node, its one GPU
    service.ask(Release("elsewhere"), timeout=TIMEOUT)
