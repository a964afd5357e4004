"""Nodes that join and leave, told to a DeploymentPlacementActor as messages (no Ray)."""

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pykka
import pytest

from placement_actors import (
    ApiKey,
    BackendError,
    BundleEndpoint,
    BundleStrategy,
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    InvalidSpecError,
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
    ReplicaPlacement,
    group_name,
)
from placement_actors.actors.messages import (
    GetPlacement,
    GroupRescheduling,
    NodeJoined,
    NodeLost,
    NodeState,
    Placement,
    ReplicaLost,
    ReplicaReplaced,
    Subscribe,
    Unsubscribe,
)
from placement_actors.domain.results import Known
from placement_actors.policies.retries import RetryBackoff

TIMEOUT = 5
TOPOLOGY = (NodeTopology(node_id="a", num_gpus=4), NodeTopology(node_id="b", num_gpus=4))

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
    ref = DeploymentPlacementActor.start(topology=TOPOLOGY, egress_nodes=("e1", "e2"))
    yield ref
    ref.stop(timeout=TIMEOUT)


@pytest.fixture
def events(actor: Ref) -> Iterator["queue.Queue[object]"]:
    found: queue.Queue[object] = queue.Queue()
    listener = Listener.start(found)
    actor.ask(Subscribe(listener), timeout=TIMEOUT)
    yield found
    listener.stop()


def place(actor: Ref, deployment: Deployment, **constraints: object) -> PlacementResult:
    result = actor.ask(
        Place(deployment, PlacementConstraints(**constraints)),  # type: ignore[arg-type]
        timeout=TIMEOUT,
    )
    assert isinstance(result, PlacementResult)
    return result


def current(actor: Ref, name: str) -> Placement:
    found = actor.ask(GetPlacement(name), timeout=TIMEOUT)
    assert isinstance(found, Placement)
    return found


def view(actor: Ref) -> ClusterView:
    found = actor.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(found, ClusterView)
    return found


def next_event(events: "queue.Queue[object]") -> object:
    return events.get(timeout=TIMEOUT)


def local(name: str, *, gpus: int = 4, replicas: int = 1) -> Deployment:
    return Deployment(name=name, model="meta-llama/x", gpus=gpus, replicas=replicas)


def test_a_node_that_joins_makes_a_place_that_did_not_fit_fit(actor: Ref) -> None:
    with pytest.raises(NotEnoughGpusError):
        actor.ask(Place(local("big", gpus=16)), timeout=TIMEOUT)
    actor.tell(NodeJoined(node=NodeTopology(node_id="c", num_gpus=16)))
    result = place(actor, local("big", gpus=16))
    assert [a.node for a in result.assignments] == ["c"]


def test_a_lost_node_is_reported_and_its_replica_placed_again_elsewhere(
    actor: Ref, events: "queue.Queue[object]"
) -> None:
    first = place(actor, local("llama"))
    lost_node = first.assignments[0].node
    actor.tell(NodeLost(node_id=lost_node))
    assert next_event(events) == NodeLost(node_id=lost_node)
    assert next_event(events) == ReplicaLost(
        deployment="llama", replica_index=0, node_id=lost_node, will_replace=True
    )
    replaced = next_event(events)
    assert isinstance(replaced, ReplicaReplaced)
    survivor = ({"a", "b"} - {lost_node}).pop()
    assert [a.node for a in replaced.assignments] == [survivor]
    now = current(actor, "llama")
    assert now.result is not None
    assert [a.node for a in now.result.assignments] == [survivor]
    assert now.missing == ()
    states = {n.node_id: n.state for n in view(actor).nodes}
    assert states[lost_node] is NodeState.LOST


