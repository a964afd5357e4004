"""Values and errors cross processes (Ray actors, remote clients): they pickle whole."""

import pickle

import pytest

from placement_actors import (
    ApiKey,
    BackendError,
    ConfigFileError,
    ConfigProblem,
    DefragmentationPlan,
    Deployment,
    GetDefragmentationPlan,
    GroupStatus,
    NodeAssignment,
    NodeTopology,
    NotEnoughGpusError,
    Place,
    PlacementCancelledError,
    PlacementConstraints,
    PlacementError,
    PlacementGroupTimeoutError,
    ProviderKind,
    Rejection,
    ReplicaMove,
    UnknownMessageError,
)
from placement_actors.policies.bundle_shapes import pinned_bundle_spec

KEY = ApiKey("sk-1")
VALUES = [
    NodeTopology(node_id="a", num_gpus=4, labels={"zone": "x"}),
    PlacementConstraints(gpu_nodes=("a",), egress_preference={(ProviderKind.OPENAI, KEY): ("e",)}),
    pinned_bundle_spec([NodeAssignment(replica_index=0, node="a", gpus=(0, 1))]),
    Place(Deployment(name="d", model="gpt-4o", api_key=KEY), PlacementConstraints(egress_nodes=())),
    PlacementConstraints(keep_whole=True),
    GetDefragmentationPlan(gpus=8, max_moves=4),
    DefragmentationPlan(
        gpus=8,
        moves=(ReplicaMove(deployment="e", replica_index=0, gpus=2, from_node="a", to_node="b"),),
        freed_nodes=("a",),
    ),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_values_pickle_to_equal_values(value: object) -> None:
    copy = pickle.loads(pickle.dumps(value))  # noqa: S301 - our own bytes
    assert copy == value


ERRORS: list[PlacementError] = [
    NotEnoughGpusError(
        "m",
        deployment="d",
        requested=8,
        available=2,
        largest_node=4,
        retryable=True,
        rejections=(Rejection(node_id="a", reason="r", requested=8, available=2),),
    ).with_moves(
        (ReplicaMove(deployment="e", replica_index=1, gpus=2, from_node="a", to_node="b"),)
    ),
    PlacementGroupTimeoutError(group="g", timeout_s=1.5, scheduling_state=GroupStatus.INFEASIBLE),
    BackendError("b", operation="o"),
    UnknownMessageError("Actor", object()),
    ConfigFileError(path="p.yaml", problems=(ConfigProblem(line=3, field="gpus", problem="bad"),)),
    PlacementCancelledError(group="g"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_fields(error: PlacementError) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
