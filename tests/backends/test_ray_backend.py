"""The Ray backend on a real local Ray cluster (head + four raylets with logical GPUs)."""

import socket
import subprocess
import sys
from typing import Any

import pytest
import ray
from ray.util import placement_group_table, remove_placement_group
from ray.util.placement_group import PlacementGroup

from placement_actors import (
    BackendError,
    BundleStrategy,
    InvalidSpecError,
    NodeAssignment,
    PlacementGroupTimeoutError,
    group_prefix,
    plan_replica_bundle_shape,
)
from placement_actors.backends import ray_backend
from placement_actors.domain.deployments import GROUP_NAME_ROOT
from placement_actors.policies.bundle_shapes import NODE_ID_LABEL, pinned_bundle_spec
from placement_actors.policies.port_book import PortBook

pytestmark = pytest.mark.usefixtures("ray_nodes")


def bundle_nodes(name: str) -> dict[int, str]:
    for info in placement_group_table().values():
        if info["name"] == name and info["state"] == "CREATED":
            return dict(info["bundles_to_node_id"])
    raise AssertionError(name)


def test_topology_lists_gpu_nodes_with_the_head_flagged(ray_nodes: dict[str, str]) -> None:
    topology = {n.node_id: n for n in ray_backend.get_cluster_topology()}
    assert topology[ray_nodes["head"]].is_head
    assert topology[ray_nodes["head"]].num_gpus == 2
    assert topology[ray_nodes["gpu-c"]].num_gpus == 8
    assert sum(n.is_head for n in topology.values()) == 1
    assert all(n.labels[NODE_ID_LABEL] == node_id for node_id, n in topology.items())


def test_topology_skips_dead_and_gpu_less_nodes() -> None:
    records = [
        {"NodeID": "a", "Alive": True, "Resources": {"GPU": 2.0, "CPU": 4.0}},
        {"NodeID": "b", "Alive": False, "Resources": {"GPU": 8.0}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 4.0, ray_backend.HEAD_RESOURCE: 1}},
        {"NodeID": "d", "Alive": True, "Resources": {"GPU": 0.5}},
    ]
    topology = ray_backend.get_cluster_topology(nodes=records)
    assert [(n.node_id, n.num_gpus, n.is_head) for n in topology] == [("a", 2, False)]


def test_egress_nodes_are_the_labelled_ones(ray_nodes: dict[str, str]) -> None:
    assert set(ray_backend.get_egress_nodes()) == {ray_nodes["head"], ray_nodes["gpu-a"]}


def test_single_node_replica_is_strict_pack_on_one_node_that_fits(
    ray_nodes: dict[str, str],
) -> None:
    spec = plan_replica_bundle_shape(
        8, topology=ray_backend.get_cluster_topology(), ignore_head_node=True
    )
    assert spec.strategy is BundleStrategy.STRICT_PACK
    pg = ray_backend.build_replica_pg(spec, name="t-pack", ready_timeout_s=20)
    try:
        (node,) = bundle_nodes("t-pack").values()
        assert node in {ray_nodes["gpu-c"], ray_nodes["gpu-bulk"]}
    finally:
        remove_placement_group(pg)


def test_multi_node_replica_lands_on_exactly_the_chosen_nodes(ray_nodes: dict[str, str]) -> None:
    chosen = [
        NodeAssignment(replica_index=0, node=ray_nodes["gpu-b"], gpus=(0, 1, 2, 3)),
        NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(0, 1, 2, 3)),
    ]
    spec = pinned_bundle_spec(chosen)
    assert spec.strategy is BundleStrategy.STRICT_SPREAD
    pg = ray_backend.build_replica_pg(spec, name="t-spread", ready_timeout_s=20)
    try:
        assert bundle_nodes("t-spread") == {0: ray_nodes["gpu-b"], 1: ray_nodes["gpu-a"]}
    finally:
        remove_placement_group(pg)


def test_head_exclusion_works_on_a_head_with_gpus(ray_nodes: dict[str, str]) -> None:
    """Fill every non-head GPU; an excluding group then waits, a plain one takes the head."""
    topology = ray_backend.get_cluster_topology()
    excluding = plan_replica_bundle_shape(2, topology=topology, ignore_head_node=True)
    assert excluding.bundle_label_selector is not None
    fillers = [
        ray_backend.build_pg(
            [{"GPU": n.num_gpus}],
            BundleStrategy.STRICT_PACK,
            name=f"t-fill-{n.node_id[:8]}",
            bundle_label_selector=[{NODE_ID_LABEL: n.node_id}],
            ready_timeout_s=20,
        )
        for n in topology
        if not n.is_head
    ]
    try:
        with pytest.raises(PlacementGroupTimeoutError) as caught:
            ray_backend.build_replica_pg(excluding, name="t-not-head", ready_timeout_s=1.5)
        assert caught.value.scheduling_state == "NO_RESOURCES"
        assert caught.value.retryable
        plain = plan_replica_bundle_shape(2, topology=topology, ignore_head_node=False)
        pg = ray_backend.build_replica_pg(plain, name="t-head", ready_timeout_s=20)
        assert bundle_nodes("t-head") == {0: ray_nodes["head"]}
        remove_placement_group(pg)
    finally:
        for pg in fillers:
            remove_placement_group(pg)
    assert ray_backend.group_states("t-not-head") == {"t-not-head": "REMOVED"}