def test_a_replica_that_fits_nowhere_leaves_its_deployment_degraded_until_a_node_joins(
    actor: Ref, events: "queue.Queue[object]"
) -> None:
    place(actor, local("one"))
    place(actor, local("two"))
    actor.tell(NodeLost(node_id="a"))
    assert isinstance(next_event(events), NodeLost)
    assert isinstance(next_event(events), ReplicaLost)
    lost_name = next(name for name in ("one", "two") if current(actor, name).missing)
    assert view(actor).degraded == (lost_name,)
    actor.tell(NodeJoined(node=NodeTopology(node_id="c", num_gpus=4)))
    assert isinstance(next_event(events), NodeJoined)
    replaced = next_event(events)
    assert isinstance(replaced, ReplicaReplaced)
    assert replaced.deployment == lost_name
    assert view(actor).degraded == ()


def test_a_release_gives_a_degraded_deployment_the_capacity_it_frees(
    actor: Ref, events: "queue.Queue[object]"
) -> None:
    place(actor, local("one"))
    place(actor, local("two"))
    actor.tell(NodeLost(node_id="a"))
    lost_name = next(name for name in ("one", "two") if current(actor, name).missing)
    other = ({"one", "two"} - {lost_name}).pop()
    actor.ask(Release(other), timeout=TIMEOUT)
    assert current(actor, lost_name).missing == ()
    assert view(actor).degraded == ()
    del events


def test_a_place_can_turn_replacement_off(actor: Ref, events: "queue.Queue[object]") -> None:
    first = place(actor, local("pinned"), replace_lost=False)
    actor.tell(NodeLost(node_id=first.assignments[0].node))
    assert isinstance(next_event(events), NodeLost)
    lost = next_event(events)
    assert isinstance(lost, ReplicaLost)
    assert not lost.will_replace
    assert current(actor, "pinned").missing == (0,)
    assert view(actor).degraded == ("pinned",)


def test_a_lost_node_frees_what_a_split_replica_held_on_the_others(actor: Ref) -> None:
    place(actor, local("split", gpus=8))  # 4 on a + 4 on b
    actor.tell(NodeLost(node_id="a"))
    nodes = {n.node_id: n for n in view(actor).nodes}
    assert len(nodes["b"].free_gpus) == 4  # b's half was given back; nothing holds 8 any more
    assert current(actor, "split").missing == (0,)


def test_remote_replicas_on_a_lost_egress_node_move_to_another(
    actor: Ref, events: "queue.Queue[object]"
) -> None:
    result = place(actor, Deployment(name="api", model="gpt-4o", replicas=2))
    assert sorted(a.node for a in result.assignments) == ["e1", "e2"]
    actor.tell(NodeLost(node_id="e1"))
    assert isinstance(next_event(events), NodeLost)
    assert isinstance(next_event(events), ReplicaLost)
    replaced = next_event(events)
    assert isinstance(replaced, ReplicaReplaced)
    assert [a.node for a in replaced.assignments] == ["e2"]
    now = current(actor, "api").result
    assert now is not None
    assert sorted(a.replica_index for a in now.assignments) == [0, 1]


def test_a_stray_rescheduling_event_or_a_repeated_loss_changes_nothing(actor: Ref) -> None:
    place(actor, local("llama"))
    before = view(actor)
    actor.tell(GroupRescheduling(group_name="placement-actors:nobody:r0", group_id="ab"))
    actor.tell(GroupRescheduling(group_name="not-ours", group_id="cd"))
    actor.tell(NodeLost(node_id="never-known"))
    assert view(actor) == before


def test_an_unsubscribed_listener_hears_nothing_more(
    actor: Ref, events: "queue.Queue[object]"
) -> None:
    listener = Listener.start(events)
    actor.ask(Subscribe(listener), timeout=TIMEOUT)
    actor.ask(Unsubscribe(listener), timeout=TIMEOUT)
    actor.tell(NodeJoined(node=NodeTopology(node_id="c", num_gpus=1)))
    assert isinstance(next_event(events), NodeJoined)  # the fixture's listener only
    with pytest.raises(queue.Empty):
        events.get(timeout=0.2)
    listener.stop()


def test_a_subscriber_ref_that_was_never_made_by_pykka_is_refused(actor: Ref) -> None:
    forged = object.__new__(pykka.ActorRef)  # as unpickled from a crafted message
    with pytest.raises(InvalidSpecError, match="subscriber"):
        actor.ask(Subscribe(forged), timeout=TIMEOUT)


