import logging
import pickle
import threading
from collections.abc import Iterator

import pykka
import pytest

from placement_actors import (
    ApiKey,
    BackendError,
    CapacityError,
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    EgressStrategy,
    GetClusterView,
    GetPlacementFailure,
    GpuStrategy,
    InvalidSpecError,
    LabelSelector,
    NodeAssignment,
    NodeTopology,
    NoEgressNodesError,
    NoGpuNodesError,
    NotEnoughGpusError,
    Place,
    PlacedMany,
    PlaceMany,
    PlacementConstraints,
    PlacementFailure,
    PlacementResult,
    ProviderKind,
    Release,
    Released,
    UnknownMessageError,
    deployment_placement_proxy,
)
from placement_actors.actors.mailbox import KeepServingActor, stop_first
from placement_actors.actors.messages import NodeJoined
from placement_actors.domain.limits import MAX_FAILURES_KEPT

TIMEOUT = 5
TOPOLOGY = (
    NodeTopology(node_id="head", num_gpus=0, is_head=True),
    NodeTopology(node_id="gpu-a", num_gpus=4),
    NodeTopology(node_id="gpu-b", num_gpus=4),
    NodeTopology(node_id="gpu-c", num_gpus=8),
)
EGRESS = ("head", "edge-1", "edge-2")

Ref = pykka.ActorRef[DeploymentPlacementActor]


@pytest.fixture
def actor() -> Iterator[Ref]:
    ref = DeploymentPlacementActor.start(topology=TOPOLOGY, egress_nodes=EGRESS)
    yield ref
    ref.stop(timeout=TIMEOUT)


def local(name: str, *, gpus: int = 1, replicas: int = 1) -> Deployment:
    return Deployment(name=name, model="meta-llama/Llama-3.1-8B", gpus=gpus, replicas=replicas)


def remote(name: str, *, key: str | None = "sk-a", replicas: int = 1) -> Deployment:
    api_key = ApiKey(key) if key is not None else None
    return Deployment(name=name, model="gpt-4o", replicas=replicas, api_key=api_key)


def place(actor: Ref, deployment: Deployment, **constraints: object) -> PlacementResult:
    message = Place(deployment, PlacementConstraints(**constraints))  # type: ignore[arg-type]
    result = actor.ask(message, timeout=TIMEOUT)
    assert isinstance(result, PlacementResult)
    return result


def cluster_view(actor: Ref) -> ClusterView:
    view = actor.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    return view


def held_gpus(actor: Ref) -> dict[str, dict[int, str]]:
    view = cluster_view(actor)
    return {n.node_id: {h.ordinal: h.deployment for h in n.held} for n in view.nodes}


# -- local GPU deployments ------------------------------------------------------------------------


def test_place_packs_replicas_onto_the_tightest_node(actor: Ref) -> None:
    result = place(actor, local("llama", gpus=2, replicas=3))
    assert result.assignments == (
        NodeAssignment(replica_index=0, node="gpu-a", gpus=(0, 1)),  # a, b tie at 4 free: id
        NodeAssignment(replica_index=1, node="gpu-a", gpus=(2, 3)),  # a now has 2: tightest
        NodeAssignment(replica_index=2, node="gpu-b", gpus=(0, 1)),
    )


def test_spread_puts_replicas_on_distinct_nodes(actor: Ref) -> None:
    result = place(actor, local("llama", replicas=3), strategy=GpuStrategy.SPREAD)
    assert [a.node for a in result.assignments] == ["gpu-c", "gpu-a", "gpu-b"]


def test_spread_shares_a_node_only_when_no_unused_node_fits(actor: Ref) -> None:
    result = place(actor, local("llama", gpus=4, replicas=3), strategy=GpuStrategy.SPREAD)
    assert sorted(a.node for a in result.assignments) == ["gpu-a", "gpu-b", "gpu-c"]
    result = place(actor, local("big", gpus=4), strategy=GpuStrategy.SPREAD)
    assert result.assignments[0].node == "gpu-c"  # the only node with 4 left


def test_no_gpu_ordinal_is_handed_out_twice(actor: Ref) -> None:
    first = place(actor, local("one", gpus=3))
    second = place(actor, local("two", gpus=3))
    taken = [(a.node, g) for r in (first, second) for a in r.assignments for g in a.gpus]
    assert len(taken) == len(set(taken)) == 6


