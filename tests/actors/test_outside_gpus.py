"""GPUs other Ray users take and give back after the service started (`GpusInUse`, no Ray)."""

import time
from collections.abc import Iterator

import pykka
import pytest

from placement_actors import (
    BackendError,
    BundleEndpoint,
    BundleStrategy,
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    InvalidSpecError,
    MoveReplica,
    NodeAssignment,
    NodeTopology,
    NotEnoughGpusError,
    Place,
    PlacementConstraints,
    PlacementResult,
    PlanReplica,
    Release,
    RemoveReplicaGroups,
    ReplicaBundleSpec,
    ReplicaFailed,
    ReplicaGroupsRemoved,
    ReplicaMoved,
    ReplicaPlacement,
    group_name,
)
from placement_actors.actors.messages import GpusInUse, NodeJoined, NodeLost
from placement_actors.domain.results import Known

TIMEOUT = 5
TOPOLOGY = (NodeTopology(node_id="a", num_gpus=4), NodeTopology(node_id="b", num_gpus=4))

Ref = pykka.ActorRef[DeploymentPlacementActor]


class Planner(pykka.ThreadingActor):
    """Plans every replica (a group per replica, as Ray would hold it) and removes groups."""

    def on_receive(self, message: object) -> object:
        if isinstance(message, RemoveReplicaGroups):
            return ReplicaGroupsRemoved(deployment=message.deployment, removed=1)
        assert isinstance(message, PlanReplica)
        return planned(message)


def planned(message: PlanReplica) -> ReplicaPlacement:
    (assignment,) = message.assignments
    return ReplicaPlacement(
        deployment=message.deployment,
        replica_index=message.replica_index,
        group_name=group_name(message.deployment, message.replica_index),
        spec=ReplicaBundleSpec(
            bundles=({"GPU": len(assignment.gpus)},),
            strategy=BundleStrategy.STRICT_PACK,
            nnodes=1,
            per_node_gpus=len(assignment.gpus),
        ),
        bundles=(
            BundleEndpoint(node=assignment.node, node_ip=Known("10.0.0.1"), port=Known(9000)),
        ),
        attempt=1,
        group_id=f"group-{message.deployment}-{message.replica_index}",
    )


@pytest.fixture
def actor() -> Iterator[Ref]:
    ref = DeploymentPlacementActor.start(
        topology=TOPOLOGY, planner=Planner.start(), stops_planner=True
    )
    yield ref
    ref.stop(timeout=TIMEOUT)


def view(ref: Ref) -> ClusterView:
    shown = ref.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(shown, ClusterView)
    return shown


def outside_and_free(ref: Ref, node: str) -> tuple[int, int]:
    shown = view(ref).node(node)
    return shown.outside, len(shown.free_gpus)


def place_on(ref: Ref, name: str, gpus: int, node: str) -> PlacementResult:
    result = ref.ask(
        Place(
            Deployment(name=name, model="m", gpus=gpus),
            PlacementConstraints(gpu_nodes=(node,)),
        ),
        timeout=TIMEOUT,
    )
    assert isinstance(result, PlacementResult)
    return result


def tell_in_use(ref: Ref, **use: object) -> None:
    ref.ask(GpusInUse(**use), timeout=TIMEOUT)  # type: ignore[arg-type]


def test_gpus_another_user_takes_after_the_start_are_held_off_the_market(actor: Ref) -> None:
    tell_in_use(actor, in_use=(("a", 3),))
    assert outside_and_free(actor, "a") == (3, 1)
    assert outside_and_free(actor, "b") == (0, 4)
    with pytest.raises(NotEnoughGpusError):
        place_on(actor, "crowded", 2, "a")


def test_gpus_held_by_another_user_at_the_start_are_offered_again_once_given_back() -> None:
    ref = DeploymentPlacementActor.start(topology=TOPOLOGY, outside={"a": 3})
    try:
        assert outside_and_free(ref, "a") == (3, 1)
        tell_in_use(ref, in_use=())
        assert outside_and_free(ref, "a") == (0, 4)
        assert place_on(ref, "whole", 4, "a").total_gpus() == 4
    finally:
        ref.stop(timeout=TIMEOUT)