def test_an_infeasible_group_times_out_as_infeasible_and_is_removed() -> None:
    with pytest.raises(PlacementGroupTimeoutError) as caught:
        ray_backend.build_pg(
            [{"CPU": 1, "GPU": 1000}], BundleStrategy.STRICT_PACK, name="t-huge", ready_timeout_s=1
        )
    assert caught.value.scheduling_state == "INFEASIBLE"
    assert not caught.value.retryable
    assert isinstance(caught.value, TimeoutError)
    assert ray_backend.group_states("t-huge") == {"t-huge": "REMOVED"}


def test_a_duplicate_name_is_a_backend_error() -> None:
    pg = ray_backend.build_pg(
        [{"CPU": 1}], BundleStrategy.STRICT_PACK, name="t-dup", ready_timeout_s=20
    )
    try:
        with pytest.raises(BackendError):
            ray_backend.build_pg(
                [{"CPU": 1}], BundleStrategy.STRICT_PACK, name="t-dup", ready_timeout_s=20
            )
    finally:
        remove_placement_group(pg)


def test_a_malformed_selector_is_an_invalid_spec() -> None:
    with pytest.raises(InvalidSpecError):
        ray_backend.build_pg(
            [{"CPU": 1}, {"CPU": 1}],
            BundleStrategy.STRICT_SPREAD,
            name="t-bad-selector",
            bundle_label_selector=[{NODE_ID_LABEL: "x"}],
            ready_timeout_s=5,
        )


def test_bundle_ip_and_port_are_routable_free_and_outside_ray_ports(
    ray_nodes: dict[str, str],
) -> None:
    spec = pinned_bundle_spec([NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(0,))])
    pg = ray_backend.build_replica_pg(spec, name="t-ip", ready_timeout_s=20)
    try:
        ip = ray_backend.get_bundle_node_ip(pg, 0)
        records = {n["NodeID"]: n for n in ray.nodes()}  # type: ignore[no-untyped-call]
        assert ip == records[ray_nodes["gpu-a"]]["NodeManagerAddress"]
        assert not ip.startswith("127.")
        book = PortBook()
        ports = {
            ray_backend.get_free_port_in_bundle(pg, 0, holder="t", book=book) for _ in range(5)
        }
        assert len(ports) == 5
        assert book.given(ip) == ports
        for port in ports:
            assert port not in ray_backend.RAY_WORKER_PORTS
            with socket.socket() as sock:
                sock.bind((ip, port))  # still free: nobody but the holder was told of it
    finally:
        remove_placement_group(pg)


def test_run_in_bundle_runs_on_the_bundles_node(ray_nodes: dict[str, str]) -> None:
    spec = pinned_bundle_spec([NodeAssignment(replica_index=0, node=ray_nodes["gpu-b"], gpus=(0,))])
    pg = ray_backend.build_replica_pg(spec, name="t-run", ready_timeout_s=20)
    try:
        node = ray_backend.run_in_bundle(
            pg, 0, lambda: ray.get_runtime_context().get_node_id(), timeout_s=30
        )
        assert node == ray_nodes["gpu-b"]
    finally:
        remove_placement_group(pg)


def test_prefix_reaping_removes_one_deployment_and_nothing_else() -> None:
    names = ["dep-1:r0", "dep-1:r1", "dep-10:r0", "dep-1x:r0"]
    groups = [
        ray_backend.build_pg(
            [{"CPU": 1}],
            BundleStrategy.STRICT_PACK,
            name=f"{GROUP_NAME_ROOT}{n}",
            ready_timeout_s=20,
        )
        for n in names
    ]
    assert ray_backend.remove_named_pgs_with_prefix(group_prefix("dep-1")) == 2
    states = ray_backend.group_states(GROUP_NAME_ROOT)
    assert [states[f"{GROUP_NAME_ROOT}{n}"] for n in names] == [
        "REMOVED",
        "REMOVED",
        "CREATED",
        "CREATED",
    ]
    for pg in groups[2:]:
        remove_placement_group(pg)


def test_reaping_refuses_an_empty_prefix() -> None:
    with pytest.raises(InvalidSpecError):
        ray_backend.remove_named_pgs_with_prefix("")


OTHER_NAMESPACE_DRIVER = """
import sys
import ray
from ray.util import placement_group
ray.init(address=sys.argv[1], namespace="someone-else", log_to_driver=False)
pg = placement_group([{"CPU": 1}], name=sys.argv[2], lifetime="detached")
ray.get(pg.ready(), timeout=60)
print(pg.id.hex())
"""


def test_prefix_reaping_leaves_other_namespaces_alone(ray_cluster: Any) -> None:
    name = f"{GROUP_NAME_ROOT}shared-name:r0"
    made = subprocess.run(  # noqa: S603 - this interpreter running the script above
        [sys.executable, "-c", OTHER_NAMESPACE_DRIVER, ray_cluster.address, name],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    foreign = made.stdout.strip().splitlines()[-1]
    ours = ray_backend.build_pg(
        [{"CPU": 1}], BundleStrategy.STRICT_PACK, name=name, ready_timeout_s=20
    )
    try:
        assert ray_backend.remove_named_pgs_with_prefix(f"{GROUP_NAME_ROOT}shared-name:") == 1
        table = placement_group_table()
        assert table[ours.id.hex()]["state"] == "REMOVED"
        assert table[foreign]["state"] == "CREATED"
    finally:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(foreign)))