def test_place_raises_not_enough_gpus_when_all_reserved(actor: Ref) -> None:
    place(actor, local("fill", gpus=4, replicas=2))
    place(actor, local("fill-c", gpus=8))
    with pytest.raises(NotEnoughGpusError) as caught:
        actor.ask(Place(local("late")), timeout=TIMEOUT)
    error = caught.value
    assert (error.requested, error.available, error.largest_node) == (1, 0, 8)
    assert error.retryable
    assert {r.node_id for r in error.rejections} == {"head", "gpu-a", "gpu-b", "gpu-c"}


def test_a_replica_larger_than_any_node_never_fits(actor: Ref) -> None:
    with pytest.raises(NotEnoughGpusError) as caught:
        actor.ask(Place(local("huge", gpus=16)), timeout=TIMEOUT)
    assert caught.value.largest_node == 8
    assert not caught.value.retryable
    assert "not even on an empty cluster" in str(caught.value)


def test_more_replicas_than_the_cluster_could_ever_hold_are_refused_at_once(actor: Ref) -> None:
    before = held_gpus(actor)
    # 4 + 4 + 8 GPUs hold at most four 4-GPU replicas, whatever is released
    with pytest.raises(NotEnoughGpusError, match="could hold at most 4 such replicas") as caught:
        actor.ask(Place(local("five-big", gpus=4, replicas=5)), timeout=TIMEOUT)
    assert not caught.value.retryable
    assert held_gpus(actor) == before


def test_a_place_that_does_not_fit_reserves_nothing(actor: Ref) -> None:
    place(actor, local("small", gpus=4))  # gpu-a
    before = held_gpus(actor)
    # 12 GPUs are left: three 4-GPU replicas fit, the fourth needs what "small" holds
    with pytest.raises(NotEnoughGpusError, match="12 GPUs are free on the allowed nodes") as caught:
        actor.ask(Place(local("four-big", gpus=4, replicas=4)), timeout=TIMEOUT)
    assert caught.value.retryable  # releasing "small" makes room
    assert caught.value.available == 8  # gpu-c, whole again: this call's own holds were undone
    assert held_gpus(actor) == before


def test_a_failed_place_reports_the_ledger_without_its_own_partial_reservation() -> None:
    ref = DeploymentPlacementActor.start(
        topology=(NodeTopology(node_id="a", num_gpus=4), NodeTopology(node_id="b", num_gpus=4))
    )
    # an empty 2 x 4 cluster: two 4-GPU replicas fit, the third never does
    with pytest.raises(NotEnoughGpusError) as caught:
        ref.ask(Place(local("three", gpus=4, replicas=3)), timeout=TIMEOUT)
    assert caught.value.available == 4
    assert not caught.value.retryable
    assert [r.available for r in caught.value.rejections] == []  # both nodes are whole and free


def test_a_fragmented_cluster_that_never_fits_is_not_retryable() -> None:
    ref = DeploymentPlacementActor.start(
        topology=(NodeTopology(node_id="a", num_gpus=4), NodeTopology(node_id="b", num_gpus=2))
    )
    # 6 GPUs hold two 3-GPU replicas by count, but 1 + 2 left after the first split no 3 evenly
    with pytest.raises(NotEnoughGpusError, match="releasing every other") as caught:
        ref.ask(Place(local("threes", gpus=3, replicas=2)), timeout=TIMEOUT)
    assert not caught.value.retryable


def test_a_place_blocked_by_another_deployment_is_retryable() -> None:
    ref = DeploymentPlacementActor.start(
        topology=(NodeTopology(node_id="a", num_gpus=4), NodeTopology(node_id="b", num_gpus=4))
    )
    ref.ask(Place(local("single", gpus=4)), timeout=TIMEOUT)
    with pytest.raises(NotEnoughGpusError, match="4 GPUs are free") as caught:
        ref.ask(Place(local("pair", gpus=4, replicas=2)), timeout=TIMEOUT)
    assert caught.value.retryable  # releasing "single" frees a node


def test_a_place_that_fits_by_count_but_not_by_shape_reports_how_far_it_got() -> None:
    ref = DeploymentPlacementActor.start(
        topology=(NodeTopology(node_id="a", num_gpus=4), NodeTopology(node_id="b", num_gpus=4))
    )
    ref.ask(Place(local("other", gpus=2)), timeout=TIMEOUT)  # a: 2 free
    # 6 free GPUs for two 3-GPU replicas: one fits on b, the other finds 2 + 1 free
    with pytest.raises(NotEnoughGpusError, match="1 of 2 replicas fitted") as caught:
        ref.ask(Place(local("threes", gpus=3, replicas=2)), timeout=TIMEOUT)
    assert caught.value.retryable  # releasing "other" frees a for the second
    assert caught.value.available == 4  # b is whole again