def test_only_what_another_user_gives_back_is_offered_again(actor: Ref) -> None:
    tell_in_use(actor, in_use=(("a", 3),))
    tell_in_use(actor, in_use=(("a", 1),))
    assert outside_and_free(actor, "a") == (1, 3)


def test_the_services_own_groups_are_not_taken_for_another_users(actor: Ref) -> None:
    place_on(actor, "mine", 2, "a")
    tell_in_use(actor, in_use=(("a", 3),), groups=((group_name("mine", 0), "a", 2),))
    assert outside_and_free(actor, "a") == (1, 1)


def test_a_group_named_unlike_the_services_is_another_users(actor: Ref) -> None:
    tell_in_use(actor, in_use=(("a", 2),), groups=(("someone-elses:r0", "a", 2),))
    assert outside_and_free(actor, "a") == (2, 2)


def test_a_reading_taken_before_a_release_does_not_take_the_released_group_for_another_users(
    actor: Ref,
) -> None:
    place_on(actor, "leaving", 2, "a")
    read_at = time.monotonic()
    actor.ask(Release("leaving"), timeout=TIMEOUT)
    shown = ((group_name("leaving", 0), "a", 2),)
    tell_in_use(actor, in_use=(("a", 2),), groups=shown, read_at=read_at)
    assert outside_and_free(actor, "a") == (0, 4)


def test_a_group_of_a_released_name_in_a_reading_taken_after_the_release_is_another_users(
    actor: Ref,
) -> None:
    place_on(actor, "gone", 2, "a")
    actor.ask(Release("gone"), timeout=TIMEOUT)
    # Another namespace's group of that name, read after the release: someone else's.
    tell_in_use(actor, in_use=(("a", 2),), groups=((group_name("gone", 0), "a", 2),))
    assert outside_and_free(actor, "a") == (2, 2)


def test_a_name_placed_again_counts_only_its_new_gpus_as_the_services(actor: Ref) -> None:
    place_on(actor, "llama", 1, "a")
    actor.ask(Release("llama"), timeout=TIMEOUT)
    place_on(actor, "llama", 1, "a")
    # Its new group, and another namespace's group of that name with 2 more GPUs of a.
    tell_in_use(actor, in_use=(("a", 3),), groups=((group_name("llama", 0), "a", 3),))
    assert outside_and_free(actor, "a") == (2, 1)


def test_a_reading_taken_before_a_move_does_not_take_the_moved_replicas_old_group_for_others(
    actor: Ref,
) -> None:
    actor.ask(
        Place(
            Deployment(name="mover", model="m", gpus=2),
            PlacementConstraints(gpu_nodes=("a", "b")),
        ),
        timeout=TIMEOUT,
    )
    assert outside_and_free(actor, "a") == (0, 2)  # placed on a (ties go by node id)
    read_at = time.monotonic()
    assert isinstance(actor.ask(MoveReplica("mover", 0, "b"), timeout=TIMEOUT), ReplicaMoved)
    shown = ((group_name("mover", 0), "a", 2),)
    tell_in_use(actor, in_use=(("a", 2),), groups=shown, read_at=read_at)
    assert outside_and_free(actor, "a") == (0, 4)


def test_gpus_another_user_took_from_under_a_pending_group_are_held_once_the_service_frees_them(
    actor: Ref,
) -> None:
    place_on(actor, "pending", 4, "a")  # reserved, its group not made yet
    tell_in_use(actor, in_use=(("a", 2),))  # someone else got there first
    assert outside_and_free(actor, "a") == (0, 0)
    assert view(actor).node("a").outside_waiting == 2  # the operator sees why it will wait
    actor.ask(Release("pending"), timeout=TIMEOUT)
    assert outside_and_free(actor, "a") == (2, 2)
    assert view(actor).node("a").outside_waiting == 0


def test_a_node_that_left_and_joined_again_holds_nothing_for_others_until_the_next_reading(
    actor: Ref,
) -> None:
    tell_in_use(actor, in_use=(("a", 3),))
    actor.ask(NodeLost(node_id="a"), timeout=TIMEOUT)
    actor.ask(NodeJoined(node=TOPOLOGY[0]), timeout=TIMEOUT)
    assert outside_and_free(actor, "a") == (0, 4)
    tell_in_use(actor, in_use=(("a", 1),))
    assert outside_and_free(actor, "a") == (1, 3)


