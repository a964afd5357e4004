"""`MoveReplica` carries out a move set or a defragmentation plan; a bad move changes nothing."""

import pickle
import queue
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from placement_actors import (
    ApiKey,
    ClusterView,
    DefragmentationPlan,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    GetDefragmentationPlan,
    GpuStrategy,
    InvalidSpecError,
    MoveReplica,
    NodeTopology,
    NotEnoughGpusError,
    Place,
    PlacedMany,
    PlaceMany,
    PlacementConstraints,
    PlacementResult,
    ReplicaMove,
    ReplicaMoved,
    StalePlacementError,
)
from placement_actors.actors.messages import GetPlacement, NodeLost, Placement, Subscribe

TIMEOUT = 5
Ref = pykka.ActorRef[DeploymentPlacementActor]


class Listener(pykka.ThreadingActor):
    """A subscriber that queues every event it is told."""

    def __init__(self, events: "queue.Queue[object]") -> None:
        super().__init__()
        self.events = events

    def on_receive(self, message: Any) -> None:
        self.events.put(message)


@pytest.fixture
def actor() -> Iterator[Ref]:
    topology = [
        NodeTopology(node_id=f"gpu-{c}", num_gpus=4, labels={"zone": "east" if c < "c" else "west"})
        for c in "abcd"
    ]
    topology.append(NodeTopology(node_id="head", num_gpus=4, is_head=True))
    ref = DeploymentPlacementActor.start(
        topology=topology, egress_nodes=("gpu-a",), ignore_head_node=True
    )
    yield ref
    ref.stop(timeout=TIMEOUT)


def place(actor: Ref, name: str, gpus: int, replicas: int = 1, **constraints: Any) -> None:
    deployment = Deployment(name=name, model="meta-llama/x", gpus=gpus, replicas=replicas)
    result = actor.ask(Place(deployment, PlacementConstraints(**constraints)), timeout=TIMEOUT)
    assert isinstance(result, PlacementResult)


def where(actor: Ref, name: str) -> dict[int, list[tuple[str, tuple[int, ...]]]]:
    """Replica index -> [(node, GPU ordinals)] of a placed deployment, as the actor says now."""
    found = actor.ask(GetPlacement(name), timeout=TIMEOUT)
    assert isinstance(found, Placement)
    assert found.result is not None
    replicas: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
    for a in found.result.assignments:
        replicas.setdefault(a.replica_index, []).append((a.node, a.gpus))
    return replicas


def view(actor: Ref) -> ClusterView:
    found = actor.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(found, ClusterView)
    return found


def free(actor: Ref) -> dict[str, int]:
    return {n.node_id: len(n.free_gpus) for n in view(actor).nodes}


def scatter(actor: Ref) -> None:
    """Two GPUs held on each of gpu-a, gpu-b, gpu-c and gpu-d: no node with 4 free."""
    for name in ("a", "b", "c", "d"):
        place(actor, name, 2, strategy=GpuStrategy.SPREAD)


def test_a_refusals_move_set_carried_out_makes_the_refused_place_fit(actor: Ref) -> None:
    scatter(actor)
    with pytest.raises(NotEnoughGpusError) as caught:
        place(actor, "wide", 4, keep_whole=True)
    assert caught.value.moves
    for move in caught.value.moves:
        moved = actor.ask(MoveReplica.of(move), timeout=TIMEOUT)
        assert isinstance(moved, ReplicaMoved)
        assert (moved.from_node, moved.to_node) == (move.from_node, move.to_node)
        assert [a.node for a in moved.assignments] == [move.to_node]
        assert where(actor, move.deployment)[move.replica_index][0][0] == move.to_node
    place(actor, "wide", 4, keep_whole=True)
    assert len(where(actor, "wide")[0]) == 1  # whole, on the node the move emptied