def test_gpu_nodes_limit_where_replicas_go(actor: Ref) -> None:
    result = place(actor, local("pinned", replicas=2), gpu_nodes=("gpu-c",))
    assert {a.node for a in result.assignments} == {"gpu-c"}


def test_an_empty_gpu_node_list_allows_no_node(actor: Ref) -> None:
    with pytest.raises(NoGpuNodesError, match="gpu_nodes is empty"):
        actor.ask(Place(local("nowhere"), PlacementConstraints(gpu_nodes=())), timeout=TIMEOUT)


def test_only_cpu_nodes_allowed_is_no_gpu_nodes(actor: Ref) -> None:
    with pytest.raises(NoGpuNodesError):
        actor.ask(Place(local("cpu"), PlacementConstraints(gpu_nodes=("head",))), timeout=TIMEOUT)


def test_a_cluster_without_gpus_answers_no_gpu_nodes() -> None:
    ref = DeploymentPlacementActor.start(topology=[NodeTopology(node_id="cpu", num_gpus=0)])
    with pytest.raises(NoGpuNodesError) as caught:
        ref.ask(Place(local("any")), timeout=TIMEOUT)
    assert isinstance(caught.value, CapacityError)


def test_unknown_nodes_in_constraints_are_an_invalid_spec(actor: Ref) -> None:
    with pytest.raises(InvalidSpecError, match="gpu-z"):
        actor.ask(Place(local("x"), PlacementConstraints(gpu_nodes=("gpu-z",))), timeout=TIMEOUT)
    assert held_gpus(actor)["gpu-a"] == {}


# -- remote deployments -----------------------------------------------------------------------


def test_remote_replicas_go_to_the_least_loaded_egress_node(actor: Ref) -> None:
    first = place(actor, remote("gpt", key="sk-a"))
    second = place(actor, remote("other", key="sk-b"))
    assert first.assignments[0] == NodeAssignment(replica_index=0, node="edge-1")
    assert second.assignments[0].node == "edge-2"


def test_packed_remote_replicas_join_nodes_serving_the_same_provider_and_key(actor: Ref) -> None:
    place(actor, remote("gpt", key="sk-a"))  # edge-1
    place(actor, remote("other", key="sk-b"))  # edge-2
    same_key = place(
        actor, remote("gpt-mini", key="sk-a", replicas=2), egress_strategy=EgressStrategy.PACK
    )
    assert {a.node for a in same_key.assignments} == {"edge-1"}


def test_remote_replicas_spread_over_distinct_egress_nodes_by_default(actor: Ref) -> None:
    result = place(actor, remote("gpt", replicas=3))
    assert sorted(a.node for a in result.assignments) == ["edge-1", "edge-2", "head"]


def test_spread_remote_replicas_start_on_the_node_serving_the_same_key(actor: Ref) -> None:
    place(actor, remote("other", key="sk-b"))  # edge-1
    place(actor, remote("gpt", key="sk-a"))  # edge-2, the least loaded
    result = place(actor, remote("gpt-mini", key="sk-a", replicas=4))
    # edge-2 serves sk-a; then the unused nodes, least loaded first; then round again, where
    # head (1 replica) is less loaded than edge-1 and edge-2 (2 each)
    assert [a.node for a in result.assignments] == ["edge-2", "head", "edge-1", "head"]


def test_remote_replicas_above_the_service_limit_are_an_invalid_spec() -> None:
    ref = DeploymentPlacementActor.start(topology=(), egress_nodes=("e",), max_remote_replicas=5)
    with pytest.raises(InvalidSpecError, match="limit of 5"):
        ref.ask(Place(remote("many", replicas=6)), timeout=TIMEOUT)
    assert cluster_view_of(ref).deployments == ()


def cluster_view_of(ref: Ref) -> ClusterView:
    return cluster_view(ref)


def test_egress_preference_from_the_caller_is_honoured(actor: Ref) -> None:
    key = (ProviderKind.OPENAI, ApiKey("sk-a"))
    result = place(actor, remote("gpt"), egress_preference={key: ("head",)})
    assert result.assignments[0].node == "head"


