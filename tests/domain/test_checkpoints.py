"""Checkpoint records: stored as bytes, read back only through their constructors."""

import pickle

import pytest

from placement_actors import (
    ApiKey,
    Deployment,
    InvalidSpecError,
    NodeAssignment,
    PlacementConstraints,
)
from placement_actors.domain.checkpoints import (
    DeploymentCheckpoint,
    GroupCheckpoint,
    KnownEndpoint,
    decode,
    encode,
)

API = DeploymentCheckpoint(
    deployment=Deployment(name="api", model="gpt-4o", api_key=ApiKey("sk-secret")),
    constraints=PlacementConstraints(),
    assignments=(NodeAssignment(replica_index=0, node="e1"),),
)
GROUP = GroupCheckpoint(
    deployment="llama",
    replica_index=0,
    group_id="abc",
    attempt=3,
    assignments=(NodeAssignment(replica_index=0, node="a", gpus=(0, 1)),),
    endpoints=(KnownEndpoint(node_ip="10.0.0.1", port=41_000, gpu_ids=(2, 3)),),
)


def test_records_read_back_equal_to_what_was_written() -> None:
    assert decode(encode(API), DeploymentCheckpoint) == API
    assert decode(encode(GROUP), GroupCheckpoint) == GROUP
    assert decode(encode(API), DeploymentCheckpoint).deployment.api_key == ApiKey("sk-secret")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a pickle",
        encode(GROUP)[:-3],  # cut short
        pickle.dumps({"deployment": "llama"}),  # another type
    ],
)
def test_a_damaged_record_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(InvalidSpecError):
        decode(data, GroupCheckpoint)


def test_a_record_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(InvalidSpecError, match="expected a DeploymentCheckpoint"):
        decode(encode(GROUP), DeploymentCheckpoint)


def test_a_record_built_around_its_constructor_is_checked_when_read() -> None:
    broken = object.__new__(KnownEndpoint)
    for name, value in (("node_ip", "10.0.0.1"), ("port", 70_000), ("gpu_ids", ())):
        object.__setattr__(broken, name, value)
    bad = object.__new__(GroupCheckpoint)
    for name in GroupCheckpoint.__slots__:
        object.__setattr__(bad, name, getattr(GROUP, name))
    object.__setattr__(bad, "endpoints", (broken,))
    with pytest.raises(InvalidSpecError, match="port"):
        decode(pickle.dumps(bad), GroupCheckpoint)


def test_a_group_record_needs_one_endpoint_slot_per_bundle() -> None:
    with pytest.raises(InvalidSpecError, match="endpoint slot"):
        GroupCheckpoint(
            deployment="llama",
            replica_index=0,
            group_id="abc",
            attempt=1,
            assignments=GROUP.assignments,
            endpoints=(None, None),
        )


def test_a_deployment_record_lists_only_its_own_replicas() -> None:
    with pytest.raises(InvalidSpecError, match="assignments"):
        DeploymentCheckpoint(
            deployment=Deployment(name="d", model="m", gpus=1, replicas=1),
            constraints=PlacementConstraints(),
            assignments=(NodeAssignment(replica_index=5, node="a", gpus=(0,)),),
        )