def test_a_pinned_place_refused_on_its_full_node_is_told_which_replica_to_move_off_it(
    actor: Ref,
) -> None:
    place(actor, "neighbour", 2)  # on gpu-a (ties go by node id); may go to any node
    place(actor, "pinned", 1, gpu_nodes=("gpu-a",))
    place(actor, "elsewhere", 3, gpu_nodes=("gpu-b", "gpu-c", "gpu-d"))  # sure to leave room
    with pytest.raises(NotEnoughGpusError) as caught:
        place(actor, "wide", 3, gpu_nodes=("gpu-a",))  # 1 free on gpu-a
    assert [(m.deployment, m.from_node) for m in caught.value.moves] == [("neighbour", "gpu-a")]
    for move in caught.value.moves:
        assert isinstance(actor.ask(MoveReplica.of(move), timeout=TIMEOUT), ReplicaMoved)
    place(actor, "wide", 3, gpu_nodes=("gpu-a",))
    assert where(actor, "wide")[0][0][0] == "gpu-a"


def test_a_defragmentation_plan_carried_out_frees_the_nodes_it_names(actor: Ref) -> None:
    scatter(actor)
    plan = actor.ask(GetDefragmentationPlan(gpus=4), timeout=TIMEOUT)
    assert isinstance(plan, DefragmentationPlan)
    assert plan.freed_nodes
    for move in plan.moves:
        actor.ask(MoveReplica.of(move), timeout=TIMEOUT)
    after = free(actor)
    assert all(after[node] == 4 for node in plan.freed_nodes)
    assert sum(after.values()) == 5 * 4 - 4 * 2  # nothing gained, nothing lost


def test_a_move_takes_the_gpus_on_the_new_node_and_gives_back_the_old_ones(actor: Ref) -> None:
    place(actor, "pair", 2, replicas=2, gpu_nodes=("gpu-a", "gpu-d"))  # both on gpu-a
    before = where(actor, "pair")
    moved = actor.ask(MoveReplica("pair", 1, "gpu-d"), timeout=TIMEOUT)
    assert isinstance(moved, ReplicaMoved)
    assert moved.from_node == "gpu-a"
    after = where(actor, "pair")
    assert after[0] == before[0]  # the other replica stays where it was
    assert after[1] == [("gpu-d", (0, 1))]
    holders = {n.node_id: {h.deployment for h in n.held} for n in view(actor).nodes}
    assert holders["gpu-d"] == {"pair"}
    assert free(actor)["gpu-a"] == 2  # replica 1's two GPUs came back


def test_subscribers_are_told_each_move(actor: Ref) -> None:
    events: queue.Queue[object] = queue.Queue()
    listener = Listener.start(events)
    try:
        actor.ask(Subscribe(listener), timeout=TIMEOUT)
        place(actor, "told", 1, gpu_nodes=("gpu-a", "gpu-b"))
        reply = actor.ask(MoveReplica("told", 0, "gpu-b"), timeout=TIMEOUT)
        assert events.get(timeout=TIMEOUT) == reply
    finally:
        listener.stop()


def test_a_move_sent_again_after_it_was_carried_out_is_answered_as_done_and_moves_nothing(
    actor: Ref,
) -> None:
    events: queue.Queue[object] = queue.Queue()
    listener = Listener.start(events)
    try:
        actor.ask(Subscribe(listener), timeout=TIMEOUT)
        place(actor, "twice", 1, gpu_nodes=("gpu-a", "gpu-b"))  # on gpu-a
        move = MoveReplica("twice", 0, "gpu-b", from_node="gpu-a", gpus=1)
        done = actor.ask(move, timeout=TIMEOUT)
        assert events.get(timeout=TIMEOUT) == done
        after = view(actor)
        assert actor.ask(move, timeout=TIMEOUT) == done  # as a restarted host receives it
        assert view(actor) == after
        listener.ask("flush", timeout=TIMEOUT)  # behind anything the second move told it
        assert events.get(timeout=TIMEOUT) == "flush"  # nobody was told of a move not made
        with pytest.raises(StalePlacementError):  # a move that is not the one carried out
            actor.ask(MoveReplica("twice", 0, "gpu-b", from_node="gpu-a", gpus=2), timeout=TIMEOUT)
    finally:
        listener.stop()