def test_egress_nodes_limit_where_remote_replicas_go(actor: Ref) -> None:
    result = place(actor, remote("gpt", replicas=2), egress_nodes=("edge-2",))
    assert {a.node for a in result.assignments} == {"edge-2"}


def test_no_egress_node_is_a_typed_error_carrying_the_provider(actor: Ref) -> None:
    with pytest.raises(NoEgressNodesError) as caught:
        actor.ask(
            Place(remote("gpt"), PlacementConstraints(egress_nodes=("gpu-a",))), timeout=TIMEOUT
        )
    assert caught.value.provider is ProviderKind.OPENAI
    assert [r.node_id for r in caught.value.rejections] == ["gpu-a"]


def test_a_service_without_egress_nodes_cannot_place_remote_deployments() -> None:
    ref = DeploymentPlacementActor.start(topology=TOPOLOGY)
    with pytest.raises(NoEgressNodesError):
        ref.ask(Place(remote("claude")), timeout=TIMEOUT)


# -- idempotency and release ------------------------------------------------------------------


def test_resending_the_same_place_answers_the_same_result_and_reserves_nothing(actor: Ref) -> None:
    first = place(actor, local("llama", gpus=2))
    before = held_gpus(actor)
    assert place(actor, local("llama", gpus=2)) == first
    assert held_gpus(actor) == before


def test_the_same_name_with_a_different_spec_is_invalid_until_released(actor: Ref) -> None:
    place(actor, local("llama", gpus=2))
    with pytest.raises(InvalidSpecError, match="release it first"):
        actor.ask(Place(local("llama", gpus=4)), timeout=TIMEOUT)
    actor.ask(Release("llama"), timeout=TIMEOUT)
    assert place(actor, local("llama", gpus=4)).total_gpus() == 4


def test_release_frees_everything_and_is_idempotent(actor: Ref) -> None:
    place(actor, local("llama", gpus=2, replicas=2))
    place(actor, remote("gpt", replicas=2))
    assert actor.ask(Release("llama"), timeout=TIMEOUT) == Released(
        deployment="llama", was_placed=True, gpus_freed=4, replicas_freed=2
    )
    assert actor.ask(Release("llama"), timeout=TIMEOUT) == Released(
        deployment="llama", was_placed=False, gpus_freed=0, replicas_freed=0
    )
    actor.ask(Release("gpt"), timeout=TIMEOUT)
    view = cluster_view(actor)
    assert all(not n.held and n.remote_replicas == 0 for n in view.nodes)
    assert view.deployments == ()


def test_cluster_view_shows_capacity_free_gpus_and_holders(actor: Ref) -> None:
    place(actor, local("llama", gpus=3))
    view = cluster_view(actor)
    node = view.node("gpu-a")
    assert (node.capacity, node.free_gpus) == (4, (3,))
    assert [(h.ordinal, h.deployment) for h in node.held] == [
        (0, "llama"),
        (1, "llama"),
        (2, "llama"),
    ]
    assert view.node("head").is_head
    assert view.node("edge-1").egress
    assert [n.node_id for n in view.nodes] == sorted(n.node_id for n in view.nodes)
    assert view.deployments == ("llama",)


# -- the typed proxy and bad input ------------------------------------------------------------


def test_the_typed_proxy_speaks_the_same_protocol(actor: Ref) -> None:
    proxy = deployment_placement_proxy(actor)
    result = proxy.place(Place(local("llama", gpus=2))).get(timeout=TIMEOUT)
    assert result.total_gpus() == 2
    assert proxy.release(Release("llama")).get(timeout=TIMEOUT).gpus_freed == 2
    assert proxy.get_cluster_view(GetClusterView()).get(timeout=TIMEOUT).deployments == ()


def test_proxy_errors_arrive_typed_in_the_future(actor: Ref) -> None:
    proxy = deployment_placement_proxy(actor)
    future = proxy.place(Place(local("huge", gpus=64)))
    with pytest.raises(NotEnoughGpusError):
        future.get(timeout=TIMEOUT)
    with pytest.raises(InvalidSpecError):
        proxy.place("not a message").get(timeout=TIMEOUT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [object(), "Place", {"deployment": "x"}, None, 42],
    ids=["object", "string", "dict", "none", "int"],
)
def test_an_unknown_message_is_a_typed_error_and_the_actor_keeps_serving(
    actor: Ref, message: object
) -> None:
    with pytest.raises(UnknownMessageError):
        actor.ask(message, timeout=TIMEOUT)
    assert place(actor, local("after")).total_gpus() == 1


