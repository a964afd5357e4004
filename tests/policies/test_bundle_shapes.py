import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement_actors import (
    BundleStrategy,
    InvalidSpecError,
    NodeAssignment,
    NodeTopology,
    NoGpuNodesError,
    NotEnoughGpusError,
)
from placement_actors.policies.bundle_shapes import (
    NODE_ID_LABEL,
    pinned_bundle_spec,
    plan_even_split,
    plan_replica_bundle_shape,
)


def nodes(*gpus: int, head: int | None = None) -> list[NodeTopology]:
    return [
        NodeTopology(node_id=f"n{i}", num_gpus=g, is_head=i == head) for i, g in enumerate(gpus)
    ]


@pytest.mark.parametrize(
    ("tp", "gpus", "nnodes"),
    [
        (4, (4,), 1),  # one node holds it
        (4, (8, 2), 1),
        (8, (4, 4), 2),  # 8 = 2 x 4
        (8, (4, 4, 4, 4), 2),  # the smallest split wins
        (8, (2, 2, 2, 2), 4),  # 8 = 4 x 2
        (8, (4, 2, 2, 2), 4),  # 2 x 4 needs two 4s; 4 x 2 fits
        (6, (3, 3), 2),
        (6, (2, 2, 2), 3),
        (4, (3, 1), None),  # never 3 + 1
        (7, (4, 4), None),  # a prime larger than any node cannot be split evenly
        (16, (4, 4, 8), None),  # 2 x 8 needs two 8s; 4 x 4 needs four 4s
    ],
    ids=str,
)
def test_even_split_table(tp: int, gpus: tuple[int, ...], nnodes: int | None) -> None:
    assert plan_even_split(tp, gpus) == nnodes


def test_single_node_replica_is_one_strict_pack_bundle() -> None:
    spec = plan_replica_bundle_shape(4, topology=nodes(4, 8), ignore_head_node=False)
    assert spec.strategy is BundleStrategy.STRICT_PACK
    assert [dict(b) for b in spec.bundles] == [{"CPU": 1, "GPU": 4}]
    assert (spec.nnodes, spec.per_node_gpus, spec.total_gpus, spec.is_multi_node) == (
        1,
        4,
        4,
        False,
    )
    assert spec.bundle_label_selector is None


def test_split_replica_is_equal_strict_spread_bundles() -> None:
    spec = plan_replica_bundle_shape(8, topology=nodes(4, 4, 4), ignore_head_node=False)
    assert spec.strategy is BundleStrategy.STRICT_SPREAD
    assert [dict(b) for b in spec.bundles] == [{"CPU": 1, "GPU": 4}] * 2
    assert spec.is_multi_node
    assert spec.total_gpus == 8


def test_no_two_bundles_or_selectors_share_a_dict() -> None:
    spec = plan_replica_bundle_shape(
        8, topology=nodes(2, 2, 2, 2, 4, head=4), ignore_head_node=True
    )
    assert len({id(b) for b in spec.bundles}) == len(spec.bundles) == 4
    assert spec.bundle_label_selector is not None
    assert len({id(s) for s in spec.bundle_label_selector}) == 4


def test_head_exclusion_selects_every_node_but_the_heads() -> None:
    spec = plan_replica_bundle_shape(4, topology=nodes(8, 4, head=0), ignore_head_node=True)
    assert spec.bundle_label_selector is not None
    assert dict(spec.bundle_label_selector[0]) == {NODE_ID_LABEL: "!in(n0)"}
    assert spec.nnodes == 1  # n1 holds it; n0 (the head, with 8) is not counted


def test_a_shape_refused_with_head_exclusion_names_the_head_and_why_it_was_left_out() -> None:
    with pytest.raises(NotEnoughGpusError) as caught:
        plan_replica_bundle_shape(8, topology=nodes(8, 4, head=0), ignore_head_node=True)
    assert [(r.node_id, r.reason) for r in caught.value.rejections] == [
        ("n0", "is a head node (head exclusion is on)"),
        ("n1", "has 4 GPUs in all; a whole replica needs 8"),
    ]
    assert caught.value.rejections_omitted == 0


def test_order_of_checks_tp_before_topology() -> None:
    with pytest.raises(InvalidSpecError):
        plan_replica_bundle_shape(0, topology=[])
    with pytest.raises(NoGpuNodesError):
        plan_replica_bundle_shape(1, topology=[])


def test_only_heads_with_exclusion_says_head_exclusion_is_on() -> None:
    with pytest.raises(NoGpuNodesError, match="head exclusion is on"):
        plan_replica_bundle_shape(1, topology=nodes(8, head=0), ignore_head_node=True)


def test_not_enough_names_the_tp_size_and_eligible_nodes() -> None:
    with pytest.raises(NotEnoughGpusError, match=r"TP size 16 .* 3 eligible node") as caught:
        plan_replica_bundle_shape(16, topology=nodes(4, 4, 8), ignore_head_node=False)
    assert caught.value.requested == 16


def test_pinned_spec_pins_each_bundle_to_its_node() -> None:
    spec = pinned_bundle_spec(
        [
            NodeAssignment(replica_index=0, node="a", gpus=(0, 1)),
            NodeAssignment(replica_index=0, node="b", gpus=(2, 3)),
        ]
    )
    assert spec.strategy is BundleStrategy.STRICT_SPREAD
    assert spec.bundle_label_selector is not None
    assert [dict(s) for s in spec.bundle_label_selector] == [
        {NODE_ID_LABEL: "a"},
        {NODE_ID_LABEL: "b"},
    ]


@pytest.mark.parametrize(
    "assignments",
    [
        [],
        [
            NodeAssignment(replica_index=0, node="a", gpus=(0,)),
            NodeAssignment(replica_index=0, node="b", gpus=(0, 1, 2)),
        ],
        [
            NodeAssignment(replica_index=0, node="a", gpus=(0,)),
            NodeAssignment(replica_index=0, node="a", gpus=(1,)),
        ],
        [NodeAssignment(replica_index=0, node="a", gpus=())],
    ],
    ids=["none", "uneven", "same-node-twice", "no-gpus"],
)
def test_pinned_spec_refuses_what_ray_should_not_be_asked(
    assignments: list[NodeAssignment],
) -> None:
    with pytest.raises(InvalidSpecError):
        pinned_bundle_spec(assignments)


@given(st.integers(1, 32), st.lists(st.integers(0, 16), max_size=8))
def test_a_planned_shape_always_fits_and_is_even(tp: int, gpus: list[int]) -> None:
    topology = nodes(*gpus)
    try:
        spec = plan_replica_bundle_shape(tp, topology=topology, ignore_head_node=False)
    except (NoGpuNodesError, NotEnoughGpusError):
        assert plan_even_split(tp, gpus) is None
        return
    assert spec.total_gpus == tp
    assert sum(1 for g in gpus if g >= spec.per_node_gpus) >= spec.nnodes
    # and it is the smallest such split
    for smaller in range(1, spec.nnodes):
        if tp % smaller == 0:
            assert sum(1 for g in gpus if g >= tp // smaller) < smaller
