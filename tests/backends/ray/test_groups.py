"""Placement groups on a real local Ray cluster: shapes, pinning, heads, timeouts, reaping."""

import subprocess
import sys
from typing import Any

import pytest
import ray
from ray.util import remove_placement_group
from ray.util.placement_group import PlacementGroup

from placement_actors import (
    BackendError,
    BundleStrategy,
    GroupStatus,
    InvalidSpecError,
    NodeAssignment,
    PlacementGroupTimeoutError,
    group_prefix,
    plan_replica_bundle_shape,
)
from placement_actors.backends import ray as on_ray
from placement_actors.domain.deployments import GROUP_NAME_ROOT
from placement_actors.policies.bundle_shapes import NODE_ID_LABEL, pinned_bundle_spec

pytestmark = pytest.mark.usefixtures("ray_nodes")


def bundle_nodes(name: str) -> dict[int, str]:
    return on_ray.bundle_nodes(name)[name]


def test_single_node_replica_is_strict_pack_on_one_node_that_fits(
    ray_nodes: dict[str, str],
) -> None:
    spec = plan_replica_bundle_shape(
        8, topology=on_ray.get_cluster_topology(), ignore_head_node=True
    )
    assert spec.strategy is BundleStrategy.STRICT_PACK
    pg = on_ray.build_replica_pg(spec, name="t-pack", ready_timeout_s=20)
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
    pg = on_ray.build_replica_pg(spec, name="t-spread", ready_timeout_s=20)
    try:
        assert bundle_nodes("t-spread") == {0: ray_nodes["gpu-b"], 1: ray_nodes["gpu-a"]}
    finally:
        remove_placement_group(pg)


def test_head_exclusion_works_on_a_head_with_gpus(ray_nodes: dict[str, str]) -> None:
    """Fill every non-head GPU; an excluding group then waits, a plain one takes the head."""
    topology = on_ray.get_cluster_topology()
    excluding = plan_replica_bundle_shape(2, topology=topology, ignore_head_node=True)
    assert excluding.bundle_label_selector is not None
    fillers = [
        on_ray.build_pg(
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
            on_ray.build_replica_pg(excluding, name="t-not-head", ready_timeout_s=1.5)
        assert caught.value.scheduling_state is GroupStatus.NO_RESOURCES
        assert caught.value.retryable
        plain = plan_replica_bundle_shape(2, topology=topology, ignore_head_node=False)
        pg = on_ray.build_replica_pg(plain, name="t-head", ready_timeout_s=20)
        assert bundle_nodes("t-head") == {0: ray_nodes["head"]}
        remove_placement_group(pg)
    finally:
        for pg in fillers:
            remove_placement_group(pg)
    assert on_ray.group_states("t-not-head") == {"t-not-head": GroupStatus.REMOVED}


def test_an_infeasible_group_times_out_as_infeasible_and_is_removed() -> None:
    with pytest.raises(PlacementGroupTimeoutError) as caught:
        on_ray.build_pg(
            [{"CPU": 1, "GPU": 1000}], BundleStrategy.STRICT_PACK, name="t-huge", ready_timeout_s=1
        )
    assert caught.value.scheduling_state is GroupStatus.INFEASIBLE
    assert not caught.value.retryable
    assert isinstance(caught.value, TimeoutError)
    assert on_ray.group_states("t-huge") == {"t-huge": GroupStatus.REMOVED}


def test_a_duplicate_name_is_a_backend_error() -> None:
    pg = on_ray.build_pg([{"CPU": 1}], BundleStrategy.STRICT_PACK, name="t-dup", ready_timeout_s=20)
    try:
        with pytest.raises(BackendError):
            on_ray.build_pg(
                [{"CPU": 1}], BundleStrategy.STRICT_PACK, name="t-dup", ready_timeout_s=20
            )
    finally:
        remove_placement_group(pg)


def test_a_malformed_selector_is_an_invalid_spec() -> None:
    with pytest.raises(InvalidSpecError):
        on_ray.build_pg(
            [{"CPU": 1}, {"CPU": 1}],
            BundleStrategy.STRICT_SPREAD,
            name="t-bad-selector",
            bundle_label_selector=[{NODE_ID_LABEL: "x"}],
            ready_timeout_s=5,
        )


def test_prefix_reaping_removes_one_deployment_and_nothing_else() -> None:
    names = ["dep-1:r0", "dep-1:r1", "dep-10:r0", "dep-1x:r0"]
    groups = [
        on_ray.build_pg(
            [{"CPU": 1}],
            BundleStrategy.STRICT_PACK,
            name=f"{GROUP_NAME_ROOT}{n}",
            ready_timeout_s=20,
        )
        for n in names
    ]
    assert on_ray.remove_named_pgs_with_prefix(group_prefix("dep-1")) == 2
    states = on_ray.group_states(GROUP_NAME_ROOT)
    assert [states[f"{GROUP_NAME_ROOT}{n}"] for n in names] == [
        GroupStatus.REMOVED,
        GroupStatus.REMOVED,
        GroupStatus.CREATED,
        GroupStatus.CREATED,
    ]
    for pg in groups[2:]:
        remove_placement_group(pg)


def test_reaping_refuses_an_empty_prefix() -> None:
    with pytest.raises(InvalidSpecError):
        on_ray.remove_named_pgs_with_prefix("")


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
    ours = on_ray.build_pg([{"CPU": 1}], BundleStrategy.STRICT_PACK, name=name, ready_timeout_s=20)
    try:
        assert on_ray.remove_named_pgs_with_prefix(f"{GROUP_NAME_ROOT}shared-name:") == 1
        assert on_ray.status_of(ours) is GroupStatus.REMOVED
        foreign_group = PlacementGroup(ray.PlacementGroupID.from_hex(foreign))
        assert on_ray.status_of(foreign_group) is GroupStatus.CREATED
    finally:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(foreign)))
