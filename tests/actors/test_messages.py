from collections.abc import Callable

import pytest

from placement_actors import (
    Deployment,
    GetPlacementFailure,
    InvalidSpecError,
    NodeAssignment,
    Place,
    PlaceMany,
    PlacementError,
    PlanReplica,
    Release,
    RemoveReplicaGroups,
    ReplicaFailed,
)
from placement_actors.actors.messages import (
    BundleProbed,
    BundleProbeFailed,
    PlacementGroupFailed,
    PlacementGroupReady,
    PlacementGroupTimedOut,
)

ASSIGNMENT = NodeAssignment(replica_index=0, node="n", gpus=(0,))


@pytest.mark.parametrize(
    "make",
    [
        lambda: GetPlacementFailure([]),  # type: ignore[arg-type]
        lambda: Release(None),  # type: ignore[arg-type]
        lambda: Release("x" * 5000),
        lambda: ReplicaFailed(
            deployment=[],  # type: ignore[arg-type]
            replica_index=0,
            group_name="g",
            attempt=1,
            error=PlacementError("x"),
        ),
        lambda: ReplicaFailed(
            deployment="d", replica_index=-1, group_name="g", attempt=1, error=PlacementError("x")
        ),
        lambda: ReplicaFailed(
            deployment="d",
            replica_index=0,
            group_name="g",
            attempt=1,
            error="lost",  # type: ignore[arg-type]
        ),
        lambda: ReplicaFailed(
            deployment="d",
            replica_index=0,
            group_name="g",
            attempt=1,
            error=PlacementError("x"),
            group_removed="no",  # type: ignore[arg-type]
        ),
        lambda: PlanReplica(deployment="d", replica_index=True, assignments=(ASSIGNMENT,)),
        lambda: PlanReplica(deployment="d", replica_index=0, assignments=[ASSIGNMENT]),  # type: ignore[arg-type]
        lambda: PlanReplica(deployment="d", replica_index=0, assignments=(ASSIGNMENT,), notify=1),  # type: ignore[arg-type]
        lambda: PlanReplica(
            deployment="d", replica_index=0, assignments=(ASSIGNMENT,), ready_timeout_s=float("inf")
        ),
        lambda: PlanReplica(
            deployment="d", replica_index=0, assignments=(ASSIGNMENT,), ready_timeout_s=float("nan")
        ),
        lambda: RemoveReplicaGroups("d", (0, -1)),
        lambda: RemoveReplicaGroups("d", [0]),  # type: ignore[arg-type]
        lambda: PlacementGroupReady(group_name="g", attempt="1"),  # type: ignore[arg-type]
        lambda: PlacementGroupFailed(group_name="g", attempt=1, error="x"),  # type: ignore[arg-type]
        lambda: PlacementGroupTimedOut(group_name=None, attempt=1),  # type: ignore[arg-type]
        lambda: BundleProbed(group_name="g", attempt=1, bundle_index=0, node_ip="ip", port=70000),
        lambda: BundleProbeFailed(group_name="g", attempt=1, bundle_index=-1, error=OSError()),
        lambda: NodeAssignment(replica_index=0, node="n", gpus=(0, 0)),
        lambda: NodeAssignment(replica_index=0, node=" ", gpus=(0,)),
        lambda: NodeAssignment(replica_index=0, node="n", gpus=(-1,)),
    ],
    ids=[
        "failure-query-list",
        "release-none",
        "release-huge-name",
        "replica-failed-list",
        "replica-failed-negative-index",
        "replica-failed-text-error",
        "replica-failed-text-removed",
        "plan-bool-index",
        "plan-list-assignments",
        "plan-notify-not-a-ref",
        "plan-infinite-timeout",
        "plan-nan-timeout",
        "remove-negative-index",
        "remove-list-indexes",
        "ready-text-attempt",
        "failed-text-error",
        "timed-out-no-name",
        "probed-port-out-of-range",
        "probe-failed-negative-bundle",
        "assignment-ordinal-twice",
        "assignment-blank-node",
        "assignment-negative-ordinal",
    ],
)
def test_every_message_refuses_fields_of_the_wrong_type_or_range(
    make: Callable[[], object],
) -> None:
    with pytest.raises(InvalidSpecError):
        make()


def test_a_batch_holding_a_forged_place_is_a_typed_error_not_a_crash() -> None:
    forged_deployment = object.__new__(Deployment)
    object.__setattr__(forged_deployment, "name", {"not": "hashable"})
    forged_place = object.__new__(Place)
    object.__setattr__(forged_place, "deployment", forged_deployment)
    with pytest.raises(InvalidSpecError, match="no valid name"):
        PlaceMany((forged_place,), largest_first=True)
