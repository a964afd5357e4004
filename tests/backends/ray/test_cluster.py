"""Reading the cluster: alive GPU nodes, the head, labels (real local Ray cluster)."""

import time
from typing import Any

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


def test_labels_a_node_may_carry_but_placement_cannot_read_are_left_out_not_the_node() -> None:
    long_key = ".".join(["x" * 63] * 3 + ["x" * 61]) + "/zone"  # Ray takes 253 + 1 + 63 chars
    labels = {f"k{i:02d}": "v" for i in range(70)}  # more than a node's labels are read
    labels |= {long_key: "east", on_ray.NAME_LABEL: "gpu-x", on_ray.EGRESS_LABEL: "true"}
    records = [{"NodeID": "a", "Alive": True, "Resources": {"GPU": 2.0}, "Labels": labels}]
    (node,) = on_ray.get_cluster_topology(head_node_id="h", nodes=records)
    assert long_key not in node.labels
    assert node.labels[on_ray.NAME_LABEL] == "gpu-x"  # the service's own labels come first
    assert node.labels[on_ray.EGRESS_LABEL] == "true"
    assert len(node.labels) == 64


def test_a_node_whose_gpus_another_ray_user_holds_all_of_counts_them_outside(
    ray_nodes: dict[str, str],
) -> None:
    node = ray_nodes["gpu-a"]
    other = on_ray.build_pg(
        [{"GPU": 4}],
        "STRICT_PACK",
        name="someone-elses-all",
        bundle_label_selector=[{NODE_ID_LABEL: node}],
        ready_timeout_s=30,
    )
    try:  # Ray then leaves GPU out of the node's free resources altogether
        assert on_ray.gpus_held_outside({}).get(node) == 4
    finally:
        on_ray.remove_group(other)


def test_gpus_in_use_count_every_user_and_the_groups_say_which_are_the_services(
    ray_nodes: dict[str, str],
) -> None:
    node = ray_nodes["gpu-b"]
    other = on_ray.build_pg(
        [{"GPU": 1}, {"GPU": 2}],
        "STRICT_PACK",
        name="placement-actors:gpu-use-probe:r3",
        bundle_label_selector=[{NODE_ID_LABEL: node}] * 2,
        ready_timeout_s=30,
    )
    odd = on_ray.build_pg(  # named like the service's groups, but no deployment has that name
        [{"GPU": 1}],
        "STRICT_PACK",
        name="placement-actors:not a deployment:r0",
        bundle_label_selector=[{NODE_ID_LABEL: node}],
        ready_timeout_s=30,
    )
    try:
        # Ray's free resources follow a group made a moment ago with the raylet's next report.
        deadline = time.monotonic() + 10
        while on_ray.gpus_in_use().get(node) != 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert on_ray.gpus_in_use().get(node) == 4
        assert on_ray.group_gpus("placement-actors:gpu-use-probe:") == {
            "placement-actors:gpu-use-probe:r3": {node: 3}
        }
        in_use, groups = on_ray.read_gpu_use(on_ray.alive_nodes())
        assert in_use[node] == 4
        assert groups["placement-actors:gpu-use-probe:r3"] == {node: 3}
        assert "placement-actors:not a deployment:r0" not in groups  # the service's are read
    finally:
        on_ray.remove_group(other)
        on_ray.remove_group(odd)
    assert on_ray.group_gpus("placement-actors:gpu-use-probe:") == {}


def test_the_watcher_reads_rays_group_table_once_a_round_and_again_only_when_groups_move(
    ray_nodes: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from placement_actors.backends.ray import groups as group_module  # noqa: PLC0415
    from placement_actors.backends.ray import membership  # noqa: PLC0415

    real = on_ray.group_table

    def elsewhere() -> list[Any]:
        msg = "the table was read other than through the watcher's reader"
        raise AssertionError(msg)

    for module in (group_module, membership):
        monkeypatch.setattr(module, "group_table", elsewhere)
    reads = []

    def counted() -> list[Any]:
        reads.append(1)
        return real()

    told: list[tuple[on_ray.GpuUse, frozenset[str]]] = []
    watcher = on_ray.ClusterWatcher(
        known=list(on_ray.alive_nodes()),
        on_joined=lambda *_: None,
        on_lost=lambda _: None,
        on_rescheduling=lambda *_: None,
        on_gpu_use=lambda use, unsettled, _began: told.append((use, unsettled)),
        table=counted,
    )
    watcher.poll()
    assert len(reads) == 1  # for both readers
    assert told[0][1] == frozenset(ray_nodes.values())  # every node is new: not settled yet

    def quiet() -> int:
        """Poll until a round reads no table (what earlier tests removed is given back)."""
        for _ in range(40):
            before = len(reads)
            watcher.poll()
            if len(reads) == before:
                return before
            time.sleep(0.1)
        pytest.fail("Ray's free resources kept moving")

    quiet()
    start = len(told)
    node = ray_nodes["gpu-c"]
    group = on_ray.build_pg(
        [{"GPU": 2}],
        "STRICT_PACK",
        name="placement-actors:table-probe:r0",
        bundle_label_selector=[{NODE_ID_LABEL: node}],
        ready_timeout_s=30,
    )
    try:
        deadline = time.monotonic() + 10
        while not any(use[1].get("placement-actors:table-probe:r0") for use, _ in told):
            assert time.monotonic() < deadline, told[-1]
            watcher.poll()
            time.sleep(0.1)
        # The first reading that shows the group's GPUs taken was made with a table that has it.
        (in_use, groups), _ = next(t for t in told[start:] if t[0][0].get(node))
        assert (in_use[node], groups) == (2, {"placement-actors:table-probe:r0": {node: 2}})
        settled = quiet()
        for _ in range(4):
            time.sleep(0.25)
            watcher.poll()
        assert len(reads) == settled  # nothing moved: the table is not read again
    finally:
        on_ray.remove_group(group)
