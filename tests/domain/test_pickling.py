"""Values and errors cross processes (Ray actors, remote clients): they pickle whole."""

import dataclasses
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
from placement_actors.actors.messages import NodeState, NodeView
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


def test_an_added_field_at_its_default_is_left_out_so_a_reader_of_the_version_before_reads_it() -> (
    None
):
    view = NodeView(
        node_id="a", capacity=4, free_gpus=(0,), held=(), is_head=False, egress=False,
        remote_replicas=0,
    )  # fmt: skip
    _, (cls, fields) = view.__reduce__()
    assert cls is NodeView
    assert "outside_waiting" not in fields  # a field added later, at its default
    assert fields["state"] is NodeState.ALIVE  # any other field is written, default or not
    assert pickle.loads(pickle.dumps(view)) == view  # noqa: S301 - our own bytes
    busy = dataclasses.replace(view, outside_waiting=2, state=NodeState.LOST)
    _, (_, fields) = busy.__reduce__()
    assert (fields["outside_waiting"], fields["state"]) == (2, NodeState.LOST)
    assert pickle.loads(pickle.dumps(busy)) == busy  # noqa: S301 - our own bytes


def test_a_value_written_down_keeps_every_field_even_at_its_default() -> None:
    _, (_, fields) = PlacementConstraints().__reduce__()  # as a checkpoint holds it
    assert {"strategy", "replace_lost", "keep_whole", "movable"} <= set(fields)
