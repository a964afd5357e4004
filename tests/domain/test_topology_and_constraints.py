import pytest

from placement_actors import (
    ApiKey,
    GpuStrategy,
    InvalidSpecError,
    NodeTopology,
    PlacementConstraints,
    ProviderKind,
)


def test_node_labels_are_a_read_only_copy() -> None:
    labels = {"zone": "a"}
    node = NodeTopology(node_id="n", num_gpus=4, labels=labels)
    labels["zone"] = "b"
    assert node.labels["zone"] == "a"
    with pytest.raises(TypeError):
        node.labels["zone"] = "c"  # type: ignore[index]
    assert hash(node) == hash(NodeTopology(node_id="n", num_gpus=4, labels={"zone": "a"}))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"node_id": "", "num_gpus": 1}, "node_id"),
        ({"node_id": "n", "num_gpus": -1}, "num_gpus"),
        ({"node_id": "n", "num_gpus": 1.0}, "num_gpus"),
        ({"node_id": "n", "num_gpus": 1, "labels": {"k": 1}}, "labels"),
    ],
    ids=["empty-id", "negative-gpus", "float-gpus", "non-string-label"],
)
def test_invalid_node_raises_invalid_spec(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        NodeTopology(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_constraints_normalise_node_lists_to_tuples_without_duplicates() -> None:
    constraints = PlacementConstraints(gpu_nodes=["a", "b", "a"], egress_nodes=[])  # type: ignore[arg-type]
    assert constraints.gpu_nodes == ("a", "b")
    assert constraints.egress_nodes == ()


def test_constraints_name_every_node_they_mention() -> None:
    key = (ProviderKind.OPENAI, ApiKey("k"))
    constraints = PlacementConstraints(
        gpu_nodes=("a",), egress_nodes=("e",), egress_preference={key: ("p",)}
    )
    assert constraints.named_nodes() == {"a", "e", "p"}


def test_equal_constraints_compare_equal() -> None:
    key = (ProviderKind.OPENAI, ApiKey("k"))
    first = PlacementConstraints(egress_preference={key: ("p",)}, strategy=GpuStrategy.SPREAD)
    second = PlacementConstraints(egress_preference={key: ("p",)}, strategy=GpuStrategy.SPREAD)
    assert first == second
    assert first != PlacementConstraints(strategy=GpuStrategy.SPREAD)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gpu_nodes": "node-a"},
        {"gpu_nodes": [1]},
        {"egress_preference": {"openai": ("e",)}},
        {"egress_preference": {(ProviderKind.OPENAI, "raw-secret"): ("e",)}},
        {"strategy": "pack"},
    ],
    ids=["string-not-list", "non-string-id", "bad-key", "raw-secret-key", "strategy-string"],
)
def test_malformed_constraints_raise_invalid_spec(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidSpecError):
        PlacementConstraints(**kwargs)  # type: ignore[arg-type]