def test_a_move_to_where_the_replica_is_not_allowed_is_refused_and_changes_nothing(
    actor: Ref,
) -> None:
    place(actor, "east", 1, label_selector={"zone": "east"})  # gpu-a or gpu-b
    place(actor, "pinned", 1, gpu_nodes=("gpu-a", "gpu-b"))
    place(actor, "split", 8)  # over two nodes
    actor.ask(
        Place(Deployment(name="api", model="gpt-4o", api_key=ApiKey("sk-test"))), timeout=TIMEOUT
    )
    ((east_node, _),) = where(actor, "east")[0]
    before = view(actor)
    bad = [
        (MoveReplica("nobody", 0, "gpu-c"), "not placed"),
        (MoveReplica("api", 0, "gpu-c"), "remote provider"),
        (MoveReplica("east", 1, "gpu-c"), "no replica 1"),
        (MoveReplica("split", 0, "gpu-c"), "split over 2 nodes"),
        (MoveReplica("east", 0, east_node), "already"),
        (MoveReplica("east", 0, "gpu-z"), "not a GPU node"),
        (MoveReplica("pinned", 0, "head"), "head node"),
        (MoveReplica("east", 0, "gpu-d"), "constraints do not allow"),
        (MoveReplica("pinned", 0, "gpu-c"), "constraints do not allow"),
        (MoveReplica("east", 0, "gpu-b", from_node="gpu-d"), "stale"),
        (MoveReplica("east", 0, "gpu-b", gpus=2), "stale"),
    ]
    for message, why in bad:
        stale = why == "stale"  # the replica moved since: a typed error of its own
        with pytest.raises(StalePlacementError if stale else InvalidSpecError, match=why) as e:
            actor.ask(message, timeout=TIMEOUT)
        assert isinstance(e.value, StalePlacementError) == stale
    assert view(actor) == before


def test_a_move_to_a_node_without_room_is_a_retryable_refusal(actor: Ref) -> None:
    place(actor, "big", 4, gpu_nodes=("gpu-a", "gpu-b"))  # on gpu-a
    place(actor, "filler", 3, gpu_nodes=("gpu-b",))
    before = view(actor)
    with pytest.raises(NotEnoughGpusError, match="gpu-b, which has 1") as caught:
        actor.ask(MoveReplica("big", 0, "gpu-b"), timeout=TIMEOUT)
    assert caught.value.retryable
    assert [r.node_id for r in caught.value.rejections] == ["gpu-b"]
    assert view(actor) == before


def test_a_move_is_checked_again_when_it_arrives_from_elsewhere(actor: Ref) -> None:
    place(actor, "m", 1, gpu_nodes=("gpu-a", "gpu-b"))  # on gpu-a
    forged = pickle.loads(pickle.dumps(MoveReplica("m", 0, "gpu-b")))  # noqa: S301 - own bytes
    object.__setattr__(forged, "replica_index", -1)
    with pytest.raises(InvalidSpecError, match="replica_index"):
        actor.ask(forged, timeout=TIMEOUT)
    object.__setattr__(forged, "replica_index", 0)
    object.__setattr__(forged, "gpus", 10**9)
    with pytest.raises(InvalidSpecError, match="gpus"):
        actor.ask(forged, timeout=TIMEOUT)
    assert where(actor, "m")[0][0][0] == "gpu-a"
    moved = actor.ask(MoveReplica("m", 0, "gpu-b"), timeout=TIMEOUT)  # still serving
    assert isinstance(moved, ReplicaMoved)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"deployment": 3}, "deployment"),
        ({"replica_index": True}, "replica_index"),
        ({"to_node": "x" * 10_000}, "to_node"),
        ({"from_node": b"gpu-a"}, "from_node"),
        ({"gpus": 0}, "gpus"),
    ],
)
def test_a_malformed_move_is_refused_by_its_constructor(fields: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"deployment": "d", "replica_index": 0, "to_node": "gpu-a", **fields}
    with pytest.raises(InvalidSpecError) as caught:
        MoveReplica(**values)
    assert caught.value.field == field


