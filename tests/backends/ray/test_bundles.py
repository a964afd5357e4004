"""Work inside a bundle on a real local Ray cluster: its node, its IP, free ports."""

import socket

import pytest
import ray
from ray.util import remove_placement_group

from placement_actors import InvalidSpecError, NodeAssignment
from placement_actors.backends import ray as on_ray
from placement_actors.policies.bundle_shapes import pinned_bundle_spec
from placement_actors.policies.port_book import PortBook

pytestmark = pytest.mark.usefixtures("ray_nodes")


def test_bundle_ip_and_port_are_routable_free_and_outside_ray_ports(
    ray_nodes: dict[str, str],
) -> None:
    spec = pinned_bundle_spec([NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(0,))])
    pg = on_ray.build_replica_pg(spec, name="t-ip", ready_timeout_s=20)
    try:
        ip = on_ray.get_bundle_node_ip(pg, 0)
        records = {n["NodeID"]: n for n in ray.nodes()}  # type: ignore[no-untyped-call]
        assert ip == records[ray_nodes["gpu-a"]]["NodeManagerAddress"]
        assert not ip.startswith("127.")
        book = PortBook()
        ports = {on_ray.get_free_port_in_bundle(pg, 0, holder="t", book=book) for _ in range(5)}
        assert len(ports) == 5
        assert book.given(ip) == ports
        for port in ports:
            assert port not in on_ray.RAY_WORKER_PORTS
            with socket.socket() as sock:
                sock.bind((ip, port))  # still free: nobody but the holder was told of it
    finally:
        remove_placement_group(pg)


def test_run_in_bundle_runs_on_the_bundles_node(ray_nodes: dict[str, str]) -> None:
    spec = pinned_bundle_spec([NodeAssignment(replica_index=0, node=ray_nodes["gpu-b"], gpus=(0,))])
    pg = on_ray.build_replica_pg(spec, name="t-run", ready_timeout_s=20)
    try:
        node = on_ray.run_in_bundle(
            pg, 0, lambda: ray.get_runtime_context().get_node_id(), timeout_s=30
        )
        assert node == ray_nodes["gpu-b"]
    finally:
        remove_placement_group(pg)


def test_ports_from_the_process_book_are_held_until_their_group_is_removed(
    ray_nodes: dict[str, str],
) -> None:
    spec = pinned_bundle_spec([NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(0,))])
    pg = on_ray.build_replica_pg(spec, name="t-book", ready_timeout_s=20)
    try:
        first = on_ray.get_free_port_in_bundle(pg, 0)
        second = on_ray.get_free_port_in_bundle(pg, 0)
        assert first != second
        assert {first, second} <= on_ray.PROCESS_PORTS.given()
    finally:
        on_ray.remove_group(pg)
    assert not {first, second} & on_ray.PROCESS_PORTS.given()


def test_a_bundle_the_group_does_not_have_is_an_invalid_spec(ray_nodes: dict[str, str]) -> None:
    spec = pinned_bundle_spec([NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(0,))])
    pg = on_ray.build_replica_pg(spec, name="t-index", ready_timeout_s=20)
    try:
        for index in (1, -1):
            with pytest.raises(InvalidSpecError, match="bundle"):
                on_ray.get_bundle_node_ip(pg, index)
    finally:
        on_ray.remove_group(pg)
