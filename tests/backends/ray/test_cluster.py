"""Reading the cluster: alive GPU nodes, the head, labels (real local Ray cluster)."""

import time

import pytest

from placement_actors.backends import ray as on_ray
from placement_actors.policies.bundle_shapes import NODE_ID_LABEL

pytestmark = pytest.mark.usefixtures("ray_nodes")


def test_topology_lists_gpu_nodes_with_the_head_flagged(ray_nodes: dict[str, str]) -> None:
    topology = {n.node_id: n for n in on_ray.get_cluster_topology()}
    assert topology[ray_nodes["head"]].is_head
    assert topology[ray_nodes["head"]].num_gpus == 2
    assert topology[ray_nodes["gpu-c"]].num_gpus == 8
    assert sum(n.is_head for n in topology.values()) == 1
    assert all(n.labels[NODE_ID_LABEL] == node_id for node_id, n in topology.items())


def test_topology_skips_dead_and_gpu_less_nodes() -> None:
    records = [
        {"NodeID": "a", "Alive": True, "Resources": {"GPU": 2.0, "CPU": 4.0}},
        {"NodeID": "b", "Alive": False, "Resources": {"GPU": 8.0}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 4.0, on_ray.HEAD_RESOURCE: 1}},
        {"NodeID": "d", "Alive": True, "Resources": {"GPU": 0.5}},
    ]
    topology = on_ray.get_cluster_topology(nodes=records)
    assert [(n.node_id, n.num_gpus, n.is_head) for n in topology] == [("a", 2, False)]


def test_egress_nodes_are_the_labelled_ones(ray_nodes: dict[str, str]) -> None:
    assert set(on_ray.get_egress_nodes()) == {ray_nodes["head"], ray_nodes["gpu-a"]}


def test_a_node_that_left_keeps_its_name_for_views_that_show_it_lost(ray_cluster: object) -> None:
    node_id = ray_cluster.add_worker(gpus=1, name="gpu-gone")  # type: ignore[attr-defined]
    ray_cluster.remove_worker(node_id)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while node_id in on_ray.node_names() and time.monotonic() < deadline:
        time.sleep(0.05)  # Ray marks it dead a moment after remove_node returns
    assert node_id not in on_ray.node_names()
    assert on_ray.node_names(include_dead=True)[node_id] == "gpu-gone"