def test_a_move_of_replica_move_keeps_every_field() -> None:
    move = ReplicaMove(deployment="d", replica_index=2, gpus=4, from_node="a", to_node="b")
    assert MoveReplica.of(move) == MoveReplica(
        deployment="d", replica_index=2, to_node="b", from_node="a", gpus=4
    )


# -- movable deployments: the service makes room by itself ---------------------------------------


def small_nodes(count: int = 4) -> Ref:
    topology = [NodeTopology(node_id=f"n{i}", num_gpus=4) for i in range(count)]
    return DeploymentPlacementActor.start(topology=topology)


def test_a_place_refused_on_scattered_gpus_is_placed_after_moving_movable_replicas() -> None:
    actor = small_nodes(3)
    events: queue.Queue[object] = queue.Queue()
    listener = Listener.start(events)
    try:
        actor.ask(Subscribe(listener), timeout=TIMEOUT)
        for name in ("a", "b", "c"):  # 2 GPUs on each node: 6 free, no node with 4
            place(actor, name, 2, strategy=GpuStrategy.SPREAD, movable=True)
        before = {name: where(actor, name)[0][0][0] for name in ("a", "b", "c")}
        place(actor, "wide", 4, keep_whole=True)
        ((node, gpus),) = where(actor, "wide")[0]
        assert len(gpus) == 4
        moved = events.get(timeout=TIMEOUT)
        assert isinstance(moved, ReplicaMoved)
        assert moved.from_node == node  # the node it emptied is the one "wide" got
        assert where(actor, moved.deployment)[0][0][0] == moved.to_node != before[moved.deployment]
        assert sum(free(actor).values()) == 3 * 4 - 3 * 2 - 4
    finally:
        listener.stop()
        actor.stop(timeout=TIMEOUT)


def test_replicas_not_marked_movable_are_never_moved_by_the_service() -> None:
    actor = small_nodes(3)
    try:
        place(actor, "a", 2, strategy=GpuStrategy.SPREAD, movable=True)
        for name in ("b", "c"):
            place(actor, name, 2, strategy=GpuStrategy.SPREAD)
        before = {name: where(actor, name) for name in ("a", "b", "c")}
        place(actor, "wide", 4, keep_whole=True)
        assert where(actor, "b") == before["b"]
        assert where(actor, "c") == before["c"]
        (((was, _),), ((now, _),)) = before["a"][0], where(actor, "a")[0]
        assert now != was
        assert where(actor, "wide")[0][0][0] == was  # a's node, emptied by moving a alone
    finally:
        actor.stop(timeout=TIMEOUT)


def test_without_movable_replicas_a_refusal_only_names_the_moves() -> None:
    actor = small_nodes(3)
    try:
        for name in ("a", "b", "c"):
            place(actor, name, 2, strategy=GpuStrategy.SPREAD)
        before = view(actor)
        with pytest.raises(NotEnoughGpusError) as caught:
            place(actor, "wide", 4, keep_whole=True)
        assert caught.value.moves  # advice only
        assert view(actor) == before
    finally:
        actor.stop(timeout=TIMEOUT)


def test_when_no_two_moves_make_room_a_plan_of_more_moves_does() -> None:
    actor = small_nodes(4)
    try:
        for i in range(12):  # three 1-GPU replicas on each node: one GPU free on each
            place(actor, f"s{i}", 1, strategy=GpuStrategy.SPREAD, movable=True)
        assert set(free(actor).values()) == {1}
        place(actor, "wide", 4, keep_whole=True)  # three moves empty one node
        ((_, gpus),) = where(actor, "wide")[0]
        assert len(gpus) == 4
        assert free(actor) == dict.fromkeys(free(actor), 0)
    finally:
        actor.stop(timeout=TIMEOUT)