def test_malformed_messages_are_rejected_before_they_reach_the_actor() -> None:
    with pytest.raises(InvalidSpecError):
        Place("llama")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpecError):
        Place(local("x"), {"gpu_nodes": []})  # type: ignore[arg-type]
    with pytest.raises(InvalidSpecError):
        Release(7)  # type: ignore[arg-type]


def test_a_told_bad_message_is_logged_and_the_actor_keeps_serving(
    actor: Ref, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="placement_actors"):
        actor.tell(object())
        actor.tell(Place(local("huge", gpus=64)))
        assert place(actor, local("after")).total_gpus() == 1
    assert actor.is_alive()
    messages = [r.getMessage() for r in caplog.records]
    assert any("UnknownMessageError" in m for m in messages)
    assert any("NotEnoughGpusError" in m for m in messages)


def test_a_told_place_is_carried_out(actor: Ref) -> None:
    actor.tell(Place(local("told", gpus=2)))
    assert cluster_view(actor).deployments == ("told",)


def test_a_malformed_topology_fails_at_start() -> None:
    with pytest.raises(InvalidSpecError):
        DeploymentPlacementActor.start(topology=[{"node_id": "a", "num_gpus": 1}])
    with pytest.raises(InvalidSpecError):
        DeploymentPlacementActor.start(topology=TOPOLOGY, egress_nodes=[3])


# -- replicas larger than any node's free GPUs, and head exclusion ----------------------------


def test_a_replica_with_no_single_node_free_is_split_evenly_over_free_capacity(actor: Ref) -> None:
    place(actor, local("small", replicas=1), gpu_nodes=("gpu-c",))  # gpu-c: 7 of 8 free
    result = place(actor, local("tp8", gpus=8))
    parts = [(a.node, len(a.gpus)) for a in result.assignments]
    assert parts == [("gpu-a", 4), ("gpu-b", 4)]  # 2 x 4 (gpu-c's 7 cannot hold 8)
    assert {a.replica_index for a in result.assignments} == {0}
    assert result.total_gpus() == 8


def test_a_split_never_plans_against_total_gpus(actor: Ref) -> None:
    place(actor, local("hog-a", gpus=3), gpu_nodes=("gpu-a",))
    place(actor, local("hog-c", gpus=5), gpu_nodes=("gpu-c",))
    # free: a 1, b 4, c 3 -> no two nodes have 4 free, no four nodes have 2 free
    with pytest.raises(NotEnoughGpusError) as caught:
        actor.ask(Place(local("tp8", gpus=8)), timeout=TIMEOUT)
    assert caught.value.retryable  # it would fit an empty cluster (4 + 4 or 8)


def test_head_exclusion_keeps_local_replicas_off_the_head() -> None:
    topology = (
        NodeTopology(node_id="head", num_gpus=8, is_head=True),
        NodeTopology(node_id="w", num_gpus=2),
    )
    ref = DeploymentPlacementActor.start(topology=topology, ignore_head_node=True)
    result = place(ref, local("one", gpus=2))
    assert result.assignments[0].node == "w"
    with pytest.raises(NotEnoughGpusError) as caught:
        ref.ask(Place(local("two", gpus=2)), timeout=TIMEOUT)
    reasons = {r.node_id: r.reason for r in caught.value.rejections}
    assert reasons == {
        "w": "0 of 2 GPUs free, 2 needed",
        "head": "is a head node (head exclusion is on)",
    }


def test_a_head_without_gpus_is_shown_as_the_head_whether_given_or_joined_later() -> None:
    gpu = NodeTopology(node_id="w", num_gpus=2)
    head = NodeTopology(node_id="head", num_gpus=0, is_head=True)
    given = DeploymentPlacementActor.start(topology=(gpu,), egress_nodes=(head,))
    assert cluster_view(given).node("head").is_head
    joined = DeploymentPlacementActor.start(topology=(gpu,))
    joined.tell(NodeJoined(node=head, egress=True))
    view = cluster_view(joined)
    assert view.node("head").is_head
    assert not view.node("w").is_head


def test_without_head_exclusion_the_head_is_a_gpu_node_like_any_other() -> None:
    topology = (NodeTopology(node_id="head", num_gpus=8, is_head=True),)
    ref = DeploymentPlacementActor.start(topology=topology, ignore_head_node=False)
    assert place(ref, local("one", gpus=2)).assignments[0].node == "head"