class BrokenRef(pykka.ActorRef[Any]):
    """A subscriber whose every tell fails with something other than a dead actor."""

    def tell(self, message: Any) -> None:
        msg = f"cannot take {type(message).__name__}"
        raise RuntimeError(msg)


def test_a_subscriber_that_fails_to_be_told_is_dropped_and_the_loss_is_carried_out(
    actor: Ref, events: "queue.Queue[object]"
) -> None:
    broken = Listener.start(queue.Queue())
    broken.__class__ = BrokenRef
    actor.ask(Subscribe(broken), timeout=TIMEOUT)
    first = place(actor, local("llama"))
    lost_node = first.assignments[0].node
    actor.tell(NodeLost(node_id=lost_node))
    assert next_event(events) == NodeLost(node_id=lost_node)  # the others are still told
    assert isinstance(next_event(events), ReplicaLost)
    assert isinstance(next_event(events), ReplicaReplaced)
    now = current(actor, "llama").result
    assert now is not None
    assert lost_node not in {a.node for a in now.assignments}  # the loss was carried out
    actor.tell(NodeJoined(node=NodeTopology(node_id=lost_node, num_gpus=4)))
    assert next_event(events) == NodeJoined(node=NodeTopology(node_id=lost_node, num_gpus=4))
    broken.__class__ = pykka.ActorRef
    broken.stop()


class Planner(pykka.ThreadingActor):
    """Plans every replica at once; refuses removals while ``refusing`` is set (Ray down)."""

    def __init__(
        self,
        refusing: threading.Event,
        removed: "queue.Queue[str] | None" = None,
        broken: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.refusing = refusing
        self.removed = removed  # where each removal carried out is told, by deployment
        self.broken = broken  # set: the next removal fails with an error no one expects
        self.attempts = itertools.count(1)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RemoveReplicaGroups):
            if self.broken is not None and self.broken.is_set():
                self.broken.clear()
                msg = "a bug in the planner (injected)"
                raise RuntimeError(msg)
            if self.refusing.is_set():
                msg = "Ray is down (injected)"
                raise BackendError(msg, operation="remove placement group")
            if self.removed is not None:
                self.removed.put(message.deployment)
            return ReplicaGroupsRemoved(deployment=message.deployment, removed=1)
        assert isinstance(message, PlanReplica)
        attempt = next(self.attempts)
        return ReplicaPlacement(
            deployment=message.deployment,
            replica_index=message.replica_index,
            group_name=group_name(message.deployment, message.replica_index),
            spec=ReplicaBundleSpec(
                bundles=tuple({"GPU": len(a.gpus)} for a in message.assignments),
                strategy=BundleStrategy.STRICT_PACK,
                nnodes=1,
                per_node_gpus=len(message.assignments[0].gpus),
            ),
            bundles=tuple(
                BundleEndpoint(node=a.node, node_ip=Known("10.0.0.1"), port=Known(9000))
                for a in message.assignments
            ),
            attempt=attempt,
            group_id=f"group-{attempt}",
        )


def held_by(actor: Ref, node: str) -> list[str]:
    return [h.deployment for h in view(actor).node(node).held]