def test_a_node_that_joins_with_gpus_in_use_holds_them_for_others_before_anything_is_placed_there(
    actor: Ref,
) -> None:
    for name in ("kept", "other"):  # kept on a, other on b (ties go by node id)
        assert isinstance(
            actor.ask(Place(Deployment(name=name, model="m", gpus=4)), timeout=TIMEOUT),
            PlacementResult,
        )
    actor.ask(NodeLost(node_id="a"), timeout=TIMEOUT)
    assert view(actor).degraded == ("kept",)
    joined = NodeTopology(node_id="c", num_gpus=4)
    actor.ask(NodeJoined(node=joined, in_use=1), timeout=TIMEOUT)
    assert outside_and_free(actor, "c") == (1, 3)
    assert view(actor).degraded == ("kept",)  # not placed on the GPU someone else holds there
    tell_in_use(actor, in_use=())  # c's next settled reading: given back
    assert view(actor).degraded == ()
    assert [h.deployment for h in view(actor).node("c").held] == ["kept"] * 4


@pytest.mark.parametrize(
    ("in_use", "complaint"),
    [(-1, "in_use"), (True, "in_use"), (1.0, "in_use"), (5, "at most the node's 4 GPUs")],
)
def test_a_joined_node_said_to_have_more_gpus_in_use_than_it_has_is_refused(
    in_use: object, complaint: str
) -> None:
    with pytest.raises(InvalidSpecError, match=complaint):
        NodeJoined(node=NodeTopology(node_id="c", num_gpus=4), in_use=in_use)  # type: ignore[arg-type]


def test_gpus_in_use_on_a_node_the_service_does_not_know_change_nothing(actor: Ref) -> None:
    tell_in_use(actor, in_use=(("stranger", 3),), groups=((group_name("x", 0), "stranger", 3),))
    assert [(n.node_id, n.outside) for n in view(actor).nodes] == [("a", 0), ("b", 0)]


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"in_use": [("a", 1)]}, "tuples"),
        ({"in_use": (("a",),)}, "pair"),
        ({"in_use": (("a", 0),)}, "gpus must be an integer >= 1"),
        ({"in_use": (("a", 10**6),)}, "at most"),
        ({"in_use": ((7, 1),)}, "node_id"),
        ({"groups": (("g", "a"),)}, "triple"),
        ({"groups": (("g", "a", True),)}, "gpus"),
        ({"unsettled": ("a", 7)}, "node_id"),
        ({"read_at": float("nan")}, "read_at"),
        ({"read_at": "now"}, "read_at"),
    ],
)
def test_a_malformed_reading_is_refused_with_a_typed_error(
    fields: dict[str, object], complaint: str
) -> None:
    with pytest.raises(InvalidSpecError, match=complaint):
        GpusInUse(**fields)  # type: ignore[arg-type]


def test_a_forged_reading_is_refused_and_the_actor_keeps_its_picture(actor: Ref) -> None:
    tell_in_use(actor, in_use=(("a", 1),))
    forged = object.__new__(GpusInUse)
    object.__setattr__(forged, "in_use", (("a", -3),))  # built around the constructor's checks
    object.__setattr__(forged, "groups", ())
    object.__setattr__(forged, "unsettled", ())
    object.__setattr__(forged, "read_at", None)
    with pytest.raises(InvalidSpecError, match="gpus must be an integer >= 1"):
        actor.ask(forged, timeout=TIMEOUT)
    assert outside_and_free(actor, "a") == (1, 3)


def test_a_node_whose_reading_still_moves_keeps_what_it_holds_for_others(actor: Ref) -> None:
    tell_in_use(actor, in_use=(("a", 3), ("b", 1)))
    tell_in_use(actor, in_use=(("b", 2),), unsettled=("a",))
    assert outside_and_free(actor, "a") == (3, 1)
    assert outside_and_free(actor, "b") == (2, 2)