def test_the_last_failure_of_a_deployment_can_be_asked_for_and_is_forgotten_on_success(
    actor: Ref,
) -> None:
    with pytest.raises(NotEnoughGpusError):
        actor.ask(Place(local("big", gpus=16)), timeout=TIMEOUT)
    failure = actor.ask(GetPlacementFailure("big"), timeout=TIMEOUT)
    assert isinstance(failure, PlacementFailure)
    assert isinstance(failure.error, NotEnoughGpusError)
    assert {r.node_id for r in failure.error.rejections} >= {"gpu-a", "gpu-b", "gpu-c"}
    place(actor, local("big", gpus=8))
    assert actor.ask(GetPlacementFailure("big"), timeout=TIMEOUT) == PlacementFailure(
        deployment="big", error=None
    )


def failure_of(actor: Ref, name: str) -> CapacityError | None:
    failure = actor.ask(GetPlacementFailure(name), timeout=TIMEOUT)
    assert isinstance(failure, PlacementFailure)
    return failure.error


@pytest.mark.parametrize("sent", ["asked", "told", "in a batch"])
def test_a_kept_refusal_holds_no_frames_of_the_message_that_brought_it(
    actor: Ref, sent: str
) -> None:
    refused = Place(local("big", gpus=16))
    if sent == "asked":
        with pytest.raises(NotEnoughGpusError):
            actor.ask(refused, timeout=TIMEOUT)
    elif sent == "told":
        actor.tell(refused)
    else:
        actor.ask(PlaceMany((refused, Place(local("small")))), timeout=TIMEOUT)
    error = failure_of(actor, "big")
    assert isinstance(error, NotEnoughGpusError)
    assert error.__traceback__ is None  # its frames would keep the whole message alive


class Gone(pykka.ThreadingActor):
    """A planner that has stopped."""


def test_a_batchs_errors_carry_no_frames_down_their_causes() -> None:
    planner = Gone.start()
    planner.stop()  # each Place is a BackendError, caused by pykka's ActorDeadError
    ref = DeploymentPlacementActor.start(topology=TOPOLOGY, planner=planner)
    try:
        reply = ref.ask(PlaceMany((Place(local("a")), Place(local("b")))), timeout=TIMEOUT)
        assert isinstance(reply, PlacedMany)
        for outcome in reply.outcomes:
            assert isinstance(outcome, BackendError)
            chain: list[BaseException] = []
            error: BaseException | None = outcome
            while error is not None and len(chain) < 10:
                chain.append(error)
                error = error.__cause__ or error.__context__
            assert len(chain) > 1  # the cause is kept, for whoever debugs it ...
            assert all(e.__traceback__ is None for e in chain)  # ... but not the batch's frames
    finally:
        ref.stop(timeout=TIMEOUT)


def test_failures_are_kept_for_the_latest_refused_deployments_only(actor: Ref) -> None:
    names = [f"refused-{i}" for i in range(MAX_FAILURES_KEPT + 1)]
    for name in names:  # as a controller that tries ever new names
        with pytest.raises(NotEnoughGpusError):
            actor.ask(Place(local(name, gpus=16)), timeout=TIMEOUT)
    with pytest.raises(NotEnoughGpusError):  # refused again: now the latest
        actor.ask(Place(local(names[1], gpus=16)), timeout=TIMEOUT)
    with pytest.raises(NotEnoughGpusError):
        actor.ask(Place(local("one-more", gpus=16)), timeout=TIMEOUT)
    kept = {name: failure_of(actor, name) is not None for name in (*names, "one-more")}
    assert sum(kept.values()) == MAX_FAILURES_KEPT
    assert not kept[names[0]]  # the oldest went first, then the oldest not refused since
    assert not kept[names[2]]
    assert kept[names[1]]
    assert kept["one-more"]


def test_gpus_held_by_an_earlier_run_are_reserved_until_released() -> None:
    held = {"old": (NodeAssignment(replica_index=0, node="gpu-a", gpus=(0, 1, 2)),)}
    ref = DeploymentPlacementActor.start(topology=TOPOLOGY, held=held)
    assert held_gpus(ref)["gpu-a"] == {0: "old", 1: "old", 2: "old"}
    assert cluster_view(ref).deployments == ("old",)
    with pytest.raises(InvalidSpecError, match="earlier run"):
        ref.ask(Place(local("old")), timeout=TIMEOUT)
    released = ref.ask(Release("old"), timeout=TIMEOUT)
    assert released == Released(deployment="old", was_placed=True, gpus_freed=3, replicas_freed=1)
    assert place(ref, local("old", gpus=4), gpu_nodes=("gpu-a",)).total_gpus() == 4