@pytest.mark.parametrize("how", ["its node lost", "its group failed"])
def test_a_node_back_under_its_id_keeps_the_gpus_of_groups_ray_has_not_removed_yet(
    how: str,
) -> None:
    refusing = threading.Event()
    planner = Planner.start(refusing)
    actor = DeploymentPlacementActor.start(topology=TOPOLOGY, planner=planner)
    try:
        x = place(actor, local("x"), gpu_nodes=("a",))
        refusing.set()  # Ray will not remove x's group: it stands, and holds a's GPUs
        if how == "its node lost":
            actor.tell(NodeLost(node_id="a"))  # x's loss waits for Ray
        else:
            actor.tell(
                ReplicaFailed(
                    deployment="x",
                    replica_index=0,
                    group_name=x.replicas[0].group_name,
                    attempt=x.replicas[0].attempt,
                    error=BackendError("failed (injected)", operation="create placement group"),
                    group_removed=False,
                )
            )
            actor.tell(NodeLost(node_id="a"))
        # Ray shows x's standing group's 4 GPUs in use there: the service's own, not others'.
        actor.tell(NodeJoined(node=NodeTopology(node_id="a", num_gpus=4), in_use=4))
        assert held_by(actor, "a") == ["x"] * 4  # not offered to another deployment
        with pytest.raises(NotEnoughGpusError):
            actor.ask(Place(local("y"), PlacementConstraints(gpu_nodes=("a",))), timeout=TIMEOUT)
        refusing.clear()  # Ray is back: the next message carries the removal out
        assert isinstance(view(actor), ClusterView)  # not "x does not hold GPUs ..."
        actor.ask(Release("x"), timeout=TIMEOUT)
        assert held_by(actor, "a") == []
        assert (view(actor).node("a").outside, len(view(actor).node("a").free_gpus)) == (0, 4)
        assert view(actor).deployments == ()
    finally:
        actor.stop(timeout=TIMEOUT)
        planner.stop()


def test_a_replica_pinned_to_a_list_of_nodes_moves_to_a_survivor_of_the_list(
    actor: Ref, events: "queue.Queue[object]"
) -> None:
    place(actor, local("listed", gpus=2), gpu_nodes=("a", "b"))
    first = current(actor, "listed").result
    assert first is not None
    lost_node = first.assignments[0].node
    actor.tell(NodeLost(node_id=lost_node))
    replaced = next(
        e for e in iter(lambda: next_event(events), None) if isinstance(e, ReplicaReplaced)
    )
    assert [a.node for a in replaced.assignments] == [({"a", "b"} - {lost_node}).pop()]
    # the same Place again is still the same deployment, though it names a node that is gone
    again = place(actor, local("listed", gpus=2), gpu_nodes=("a", "b"))
    assert again.assignments == replaced.assignments


def test_sending_the_same_place_again_places_what_was_lost(
    actor: Ref, events: "queue.Queue[object]"
) -> None:
    api = Deployment(name="api", model="gpt-4o", replicas=2)
    place(actor, api, replace_lost=False)
    actor.tell(NodeLost(node_id="e1"))
    assert isinstance(next_event(events), NodeLost)
    assert isinstance(next_event(events), ReplicaLost)
    assert current(actor, "api").missing != ()
    again = place(actor, api, replace_lost=False)
    assert sorted(a.replica_index for a in again.assignments) == [0, 1]
    assert {a.node for a in again.assignments} == {"e2"}
    assert view(actor).degraded == ()


def test_a_node_that_left_stays_shown_as_lost_when_another_joins() -> None:
    ref = DeploymentPlacementActor.start(
        topology=[NodeTopology(node_id="a", num_gpus=2), NodeTopology(node_id="b", num_gpus=2)]
    )
    ref.tell(NodeLost(node_id="a"))
    ref.tell(NodeJoined(node=NodeTopology(node_id="c", num_gpus=2), egress=False))
    view = ref.ask(GetClusterView())
    assert isinstance(view, ClusterView)
    assert {n.node_id: n.state for n in view.nodes} == {
        "a": NodeState.LOST,
        "b": NodeState.ALIVE,
        "c": NodeState.ALIVE,
    }