def test_no_replica_moves_when_moving_could_not_make_room() -> None:
    actor = small_nodes(2)
    try:
        for i in range(7):
            place(actor, f"s{i}", 1, movable=True)
        before = view(actor)
        with pytest.raises(NotEnoughGpusError):  # 1 GPU free in all: no move helps
            place(actor, "wide", 2, keep_whole=True)
        assert view(actor) == before
    finally:
        actor.stop(timeout=TIMEOUT)


def test_a_spread_deployments_replica_is_never_moved_onto_a_node_holding_another_of_its_own() -> (
    None
):
    actor = small_nodes(3)
    try:
        place(actor, "sp", 2, replicas=2, strategy=GpuStrategy.SPREAD)  # 2 GPUs on n0 and n1
        place(actor, "x", 2, gpu_nodes=("n2",))
        with pytest.raises(NotEnoughGpusError) as caught:
            place(actor, "wide", 4, keep_whole=True)
        spread_on = {node for held in where(actor, "sp").values() for node, _ in held}
        for move in caught.value.moves:
            if move.deployment == "sp":
                assert move.to_node not in spread_on
        assert caught.value.moves  # sp can still go to n2, which holds only x
        plan = actor.ask(GetDefragmentationPlan(gpus=4), timeout=TIMEOUT)
        assert isinstance(plan, DefragmentationPlan)
        assert all(m.to_node not in spread_on for m in plan.moves if m.deployment == "sp")
    finally:
        actor.stop(timeout=TIMEOUT)


def test_an_explicit_move_onto_a_node_holding_a_spread_sibling_is_refused() -> None:
    actor = small_nodes(3)
    try:
        place(actor, "sp", 1, replicas=2, strategy=GpuStrategy.SPREAD)  # n0 and n1
        (((other, _),),) = [where(actor, "sp")[1]]
        before = view(actor)
        with pytest.raises(InvalidSpecError, match="spread"):
            actor.ask(MoveReplica("sp", 0, other), timeout=TIMEOUT)
        assert view(actor) == before
    finally:
        actor.stop(timeout=TIMEOUT)


def test_making_room_never_moves_every_replica_of_a_deployment_nor_stacks_spread_ones() -> None:
    actor = small_nodes(4)
    try:
        place(actor, "f3", 4, gpu_nodes=("n3",))
        place(actor, "f2", 2, gpu_nodes=("n2",))
        spread = {"strategy": GpuStrategy.SPREAD, "gpu_nodes": ("n0", "n1", "n2")}
        place(actor, "s", 1, replicas=2, movable=True, **spread)  # one GPU on n0 and on n1
        before = view(actor)
        # Two whole nodes would need both replicas of s moved, both onto n2: neither is done.
        with pytest.raises(NotEnoughGpusError):
            place(actor, "big", 4, replicas=2, keep_whole=True)
        assert view(actor) == before
        place(actor, "one", 4, keep_whole=True)  # one replica of s moves: that is allowed
        assert sorted(node for held in where(actor, "s").values() for node, _ in held) in (
            ["n0", "n2"],
            ["n1", "n2"],
        )
    finally:
        actor.stop(timeout=TIMEOUT)


def test_a_batch_answers_each_result_as_it_is_after_the_moves_a_later_place_made() -> None:
    actor = small_nodes(3)
    try:
        small = PlacementConstraints(strategy=GpuStrategy.SPREAD, movable=True)
        wide = Place(
            Deployment(name="wide", model="m/x", gpus=4), PlacementConstraints(keep_whole=True)
        )
        places = (*(Place(Deployment(name=n, model="m/x", gpus=2), small) for n in "abc"), wide)
        batch = actor.ask(PlaceMany(places), timeout=TIMEOUT)
        assert isinstance(batch, PlacedMany)
        assert all(isinstance(o, PlacementResult) for o in batch.outcomes)
        for outcome in batch.outcomes:
            now = actor.ask(GetPlacement(outcome.deployment.name), timeout=TIMEOUT)  # type: ignore[union-attr]
            assert isinstance(now, Placement)
            assert now.result == outcome  # one of a, b, c moved for wide: its outcome says where
    finally:
        actor.stop(timeout=TIMEOUT)