def test_held_gpus_the_ledger_cannot_match_are_skipped() -> None:
    held = {"ghost": (NodeAssignment(replica_index=0, node="gone", gpus=(0,)),)}
    ref = DeploymentPlacementActor.start(topology=TOPOLOGY, held=held)
    assert cluster_view(ref).deployments == ()


# -- many at once ---------------------------------------------------------------------------------


def test_place_many_decides_each_place_in_order_as_if_sent_alone(actor: Ref) -> None:
    batch = PlaceMany(
        (
            Place(local("first", gpus=4)),
            Place(local("too-big", gpus=64)),  # refused on its own; the others stand
            Place(remote("api")),
            Place(local("first", gpus=4)),  # the same Place again: the same result
        )
    )
    reply = actor.ask(batch, timeout=TIMEOUT)
    assert isinstance(reply, PlacedMany)
    first, refused, api, again = reply.outcomes
    assert isinstance(first, PlacementResult)
    assert isinstance(refused, NotEnoughGpusError)
    assert isinstance(api, PlacementResult)
    assert again == first
    assert [r.deployment.name for r in reply.results] == ["first", "api", "first"]
    assert cluster_view(actor).deployments == ("api", "first")


@pytest.mark.parametrize(
    "places", [(), ("not a Place",), tuple(Place(local("x")) for _ in range(1001))]
)
def test_a_malformed_batch_is_refused_whole(actor: Ref, places: tuple[object, ...]) -> None:
    batch = object.__new__(PlaceMany)
    object.__setattr__(batch, "places", places)  # built around the constructor's checks
    with pytest.raises(InvalidSpecError, match="PlaceMany"):
        actor.ask(batch, timeout=TIMEOUT)
    assert cluster_view(actor).deployments == ()


def test_a_batch_asking_for_more_remote_replicas_than_ten_deployments_at_the_limit_is_refused() -> (
    None
):
    ref = DeploymentPlacementActor.start(
        topology=TOPOLOGY, egress_nodes=EGRESS, max_remote_replicas=10
    )
    try:
        over = PlaceMany(tuple(Place(remote(f"api-{i}", replicas=10)) for i in range(11)))
        with pytest.raises(InvalidSpecError, match="110 remote replicas"):
            ref.ask(over, timeout=TIMEOUT)  # refused before any is decided
        assert cluster_view(ref).deployments == ()
        beyond = Place(remote("beyond", replicas=11))  # refused on its own: not counted
        at = PlaceMany((*over.places[:10], beyond))
        reply = ref.ask(at, timeout=TIMEOUT)
        assert isinstance(reply, PlacedMany)
        assert isinstance(reply.outcomes[-1], InvalidSpecError)
        assert len(reply.results) == 10
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_largest_first_batch_naming_a_deployment_twice_is_refused() -> None:
    place = Place(local("twice", gpus=1))
    with pytest.raises(InvalidSpecError, match="each deployment once"):
        PlaceMany((place, Place(local("twice", gpus=2))), largest_first=True)
    assert len(PlaceMany((place, place)).places) == 2  # in order, a repeat is answered as sent


def forged_selector(entries: object) -> LabelSelector:
    selector = object.__new__(LabelSelector)
    if entries is not None:
        object.__setattr__(selector, "_entries", entries)
    return selector


@pytest.mark.parametrize(
    "selector",
    [
        forged_selector(None),
        forged_selector("ab"),
        forged_selector(["abc"]),
        forged_selector({"zone": "in("}),
    ],
    ids=["no-entries", "a-string", "a-list", "malformed-entry"],
)
def test_a_forged_selector_inside_a_place_is_refused_and_the_actor_keeps_serving(
    actor: Ref, selector: LabelSelector
) -> None:
    constraints = PlacementConstraints()
    object.__setattr__(constraints, "label_selector", selector)  # past every constructor
    with pytest.raises(InvalidSpecError) as caught:
        actor.ask(Place(local("forged"), constraints), timeout=TIMEOUT)
    assert caught.value.field == "label_selector"
    view = actor.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    assert view.deployments == ()