def test_a_replica_placed_by_labels_is_replaced_on_a_node_that_joins_with_those_labels() -> None:
    topology = (
        NodeTopology(node_id="a", num_gpus=4, labels={"zone": "east"}),
        NodeTopology(node_id="b", num_gpus=4, labels={"zone": "west"}),
    )
    ref = DeploymentPlacementActor.start(topology=topology)
    found: queue.Queue[object] = queue.Queue()
    listener = Listener.start(found)
    try:
        ref.ask(Subscribe(listener), timeout=TIMEOUT)
        first = place(ref, local("eastern"), label_selector={"zone": "east"})
        assert [a.node for a in first.assignments] == ["a"]
        ref.tell(NodeLost(node_id="a"))  # b has room, but is in the wrong zone
        assert isinstance(next_event(found), NodeLost)
        assert isinstance(next_event(found), ReplicaLost)
        assert view(ref).degraded == ("eastern",)
        ref.tell(NodeJoined(node=NodeTopology(node_id="c", num_gpus=4, labels={"zone": "east"})))
        assert isinstance(next_event(found), NodeJoined)
        replaced = next_event(found)
        assert isinstance(replaced, ReplicaReplaced)
        assert [a.node for a in replaced.assignments] == ["c"]
    finally:
        listener.stop()
        ref.stop(timeout=TIMEOUT)


def test_egress_nodes_without_gpus_are_picked_by_their_labels_also_after_they_rejoin() -> None:
    egress = NodeTopology(node_id="ea", num_gpus=0, labels={"zone": "a"})
    ref = DeploymentPlacementActor.start(
        topology=(NodeTopology(node_id="g", num_gpus=8, labels={"zone": "a"}),),
        egress_nodes=(egress, "eb"),  # eb: an id alone, so no labels known
    )
    api = Deployment(name="api", model="gpt-4o", api_key=ApiKey("sk-test"))
    zone_a = {"label_selector": {"zone": "a"}}
    try:
        assert [a.node for a in place(ref, api, **zone_a).assignments] == ["ea"]
        ref.ask(Release("api"), timeout=TIMEOUT)
        ref.tell(NodeLost(node_id="ea"))
        ref.tell(NodeJoined(node=egress, egress=True))
        ref.tell(NodeJoined(node=replace(egress, node_id="ec"), egress=True))
        chosen = place(ref, replace(api, replicas=2), **zone_a).assignments
        assert sorted(a.node for a in chosen) == ["ea", "ec"]
        ref.ask(Release("api"), timeout=TIMEOUT)
        outside_a = place(ref, api, label_selector={"zone": "!a"}).assignments
        assert [a.node for a in outside_a] == ["eb"]  # no labels: not "a"
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_node_loss_that_frees_room_places_another_degraded_deployment_again() -> None:
    three = tuple(NodeTopology(node_id=n, num_gpus=2) for n in ("a", "b", "c"))
    ref = DeploymentPlacementActor.start(topology=three)
    try:
        split = place(ref, local("split"))  # 4 GPUs: 2 + 2 over two of the nodes
        whole = place(ref, local("whole", gpus=2))  # the third node
        ref.ask(NodeLost(node_id=whole.assignments[0].node), timeout=TIMEOUT)
        assert current(ref, "whole").missing == (0,)  # nowhere to go: degraded
        survivor = split.assignments[1].node
        ref.ask(NodeLost(node_id=split.assignments[0].node), timeout=TIMEOUT)
        # The split replica cannot come back (4 GPUs, 2 left), but its GPUs on the node that
        # stayed are free again: the degraded deployment goes there.
        assert current(ref, "split").missing == (0,)
        again = current(ref, "whole")
        assert again.missing == ()
        assert again.result is not None
        assert [a.node for a in again.result.assignments] == [survivor]
    finally:
        ref.stop(timeout=TIMEOUT)


@pytest.mark.parametrize("index", ["²", "٣", "9" * 10, "-1", ""])
def test_a_rescheduling_event_with_a_strange_replica_index_is_ignored(
    actor: Ref, index: str
) -> None:
    place(actor, local("odd"))
    before = view(actor)
    actor.ask(
        GroupRescheduling(group_name=f"placement-actors:odd:r{index}", group_id="g"),
        timeout=TIMEOUT,
    )
    assert view(actor) == before


# -- trying again on a timer -------------------------------------------------------------------