def test_a_group_of_the_services_name_holding_more_than_the_service_gave_it_is_partly_others(
    actor: Ref,
) -> None:
    place_on(actor, "llama", 1, "a")
    # Another namespace's group of the same name holds 2 more GPUs of a, and b's.
    tell_in_use(
        actor,
        in_use=(("a", 3), ("b", 2)),
        groups=((group_name("llama", 0), "a", 3), (group_name("llama", 0), "b", 2)),
    )
    assert outside_and_free(actor, "a") == (2, 1)
    assert outside_and_free(actor, "b") == (2, 2)


class HalfPlanner(pykka.ThreadingActor):
    """Plans replica 0, refuses replica 1 (Ray refused its group); removes groups on request."""

    def on_receive(self, message: object) -> object:
        if isinstance(message, RemoveReplicaGroups):
            return ReplicaGroupsRemoved(deployment=message.deployment, removed=1)
        assert isinstance(message, PlanReplica)
        if message.replica_index:
            msg = "cannot create placement group (injected)"
            raise BackendError(msg, operation="create placement group")
        return planned(message)


def test_the_groups_of_an_undone_place_that_a_reading_still_shows_are_not_taken_for_others() -> (
    None
):
    planner = HalfPlanner.start()
    ref = DeploymentPlacementActor.start(topology=TOPOLOGY, planner=planner, stops_planner=True)
    try:
        read_at = time.monotonic()
        with pytest.raises(BackendError):
            ref.ask(
                Place(
                    Deployment(name="undone", model="m", gpus=1, replicas=2),
                    PlacementConstraints(gpu_nodes=("a",)),
                ),
                timeout=TIMEOUT,
            )
        # Read while replica 0's group stood, told after the Place was undone.
        shown = ((group_name("undone", 0), "a", 1),)
        tell_in_use(ref, in_use=(("a", 1),), groups=shown, read_at=read_at)
        assert outside_and_free(ref, "a") == (0, 4)
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_deployment_a_lost_node_left_short_is_placed_again_once_others_give_gpus_back(
    actor: Ref,
) -> None:
    actor.ask(
        Place(
            Deployment(name="kept", model="m", gpus=4),
            PlacementConstraints(gpu_nodes=("a", "b")),
        ),
        timeout=TIMEOUT,
    )  # on a (ties go by node id)
    tell_in_use(actor, in_use=(("b", 4),), groups=((group_name("kept", 0), "a", 4),))
    actor.ask(NodeLost(node_id="a"), timeout=TIMEOUT)
    assert view(actor).degraded == ("kept",)  # b is all someone else's
    tell_in_use(actor, in_use=())  # they gave it back
    assert view(actor).degraded == ()
    assert [h.deployment for h in view(actor).node("b").held] == ["kept"] * 4


def test_a_reading_made_again_later_holds_gpus_the_service_freed_under_a_same_named_group(
    actor: Ref,
) -> None:
    placed = place_on(actor, "llama", 2, "a")
    read_at = time.monotonic()
    # Another namespace's group of the same name holds 2 GPUs of a: the service's own waits.
    reading = {"in_use": (("a", 2),), "groups": ((group_name("llama", 0), "a", 2),)}
    tell_in_use(actor, **reading, read_at=read_at)
    assert outside_and_free(actor, "a") == (0, 2)  # taken for the service's own group
    actor.ask(
        ReplicaFailed(
            deployment="llama",
            replica_index=0,
            group_name=placed.replicas[0].group_name,
            attempt=placed.replicas[0].attempt,
            error=BackendError("timed out (injected)", operation="wait for placement group"),
        ),
        timeout=TIMEOUT,
    )
    assert outside_and_free(actor, "a") == (0, 4)  # the reading may predate the removal
    tell_in_use(actor, **reading)  # the same reading, made again after it (see RESEND_S)
    assert outside_and_free(actor, "a") == (2, 2)


def test_gpus_promised_to_an_earlier_runs_groups_that_others_took_show_as_waiting_at_start() -> (
    None
):
    ref = DeploymentPlacementActor.start(
        topology=TOPOLOGY,
        held={"earlier": (NodeAssignment(replica_index=0, node="a", gpus=(0, 1, 2, 3)),)},
        outside={"a": 2},
    )
    try:
        assert view(ref).node("a").outside_waiting == 2
        ref.ask(Release("earlier"), timeout=TIMEOUT)
        assert outside_and_free(ref, "a") == (2, 2)
    finally:
        ref.stop(timeout=TIMEOUT)