def test_a_selector_written_another_way_is_the_same_place() -> None:
    topology = [NodeTopology(node_id=n, num_gpus=4, labels={"zone": n}) for n in ("a", "b", "c")]
    ref = DeploymentPlacementActor.start(topology=topology)
    try:
        first = ref.ask(
            Place(local("z", replicas=2), PlacementConstraints(label_selector={"zone": "in(b,a)"})),
            timeout=TIMEOUT,
        )
        again = ref.ask(
            Place(local("z", replicas=2), PlacementConstraints(label_selector={"zone": "in(a,b)"})),
            timeout=TIMEOUT,
        )
        assert again == first  # not "already placed with a different spec"
        assert isinstance(first, PlacementResult)
        assert {a.node for a in first.assignments} <= {"a", "b"}
    finally:
        ref.stop(timeout=TIMEOUT)


def test_the_cluster_view_shows_each_nodes_labels_egress_nodes_included() -> None:
    ref = DeploymentPlacementActor.start(
        topology=[NodeTopology(node_id="g", num_gpus=4, labels={"zone": "a"})],
        egress_nodes=[NodeTopology(node_id="e", num_gpus=0, labels={"zone": "b"}), "bare"],
    )
    try:
        view = ref.ask(GetClusterView(), timeout=TIMEOUT)
        assert isinstance(view, ClusterView)
        assert {n.node_id: dict(n.labels) for n in view.nodes} == {
            "bare": {},
            "e": {"zone": "b"},
            "g": {"zone": "a"},
        }
        assert pickle.loads(pickle.dumps(view)) == view  # noqa: S301 - our own bytes
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_service_told_whom_to_tell_when_it_stops_tells_once_after_its_planner_stopped() -> None:
    order: list[str] = []

    class Planner(pykka.ThreadingActor):
        def on_stop(self) -> None:
            order.append("planner stopped")

    ref = DeploymentPlacementActor.start(
        topology=TOPOLOGY,
        planner=Planner.start(),
        stops_planner=True,
        on_stopped=lambda: order.append("told"),
    )
    ref.stop()
    assert order == ["planner stopped", "told"]


def test_a_planner_that_does_not_stop_in_time_is_said_so_and_the_service_stops_anyway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    busy = threading.Event()

    class Planner(pykka.ThreadingActor):
        def on_receive(self, message: object) -> None:
            del message
            busy.wait(10)  # a call to Ray that does not return yet

    planner = Planner.start()
    planner.tell("a call to Ray")
    told: list[str] = []
    ref = DeploymentPlacementActor.start(
        topology=TOPOLOGY,
        planner=planner,
        stops_planner=True,
        planner_timeout_s=0.2,
        on_stopped=lambda: told.append("told"),
    )
    with caplog.at_level(logging.WARNING):
        ref.stop(timeout=10)
    busy.set()
    assert told == ["told"]
    assert "the planner did not stop within 0.2s" in caplog.text


class BusyPlanner(KeepServingActor):
    """Stands in for a planner: holds on "hold" until let go, and logs what it handles."""

    def __init__(self, log: list[str], holding: threading.Event, go: threading.Event) -> None:
        super().__init__()
        self.log, self.holding, self.go = log, holding, go
        self._handlers = {str: self.handle}

    def handle(self, message: str) -> str:
        if message == "hold":
            self.holding.set()
            assert self.go.wait(TIMEOUT)
        self.log.append(message)
        return message


def test_a_service_stopped_ahead_of_its_mailbox_stops_its_planner_the_same_way() -> None:
    log: list[str] = []
    holding, go = threading.Event(), threading.Event()
    planner = BusyPlanner.start(log, holding, go)
    service = DeploymentPlacementActor.start(
        topology=[NodeTopology(node_id="gpu-a", num_gpus=8)],
        planner=planner,
        stops_planner=True,
    )
    in_hand = planner.ask("hold", block=False)
    assert holding.wait(TIMEOUT)
    queued = planner.ask("queued on Ray's side", block=False)
    threading.Timer(0.2, go.set).start()
    stop_first(service, "stepped down").get(timeout=TIMEOUT)
    assert in_hand.get(timeout=TIMEOUT) == "hold"
    with pytest.raises(pykka.ActorDeadError, match="stepped down"):
        queued.get(timeout=TIMEOUT)
    assert log == ["hold"]
    assert not planner.is_alive()