def test_making_room_keeps_one_replica_of_each_deployment_serving() -> None:
    actor = small_nodes(3)
    try:
        place(actor, "pair", 2, replicas=2, movable=True)  # both replicas on n0 (best fit)
        place(actor, "x", 2, gpu_nodes=("n1",))
        place(actor, "y", 2, gpu_nodes=("n2",))
        assert [n for held in where(actor, "pair").values() for n, _ in held] == ["n0", "n0"]
        before = view(actor)
        # Emptying n0 would move both replicas of pair (one to n1, one to n2): never done.
        with pytest.raises(NotEnoughGpusError):
            place(actor, "wide", 4, keep_whole=True)
        assert view(actor) == before
    finally:
        actor.stop(timeout=TIMEOUT)


def test_a_replica_lost_with_its_node_is_placed_again_after_movable_replicas_make_room() -> None:
    actor = small_nodes(3)
    events: queue.Queue[object] = queue.Queue()
    listener = Listener.start(events)
    try:
        actor.ask(Subscribe(listener), timeout=TIMEOUT)
        place(actor, "big", 4, keep_whole=True)  # n0
        for name in ("a", "b"):  # 2 GPUs on each of n1 and n2
            place(actor, name, 2, strategy=GpuStrategy.SPREAD, movable=True)
        assert where(actor, "big")[0][0][0] == "n0"
        actor.ask(NodeLost(node_id="n0"), timeout=TIMEOUT)
        kinds = [type(events.get(timeout=TIMEOUT)).__name__ for _ in range(4)]
        assert kinds == ["NodeLost", "ReplicaLost", "ReplicaMoved", "ReplicaReplaced"]
        ((node, gpus),) = where(actor, "big")[0]
        assert (node, len(gpus)) in {("n1", 4), ("n2", 4)}
        assert view(actor).degraded == ()
    finally:
        listener.stop()
        actor.stop(timeout=TIMEOUT)


def test_a_plan_carried_out_move_by_move_is_not_undone_by_the_actor_moving_replicas_itself() -> (
    None
):
    spread, pack = GpuStrategy.SPREAD, GpuStrategy.PACK
    topology = [NodeTopology(node_id=f"n{i}", num_gpus=n) for i, n in enumerate((8, 8, 4, 8, 8, 8))]
    ref = DeploymentPlacementActor.start(topology=topology)
    try:
        for name, gpus, replicas, constraints in (
            ("d0", 1, 1, {"keep_whole": True, "strategy": pack}),
            ("d1", 4, 2, {"movable": True, "strategy": pack}),
            ("d2", 1, 1, {"strategy": spread}),
            ("d3", 1, 1, {"strategy": spread}),
            ("d4", 4, 1, {"keep_whole": True, "strategy": spread}),
            ("d5", 4, 2, {"movable": True, "strategy": pack}),
            ("d6", 2, 1, {"movable": True, "strategy": pack}),
            ("d7", 4, 2, {"keep_whole": True, "strategy": spread}),
            ("d8", 1, 1, {"keep_whole": True, "strategy": pack}),
            ("d9", 1, 1, {"keep_whole": True, "strategy": spread}),
            ("d10", 1, 1, {"movable": True, "strategy": spread}),
        ):
            place(ref, name, gpus, replicas, **constraints)
        ref.tell(NodeLost(node_id="n0"))
        assert view(ref).degraded == ("d1",)  # a replica lost, no room for it even by moving
        plan = ref.ask(GetDefragmentationPlan(gpus=4), timeout=TIMEOUT)
        assert isinstance(plan, DefragmentationPlan)
        assert len(plan.moves) == 2  # one GPU off each of two nodes, around a replica of d7
        for move in plan.moves:  # as `defrag --apply` does: each one as planned
            assert isinstance(ref.ask(MoveReplica.of(move), timeout=TIMEOUT), ReplicaMoved)
        assert view(ref).degraded == ()  # the lost replica took the room: lost ones come first
    finally:
        ref.stop(timeout=TIMEOUT)