def failed(result: PlacementResult, *, removed: bool = True) -> ReplicaFailed:
    """Ray's word that the latest group of ``result``'s replica 0 failed."""
    replica = result.replicas[0]
    return ReplicaFailed(
        deployment=result.deployment.name,
        replica_index=0,
        group_name=replica.group_name,
        attempt=replica.attempt,
        error=BackendError("failed (injected)", operation="create placement group"),
        group_removed=removed,
    )


def replaced(events: "queue.Queue[object]", wait_s: float = TIMEOUT) -> ReplicaReplaced:
    """The next `ReplicaReplaced` told (other events are passed over)."""
    while True:
        event = events.get(timeout=wait_s)
        if isinstance(event, ReplicaReplaced):
            return event


@pytest.fixture
def planner() -> Iterator[tuple[pykka.ActorRef[Planner], threading.Event]]:
    refusing = threading.Event()
    ref = Planner.start(refusing)
    yield ref, refusing
    ref.stop()


@contextlib.contextmanager
def retrying(
    planner: pykka.ActorRef[Planner], backoff: RetryBackoff | None
) -> Iterator[tuple[Ref, "queue.Queue[object]"]]:
    """A placement actor trying again after ``backoff``, and the events it tells; both stop."""
    actor = DeploymentPlacementActor.start(topology=TOPOLOGY, planner=planner, retry=backoff)
    found: queue.Queue[object] = queue.Queue()
    listener = Listener.start(found)
    try:
        actor.ask(Subscribe(listener), timeout=TIMEOUT)
        yield actor, found
    finally:
        actor.stop(timeout=TIMEOUT)
        listener.stop()


def test_a_replica_whose_group_failed_is_placed_again_after_its_backoff_with_no_message_sent(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    with retrying(planner[0], RetryBackoff(first_s=0.05, longest_s=0.1)) as (actor, events):
        first = place(actor, local("x"))
        actor.tell(failed(first))
        again = replaced(events)  # nothing else was sent: the actor's own timer did it
        assert again.deployment == "x"
        assert again.placement is not None
        assert again.placement.attempt > first.replicas[0].attempt
        assert view(actor).degraded == ()
        assert current(actor, "x").missing == ()


def test_a_replica_whose_group_failed_is_not_placed_again_at_once(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    with retrying(planner[0], RetryBackoff(first_s=60, longest_s=60)) as (actor, _):
        actor.tell(failed(place(actor, local("x"))))
        # Its group failed where the ledger had room: it waits out its backoff.
        assert view(actor).degraded == ("x",)
        assert current(actor, "x").missing == (0,)


def test_the_wait_before_each_try_doubles_while_the_replica_keeps_failing(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    backoff = RetryBackoff(first_s=0.05, longest_s=0.2)
    with retrying(planner[0], backoff) as (actor, events):
        result = place(actor, local("x"))
        waits = []
        for _ in range(4):
            told = time.monotonic()
            actor.tell(failed(result))
            placement = replaced(events).placement
            waits.append(time.monotonic() - told)
            assert placement is not None
            result = replace(result, replicas=(placement,))
        # A timer never rings early: each try came after its whole wait (0.05, 0.1, 0.2, 0.2).
        for failures, waited in enumerate(waits, start=1):
            assert waited >= backoff.delay_s(failures)


def test_a_removal_ray_refused_is_tried_again_with_no_message_sent(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    ref, refusing = planner
    with retrying(ref, RetryBackoff(first_s=0.05, longest_s=0.1)) as (actor, events):
        first = place(actor, local("x"), gpu_nodes=("a",))
        refusing.set()  # Ray will not remove the failed group: its GPUs stay held
        actor.tell(failed(first, removed=False))
        assert held_by(actor, "a") == ["x"] * 4
        refusing.clear()  # Ray is back; no client sends anything
        again = replaced(events)  # removed on the timer, then placed again on what it freed
        assert [a.node for a in again.assignments] == ["a"]
        assert view(actor).degraded == ()


def test_without_a_backoff_a_failed_replica_waits_for_a_message(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    with retrying(planner[0], None) as (actor, events):
        first = place(actor, local("x"))
        actor.tell(failed(first))
        with pytest.raises(queue.Empty):
            replaced(events, wait_s=0.5)
        assert current(actor, "x").missing == (0,)
        again = place(actor, local("x"))  # the same Place sent again places it
        assert [r.replica_index for r in again.replicas] == [0]


def test_a_stopped_actor_leaves_no_timer_behind(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    before = set(threading.enumerate())
    timers: list[threading.Thread] = []
    with retrying(planner[0], RetryBackoff(first_s=60, longest_s=60)) as (actor, _):
        actor.tell(failed(place(actor, local("x"))))
        assert view(actor).degraded == ("x",)  # a try is due in a minute: the timer runs
        timers += [t for t in set(threading.enumerate()) - before if t.name == "placement retries"]
        assert len(timers) == 1
    timers[0].join(timeout=TIMEOUT)
    assert not timers[0].is_alive()


def test_a_removal_ray_refused_of_a_replica_not_to_be_replaced_is_tried_again_on_the_timer() -> (
    None
):
    refusing, removals = threading.Event(), queue.Queue[str]()
    planner = Planner.start(refusing, removals)
    actor = DeploymentPlacementActor.start(
        topology=TOPOLOGY, planner=planner, retry=RetryBackoff(first_s=0.05, longest_s=0.1)
    )
    try:
        first = place(actor, local("x"), gpu_nodes=("a",), replace_lost=False)
        refusing.set()
        actor.tell(failed(first, removed=False))
        assert held_by(actor, "a") == ["x"] * 4  # its group stands: so do its GPUs
        refusing.clear()  # Ray is back; no client sends anything, nothing is to be re-placed
        assert removals.get(timeout=TIMEOUT) == "x"  # the catch-up ran on the timer
        assert held_by(actor, "a") == []
        assert current(actor, "x").missing == (0,)  # and stays missing: replace_lost is off
    finally:
        actor.stop(timeout=TIMEOUT)
        planner.stop()


def test_removing_an_earlier_runs_groups_frees_the_gpus_they_held_replica_by_replica(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    earlier = (
        NodeAssignment(replica_index=0, node="a", gpus=(0, 1)),
        NodeAssignment(replica_index=1, node="b", gpus=(0, 1)),
    )
    actor = DeploymentPlacementActor.start(
        topology=TOPOLOGY, planner=planner[0], held={"old": earlier}
    )
    try:
        assert (held_by(actor, "a"), held_by(actor, "b")) == (["old"] * 2, ["old"] * 2)
        actor.ask(RemoveReplicaGroups("old", (0,)), timeout=TIMEOUT)
        assert (held_by(actor, "a"), held_by(actor, "b")) == ([], ["old"] * 2)
        assert view(actor).deployments == ("old",)  # replica 1's group still stands
        actor.ask(RemoveReplicaGroups("old"), timeout=TIMEOUT)
        assert (held_by(actor, "a"), held_by(actor, "b")) == ([], [])
        assert view(actor).deployments == ()
        assert place(actor, local("old")).total_gpus() == 4  # the name is free again
    finally:
        actor.stop(timeout=TIMEOUT)


def test_a_removal_of_an_earlier_runs_groups_that_ray_refused_keeps_their_gpus_held(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    ref, refusing = planner
    held = {"old": (NodeAssignment(replica_index=0, node="a", gpus=(0, 1)),)}
    actor = DeploymentPlacementActor.start(topology=TOPOLOGY, planner=ref, held=held)
    try:
        refusing.set()
        with pytest.raises(BackendError):
            actor.ask(RemoveReplicaGroups("old"), timeout=TIMEOUT)
        assert held_by(actor, "a") == ["old"] * 2  # Ray keeps the group: so does the ledger
    finally:
        actor.stop(timeout=TIMEOUT)


def test_a_try_that_fails_unexpectedly_leaves_the_timer_running() -> None:
    refusing, broken = threading.Event(), threading.Event()
    planner = Planner.start(refusing, broken=broken)
    try:
        with retrying(planner, RetryBackoff(first_s=0.05, longest_s=0.1)) as (actor, events):
            first = place(actor, local("x"), gpu_nodes=("a",))
            refusing.set()
            actor.tell(failed(first, removed=False))  # its group stands: removed on the timer
            assert held_by(actor, "a") == ["x"] * 4
            broken.set()  # the timer's next removal fails with a RuntimeError
            refusing.clear()
            again = replaced(events)  # the timer rang again, and carried the removal out
            assert not broken.is_set()  # the broken removal was tried, and did fail
            assert [a.node for a in again.assignments] == ["a"]
    finally:
        planner.stop()


def test_a_replica_placed_again_by_other_means_fails_anew_with_a_longer_wait(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    backoff = RetryBackoff(first_s=0.3, longest_s=5)
    with retrying(planner[0], backoff) as (actor, events):
        place(actor, local("other", gpus=4), gpu_nodes=("b",))
        first = place(actor, local("x"), gpu_nodes=("a",))
        actor.tell(failed(first))  # a try is due in 0.3 s
        actor.ask(Release("other"), timeout=TIMEOUT)  # freed capacity places it again at once
        healed = replaced(events)
        assert healed.placement is not None
        told = time.monotonic()
        actor.tell(failed(replace(first, replicas=(healed.placement,))))  # and it fails again
        replaced(events)
        # The second failure in a row waits 0.6 s, not what was left of the first wait.
        assert time.monotonic() - told >= backoff.delay_s(2)


class StallingPlanner(Planner):
    """A `Planner` whose removals hang while ``stalled`` is set (a call to Ray that hangs)."""

    def __init__(self, refusing: threading.Event, stalled: threading.Event) -> None:
        super().__init__(refusing)
        self.stalled = stalled
        self.removals = 0

    def on_receive(self, message: Any) -> Any:
        if message == "ping":
            return "pong"
        if isinstance(message, RemoveReplicaGroups):
            self.removals += 1
            while self.stalled.is_set():
                time.sleep(0.01)
        return super().on_receive(message)


def test_a_removal_the_planner_has_not_answered_is_not_sent_again_with_each_message() -> None:
    refusing, stalled = threading.Event(), threading.Event()
    planner = StallingPlanner.start(refusing, stalled)
    actor = DeploymentPlacementActor.start(
        topology=TOPOLOGY, planner=planner, planner_timeout_s=0.3, retry=None
    )
    try:
        first = place(actor, local("x"), gpu_nodes=("a",), replace_lost=False)
        refusing.set()
        actor.tell(failed(first, removed=False))  # its group stands: removed with later messages
        stalled.set()  # the next removal hangs in the planner
        refusing.clear()
        for _ in range(3):  # each is answered; only the first sends the removal
            assert held_by(actor, "a") == ["x"] * 4
        stalled.clear()
        assert planner.ask("ping", timeout=TIMEOUT) == "pong"  # it has worked through its mailbox
        assert planner.proxy().removals.get(timeout=TIMEOUT) == 1
        assert held_by(actor, "a") == []  # once answered, the next message removes it again
    finally:
        actor.stop(timeout=TIMEOUT)
        planner.stop()


def test_tries_on_the_timer_keep_off_the_nodes_under_a_group_ray_rescheduled(
    planner: tuple[pykka.ActorRef[Planner], threading.Event],
) -> None:
    with retrying(planner[0], RetryBackoff(first_s=0.02, longest_s=0.05)) as (actor, events):
        x = place(actor, local("x"), gpu_nodes=("a", "b"))
        place(actor, local("other"), gpu_nodes=("b",))  # no room left but under x's group
        replica = x.replicas[0]
        actor.tell(GroupRescheduling(group_name=replica.group_name, group_id=replica.group_id))
        time.sleep(0.5)  # a dozen tries on the timer: none goes back onto node a
        assert current(actor, "x").missing == (0,)
        assert held_by(actor, "a") == []
        actor.ask(Release("other"), timeout=TIMEOUT)  # capacity that appears places it at once
        assert replaced(events).deployment == "x"
        assert current(actor, "x").missing == ()
