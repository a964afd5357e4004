"""The service hosted in a named, detached Ray actor, used from this and from another driver."""

import asyncio
import contextlib
import functools
import json
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ClassVar, TypeVar

import pykka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pykka.messages import ProxyCall, ProxyGetAttr, ProxySetAttr, _ActorStop

from placement_actors import (
    BackendError,
    BundleEndpoint,
    BundleStrategy,
    ClusterView,
    Deployment,
    GetClusterView,
    GetReplicaGroups,
    GpuStrategy,
    GroupState,
    InvalidSpecError,
    MoveReplica,
    NoGpuNodesError,
    NotEnoughGpusError,
    Place,
    PlacementConstraints,
    PlacementError,
    PlacementGroupReady,
    PlacementResult,
    Release,
    Released,
    ReplicaBundleSpec,
    ReplicaFailed,
    ReplicaGroupsView,
    ReplicaMoved,
    ReplicaPlacement,
    StalePlacementError,
    UnknownMessageError,
    group_name,
    group_prefix,
)
from placement_actors.actors.messages import (
    BundleGpusKnown,
    GetPlacement,
    GpusInUse,
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
from placement_actors.backends.ray import hosting
from placement_actors.backends.ray.connection import NAMESPACE
from placement_actors.domain.results import Known
from placement_actors.service import (
    ClientOrder,
    EventBuffer,
    EventNumber,
    EventsMissed,
    PlacementClient,
    PlacementHost,
    ServiceEvent,
    _KnownReplicas,
    _unwrap,
)
from placement_actors.settings import IGNORE_HEAD_NODE_ENV

TIMEOUT = 60
E = TypeVar("E")

pytestmark = pytest.mark.usefixtures("ray_nodes")


@pytest.fixture
def client(ray_cluster: Any) -> Iterator[PlacementClient]:
    name = f"test-service-{uuid.uuid4().hex[:8]}"
    yield PlacementClient.serve(ray_cluster.address, name=name)
    live = PlacementClient.connect(ray_cluster.address, name=name)  # a test may have restarted it
    for deployment in live.ask(GetClusterView()).deployments:
        live.ask(Release(deployment))
    live.stop_service()


def test_the_service_answers_the_same_messages_with_the_same_replies(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    place = Place(
        Deployment(name="served", model="m", gpus=2),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-a"],)),
    )
    result = client.ask(place)
    assert isinstance(result, PlacementResult)
    assert {a.node for a in result.assignments} == {ray_nodes["gpu-a"]}
    master = result.replicas[0].master
    assert master.port.get(timeout=TIMEOUT) > 0
    assert master.node_ip.get(timeout=TIMEOUT).count(".") == 3
    assert client.ask(place) == result  # idempotent, as with the actor itself
    view = client.ask(GetClusterView())
    assert isinstance(view, ClusterView)
    assert view.deployments == ("served",)


def test_typed_errors_cross_with_their_fields(client: PlacementClient) -> None:
    with pytest.raises(NotEnoughGpusError) as caught:
        client.ask(Place(Deployment(name="huge", model="m", gpus=1000)))
    assert caught.value.requested == 1000
    assert caught.value.rejections
    with pytest.raises(UnknownMessageError):
        client.ask("not a message")


def test_a_message_that_skipped_its_constructor_is_refused_by_the_service(
    client: PlacementClient,
) -> None:
    deployment = object.__new__(Deployment)
    fields = {"name": "a:b", "model": "m", "replicas": 1, "gpus": "4"}
    for field, value in {**fields, "runtime": None, "api_key": None}.items():
        object.__setattr__(deployment, field, value)
    forged = object.__new__(Place)
    object.__setattr__(forged, "deployment", deployment)
    object.__setattr__(forged, "constraints", PlacementConstraints())
    with pytest.raises(InvalidSpecError):
        client.ask(forged)  # pickled to the host, which never ran Deployment.__post_init__
    assert client.ask(GetClusterView()).deployments == ()  # and it keeps serving


def test_the_events_between_the_services_own_actors_are_refused_from_a_client(
    client: PlacementClient,
) -> None:
    lost = ReplicaFailed(
        deployment="d", replica_index=0, group_name="g", attempt=1, error=PlacementError("x")
    )
    for event in (
        lost,
        PlacementGroupReady(group_name="g", attempt=1),
        NodeLost(node_id="a-live-node"),
        GroupRescheduling(group_name="g", group_id="id"),
        BundleGpusKnown(deployment="d", replica_index=0, attempt=1, node="n", gpu_ids=(0,)),
        GpusInUse(),  # a client would give GPUs others hold back to the market
    ):
        with pytest.raises(InvalidSpecError, match="event between the service's own actors"):
            client.ask(event)


def test_pykkas_own_messages_from_a_client_are_refused_and_the_service_serves_on(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    node = ray_nodes["gpu-a"]
    for message in (
        _ActorStop(),  # would stop the placement actor past its handlers
        ProxyCall(attr_path=("_on_node_lost",), args=(NodeLost(node_id=node),), kwargs={}),
        ProxyGetAttr(attr_path=("_placed",)),
        ProxySetAttr(attr_path=("_handlers",), value={}),
        "a plain string",
    ):
        with pytest.raises(UnknownMessageError, match="service does not handle messages of type"):
            client.ask(message)
    view = client.ask(GetClusterView())
    assert isinstance(view, ClusterView)
    assert view.node(node).state is NodeState.ALIVE  # no event got in
    placed = client.ask(Place(Deployment(name="after-pykka", model="m")))  # handlers intact
    assert isinstance(placed, PlacementResult)


def test_a_service_host_calls_only_the_methods_its_object_serves(client: PlacementClient) -> None:
    host = hosting.find_host(client.name)
    for method in ("stop", "_record", "__init__", "_placement"):
        with pytest.raises(BackendError, match="answers calls of endpoint, events, handle"):
            host.later(method, transform=lambda r: r).get(timeout=TIMEOUT)
    assert client.ask(GetClusterView()).deployments == ()  # it was not stopped


def test_a_service_host_orders_client_messages_only_among_its_other_calls(
    client: PlacementClient,
) -> None:
    host = hosting.find_host(client.name)
    for kind in ("waits", "polls"):  # another loop would use the order's waits from its thread
        sent = host.later(
            "handle", GetClusterView(), "stray", 0, transform=lambda r: r, **{kind: True}
        )
        with pytest.raises(BackendError, match="not among those that wait"):
            sent.get(timeout=TIMEOUT)
    assert isinstance(client.ask(GetClusterView()), ClusterView)


def test_subscribing_through_a_client_is_refused_with_a_pointer_to_watch(
    client: PlacementClient,
) -> None:
    listener = pykka.ThreadingActor.start()  # an actor of this process: the service cannot tell it
    for message in (Subscribe(listener), Unsubscribe(listener)):
        with pytest.raises(InvalidSpecError, match=r"PlacementClient\.watch"):
            client.ask(message)
    assert client.ask(GetClusterView()).deployments == ()  # and the service keeps serving


def test_get_placement_through_a_client_resolves_the_futures_of_its_result(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    place = Place(
        Deployment(name="asked-again", model="m", gpus=2),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-c"],)),
    )
    port = client.ask(place).replicas[0].master.port.get(timeout=TIMEOUT)
    now = client.ask(GetPlacement("asked-again"))
    assert isinstance(now, Placement)
    assert now.result is not None
    assert now.missing == ()
    master = now.result.replicas[0].master
    assert master.port.get(timeout=TIMEOUT) == port
    assert master.gpu_ids.get(timeout=TIMEOUT) == ()  # not learned: each node's agent gave the port
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray tests only

    replica = now.result.replicas[0]  # a client's replica finds its group, to start an engine in
    assert on_ray.status_of(on_ray.replica_group(replica)).is_live
    options = on_ray.bundle_options(replica, 0)
    assert (options["num_gpus"], options["num_cpus"]) == (2, 1)
    assert options["scheduling_strategy"].placement_group_bundle_index == 0
    assert client.ask(GetPlacement("never-placed")).result is None


def test_a_query_sent_behind_the_clients_own_place_sees_it_done(
    client: PlacementClient, ray_nodes: dict[str, str], ray_cluster: Any
) -> None:
    place = Place(
        Deployment(name="pipelined", model="m", replicas=4),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-c"],)),
    )
    placing = client.ask_later(place)  # not waited for: the query follows it at once
    seen = client.ask(GetPlacement("pipelined"))
    assert isinstance(seen, Placement)
    assert seen.result is not None  # it waited in line behind this client's own Place
    assert isinstance(placing.get(timeout=TIMEOUT), PlacementResult)
    other = PlacementClient.connect(ray_cluster.address, name=client.name)  # nothing under way
    assert isinstance(other.ask(GetPlacement("pipelined")), Placement)


def test_a_client_pickles_as_its_host_handle(client: PlacementClient) -> None:
    copy = pickle.loads(pickle.dumps(client))  # noqa: S301 - our own bytes
    assert isinstance(copy, PlacementClient)
    assert isinstance(copy.ask(GetClusterView()), ClusterView)


def next_of(stream: Iterator[ServiceEvent], kind: type[E]) -> E:
    for item in stream:
        if isinstance(item.event, kind):
            return item.event
    pytest.fail(f"the watch ended without a {kind.__name__}")


def until(stream: Iterator[ServiceEvent], kind: type) -> list[object]:
    """The events up to and including the first ``kind``."""
    seen = []
    for item in stream:
        seen.append(item.event)
        if isinstance(item.event, kind):
            return seen
    pytest.fail(f"the watch ended without a {kind.__name__}: {seen}")


def test_a_client_watches_a_node_join_and_leave_and_its_replica_placed_again(
    client: PlacementClient, ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    stream = client.watch(wait_s=5, timeout_s=TIMEOUT)
    node_id = ray_cluster.add_worker(gpus=1, name="gpu-watched")
    removed = False
    try:
        joined = next_of(stream, NodeJoined)
        assert joined.node.node_id == node_id
        # best fit puts the 1-GPU replica on the 1-GPU node; gpu-a is the fallback
        constraints = PlacementConstraints(gpu_nodes=(node_id, ray_nodes["gpu-a"]))
        result = client.ask(Place(Deployment(name="watched", model="m"), constraints))
        assert [a.node for a in result.assignments] == [node_id]
        assert result.replicas[0].master.port.get(timeout=TIMEOUT) > 0
        ray_cluster.remove_worker(node_id)
        removed = True
        seen = until(stream, ReplicaReplaced)
    finally:
        stream.close()
        if not removed:
            ray_cluster.remove_worker(node_id)
    assert NodeLost(node_id=node_id) in seen
    # the watcher may see Ray reschedule the group before it sees the node gone
    lost = next(e for e in seen if isinstance(e, ReplicaLost))
    assert (lost.deployment, lost.replica_index, lost.will_replace) == ("watched", 0, True)
    assert lost.node_id in {node_id, None}
    replaced = seen[-1]
    assert isinstance(replaced, ReplicaReplaced)
    assert [a.node for a in replaced.assignments] == [ray_nodes["gpu-a"]]
    assert replaced.placement is not None
    port = replaced.placement.master.port.get(timeout=TIMEOUT)  # resolved through the service
    assert port > 0
    now = client.ask(GetPlacement("watched"))
    assert now.result is not None
    assert now.result.replicas[0].master.port.get(timeout=TIMEOUT) == port
    # the same events, numbered, for a client that asks later
    found, last = client.events(0)
    kinds = [type(e.event) for e in found]
    assert kinds[0] is NodeJoined
    assert sorted(k.__name__ for k in kinds[1:]) == ["NodeLost", "ReplicaLost", "ReplicaReplaced"]
    assert [e.sequence for e in found] == [1, 2, 3, 4]
    assert last == 4 == client.last_event()
    assert client.events(last, wait_s=0.2) == ((), last)  # nothing new: waited, came back empty
    with pytest.raises(InvalidSpecError):
        client.events(-1)


# -- the event buffer, without Ray ----------------------------------------------------------------


def test_the_buffer_numbers_events_and_returns_those_after_a_number() -> None:
    buffer = EventBuffer(10)
    for node in "abc":
        buffer.append(NodeLost(node_id=node))
    found, last = buffer.after(1)
    assert [(e.sequence, e.event) for e in found] == [
        (2, NodeLost(node_id="b")),
        (3, NodeLost(node_id="c")),
    ]
    assert last == 3 == buffer.last
    assert buffer.after(3) == ((), 3)
    assert [e.sequence for e in buffer.after(0, limit=2)[0]] == [1, 2]  # at most limit


def test_a_reader_that_fell_behind_gets_a_marker_then_the_oldest_kept_events() -> None:
    buffer = EventBuffer(3)
    for index in range(5):  # events 1 and 2 are dropped
        buffer.append(NodeLost(node_id=f"n{index}"))
    found, last = buffer.after(0)
    assert found[0].event == EventsMissed(after=0, missed=2)
    assert found[0].sequence == 2  # the last missed one: asking after it goes on
    assert [e.sequence for e in found[1:]] == [3, 4, 5]
    assert last == 5


def test_a_reader_numbered_by_an_earlier_run_of_the_service_gets_a_restart_marker() -> None:
    buffer = EventBuffer(3)
    buffer.append(NodeLost(node_id="x"))
    found, last = buffer.after(40)  # 40 events were seen from the service's earlier run
    assert found[0].event == EventsMissed(after=40, missed=None)
    assert [e.sequence for e in found] == [0, 1]
    assert last == 1


def test_a_reader_numbered_by_another_run_gets_the_restart_marker_even_past_that_number() -> None:
    earlier, now = EventBuffer(10), EventBuffer(10)
    for index in range(5):
        earlier.append(NodeLost(node_id=f"old{index}"))
    for index in range(7):  # the new run has recorded more events than the reader saw
        now.append(NodeLost(node_id=f"new{index}"))
    found, last = now.after(5, run=earlier.run)
    assert found[0].event == EventsMissed(after=5, missed=None)
    assert [e.event for e in found[1:]] == [NodeLost(node_id=f"new{i}") for i in range(7)]
    assert last == 7
    assert [e.sequence for e in now.after(5, run=now.run)[0]] == [6, 7]  # this run's own number
    assert now.run != earlier.run


@pytest.mark.parametrize(
    ("after", "wait_s", "limit"),
    [(-1, 0, 10), (True, 0, 10), (0, -1, 10), (0, float("nan"), 10), (0, 61, 10), (0, 0, 0)],
    ids=["negative", "bool", "negative-wait", "nan-wait", "long-wait", "no-limit"],
)
async def test_the_buffer_refuses_malformed_questions(after: Any, wait_s: Any, limit: Any) -> None:
    with pytest.raises(InvalidSpecError):
        await EventBuffer().wait(after, wait_s, limit)


async def test_a_waiting_reader_wakes_on_an_event_from_another_thread_and_the_loop_runs_on() -> (
    None
):
    buffer = EventBuffer()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    threading.Timer(0.3, buffer.append, (NodeLost(node_id="late"),)).start()
    started = time.monotonic()
    found, last = await buffer.wait(0, wait_s=10)
    waited = time.monotonic() - started
    ticker.cancel()
    assert [e.event for e in found] == [NodeLost(node_id="late")]
    assert last == 1
    assert 0.2 < waited < 5
    assert ticks > 10  # the loop ran on while the reader waited
    started = time.monotonic()
    assert await buffer.wait(1, wait_s=0.2) == ((), 1)  # nothing new: back after wait_s
    assert time.monotonic() - started >= 0.2


async def test_a_closed_buffer_wakes_its_waiting_readers_and_lets_no_one_wait_again() -> None:
    buffer = EventBuffer()
    buffer.append(NodeLost(node_id="before"))
    threading.Timer(0.2, buffer.close).start()
    assert await asyncio.wait_for(buffer.wait(1, wait_s=30), 5) == ((), 1)  # woken, not timed out
    assert await asyncio.wait_for(buffer.wait(1, wait_s=30), 5) == ((), 1)  # no wait at all
    assert [e.sequence for e in (await buffer.wait(0, wait_s=30))[0]] == [1]  # kept events stay


def test_a_reader_keeping_up_and_one_far_behind_read_the_same_events() -> None:
    buffer = EventBuffer(100)
    for index in range(250):
        buffer.append(NodeLost(node_id=f"n{index}"))
    for after in (150, 151, 199, 200, 240, 249, 250):  # the newest half is read from its end
        found, last = buffer.after(after, limit=7)
        assert [e.sequence for e in found] == list(range(after + 1, min(after + 7, 250) + 1))
        assert last == (found[-1].sequence if found else after)


class _Now:
    """A hosted call's reply, there already."""

    def __init__(self, value: object) -> None:
        self._value = value

    def get(self, *, timeout: float | None = None) -> object:
        del timeout
        return self._value


class _BufferHost:
    """A stand-in for the service host that answers event calls from one `EventBuffer`."""

    name = "buffer-host"

    def __init__(self) -> None:
        self.buffer = EventBuffer()

    def later(self, method: str, *args: Any, transform: Callable[[Any], Any], **_: Any) -> _Now:
        if method == "events":
            after, _wait_s, limit, run = args
            found, position = self.buffer.after(after, limit, run=run)
            return _Now(transform(("ok", (found, position, self.buffer.run))))
        assert method == "last_event"
        return _Now(transform(("ok", (self.buffer.last, self.buffer.run))))


@pytest.mark.parametrize("meanwhile", ["another watch", "last_event", "events"])
def test_a_watch_tells_a_restart_of_the_service_whatever_else_reads_events_on_its_client(
    meanwhile: str,
) -> None:
    host = _BufferHost()
    client = PlacementClient(host)  # type: ignore[arg-type]
    for index in range(120):
        host.buffer.append(NodeLost(node_id=f"old{index}"))
    first = client.watch(after=0, wait_s=1.0, timeout_s=30)
    assert [next(first).sequence for _ in range(120)][-1] == 120
    second = client.watch(after=0, wait_s=1.0, timeout_s=30)
    assert [next(second).sequence for _ in range(120)][-1] == 120
    host.buffer = EventBuffer()  # the service restarted: a new run, numbered from 1 again
    for index in range(130):
        host.buffer.append(NodeLost(node_id=f"new{index}"))
    if meanwhile == "another watch":
        assert next(second).event == EventsMissed(after=120, missed=None)
    elif meanwhile == "last_event":
        assert client.last_event() == 130
    else:
        client.events(0)
    marker = next(first)  # not new event 121: events 1 to 120 of the new run would be lost
    assert marker.event == EventsMissed(after=120, missed=None)
    assert next(first).event == NodeLost(node_id="new0")


def test_events_read_after_a_watch_go_on_from_the_run_the_watch_last_heard() -> None:
    host = _BufferHost()
    client = PlacementClient(host)  # type: ignore[arg-type]
    for index in range(5):
        host.buffer.append(NodeLost(node_id=f"old{index}"))
    assert client.events(0)[1] == 5
    host.buffer = EventBuffer()  # the service restarted
    for index in range(3):
        host.buffer.append(NodeLost(node_id=f"new{index}"))
    watch = client.watch(after=5, wait_s=1.0, timeout_s=30)
    assert next(watch).event == EventsMissed(after=5, missed=None)
    seen = [next(watch) for _ in range(3)]
    assert [e.sequence for e in seen] == [1, 2, 3]
    watch.close()
    # The number the watch gave carries the new run: nothing again, and no false marker.
    assert client.events(seen[-1].sequence) == ((), 3)


def test_an_events_reader_is_told_of_a_restart_whatever_a_watch_of_its_client_read() -> None:
    host = _BufferHost()
    client = PlacementClient(host)  # type: ignore[arg-type]
    for index in range(120):
        host.buffer.append(NodeLost(node_id=f"old{index}"))
    _, position = client.events(0)
    assert position == 120
    watch = client.watch(after=position, wait_s=1.0, timeout_s=30)
    host.buffer = EventBuffer()  # the service restarted: a new run, numbered from 1 again
    for index in range(130):
        host.buffer.append(NodeLost(node_id=f"new{index}"))
    assert next(watch).event == EventsMissed(after=120, missed=None)  # the watch heard the run
    assert next(watch).event == NodeLost(node_id="new0")
    # A plain number is the run this client's events calls last heard (not its watch's).
    assert client.events(120)[0][0].event == EventsMissed(after=120, missed=None)
    found, _ = client.events(position)  # not new event 121: the position says its own run
    assert found[0].event == EventsMissed(after=120, missed=None)
    assert found[1].event == NodeLost(node_id="new0")


def test_an_event_number_is_an_int_that_keeps_its_run_across_a_pickle() -> None:
    number = EventNumber(7, "run-a")
    again = pickle.loads(pickle.dumps(number))  # noqa: S301 - our own bytes
    assert (again, again.run, type(again)) == (7, "run-a", EventNumber)
    assert number + 1 == 8
    assert json.dumps({"after": number}) == '{"after": 7}'


# -- the endpoints the service resolves, without Ray -------------------------------------------


def replica_of(deployment: str, attempt: int, index: int = 0) -> ReplicaPlacement:
    return ReplicaPlacement(
        deployment=deployment,
        replica_index=index,
        group_name=group_name(deployment, index),
        spec=ReplicaBundleSpec(
            bundles=({"GPU": 1},), strategy=BundleStrategy.STRICT_PACK, nnodes=1, per_node_gpus=1
        ),
        bundles=(BundleEndpoint(node="n", node_ip=Known("10.0.0.1"), port=Known(9000)),),
        attempt=attempt,
        group_id=f"g-{deployment}-{attempt}",
    )


def test_an_event_told_after_its_deployment_was_released_brings_no_endpoint_back() -> None:
    known = _KnownReplicas()
    known.keep((replica_of("d", 1),), placed="d")
    known.forget("d")  # the Release was answered ...
    known.keep_unless_released(replica_of("d", 2))  # ... before the listener heard of a replacement
    assert known.get(group_name("d", 0)) is None
    known.keep((replica_of("d", 1),), placed="d")  # placed again: its events count again
    known.keep_unless_released(replica_of("d", 2))
    kept = known.get(group_name("d", 0))
    assert kept is not None
    assert kept.attempt == 2


def test_an_event_told_before_the_place_reply_is_read_is_kept_over_the_reply() -> None:
    known = _KnownReplicas()
    known.keep_unless_released(replica_of("d", 2))  # the replica was lost and placed again ...
    known.keep((replica_of("d", 1),), placed="d")  # ... before the Place reply was read
    kept = known.get(group_name("d", 0))
    assert kept is not None
    assert kept.attempt == 2  # the newest
    known.keep((replica_of("e", 1),), placed="e")
    known.forget("d")
    assert known.get(group_name("d", 0)) is None
    assert known.get(group_name("e", 0)) is not None  # another deployment's stay
    assert known.get({"not": "hashable"}) is None  # from a misbehaving client


def test_a_name_placed_again_keeps_its_new_groups_events_and_drops_the_old_ones() -> None:
    known = _KnownReplicas()
    known.keep((replica_of("d", 1), replica_of("d", 1, index=1)), placed="d")
    known.forget("d")
    known.keep_unless_released(replica_of("d", 3))  # placed again (2), then replaced (3) ...
    known.keep((replica_of("d", 2),), placed="d")  # ... before the Place reply was read
    kept = known.get(group_name("d", 0))
    assert kept is not None
    assert kept.attempt == 3
    known.keep_unless_released(replica_of("d", 1, index=1))  # the old run's, recorded late
    assert known.get(group_name("d", 1)) is None  # not brought back


def test_released_deployments_are_remembered_up_to_a_bound() -> None:
    known = _KnownReplicas(released=2)
    for name in ("a", "b", "c"):
        known.forget(name)
    known.keep_unless_released(replica_of("a", 1))  # "a" is forgotten: the oldest of three
    known.keep_unless_released(replica_of("c", 1))
    assert known.get(group_name("a", 0)) is not None
    assert known.get(group_name("c", 0)) is None


# -- each client's order, without Ray -------------------------------------------------------------


def sender(order: ClientOrder) -> tuple[Callable[[int], Coroutine[Any, Any, None]], list[int]]:
    """Sending client "c"'s message ``seq`` through ``order``, and who went, in turn."""
    handed: list[int] = []

    async def send(seq: int) -> None:
        async with order.turn("c", seq):
            handed.append(seq)

    return send, handed


async def test_a_clients_messages_take_their_turns_in_the_order_it_numbered_them() -> None:
    order, handed = ClientOrder(), []

    async def send(client: str, seq: int) -> None:
        async with order.turn(client, seq):
            handed.append((client, seq))

    # Arriving 2, 1, 0 (as Ray may run an asyncio actor's calls), and another client between.
    late = [asyncio.create_task(send("c", n)) for n in (2, 1, 0)]
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(send("c", n)) for n in (4, 3)]
    await send("other", 0)
    await asyncio.gather(*late, *waiting)
    assert [n for c, n in handed if c == "c"] == [0, 1, 2, 3, 4]
    assert ("other", 0) in handed


async def test_a_message_whose_predecessor_never_comes_goes_after_the_longest_wait() -> None:
    send, handed = sender(ClientOrder(wait_s=0.2))
    await send(0)
    started = time.monotonic()
    await send(2)  # 1 was lost on the way
    assert time.monotonic() - started >= 0.2
    await send(1)  # a late one is not held up
    assert handed == [0, 2, 1]


@settings(max_examples=200, deadline=None)
@given(st.permutations(range(8)), st.lists(st.booleans(), min_size=8, max_size=8))
def test_whatever_order_messages_arrive_in_they_are_handed_over_in_the_clients_order(
    arrival: list[int], pause: list[bool]
) -> None:
    async def run() -> list[int]:
        send, handed = sender(ClientOrder())
        tasks: list[asyncio.Task[None]] = []
        for seq, wait in zip(arrival, pause, strict=True):
            tasks.append(asyncio.create_task(send(seq)))
            if wait:  # let the ones that may go, go
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)  # none lost: nobody waits it out
        return handed

    assert asyncio.run(run()) == list(range(8))


async def test_after_a_lost_message_the_later_ones_still_go_in_their_order() -> None:
    send, handed = sender(ClientOrder(wait_s=0.2))
    await send(0)
    later = [asyncio.create_task(send(n)) for n in (3, 2)]  # 1 was lost; 3 arrived before 2
    await asyncio.gather(*later)
    assert handed == [0, 2, 3]


async def test_messages_sent_again_to_a_restarted_service_go_in_their_order() -> None:
    send, handed = sender(ClientOrder(first_wait_s=0.2))  # a new run: it never saw 0 to 4
    await asyncio.gather(*(asyncio.create_task(send(n)) for n in (7, 6, 5)))
    assert handed == [5, 6, 7]


async def test_messages_sent_again_naming_the_one_they_follow_skip_the_answered_ones_at_once() -> (
    None
):
    order, handed = ClientOrder(wait_s=30, first_wait_s=30), []  # a new run; 3 and 5 answered

    async def send(seq: int, after: int) -> None:
        async with order.turn("c", seq, after):
            handed.append(seq)

    started = time.monotonic()
    sent_again = [asyncio.create_task(send(n, a)) for n, a in ((6, 4), (4, 2), (2, -1))]
    await asyncio.wait_for(asyncio.gather(*sent_again), 5)
    await asyncio.wait_for(send(7, 6), 5)  # sent after them, as usual: it follows 6
    assert handed == [2, 4, 6, 7]
    assert time.monotonic() - started < 5  # nobody waited for 3 or 5


async def test_a_message_cancelled_while_it_waits_does_not_hold_up_the_next() -> None:
    send, handed = sender(ClientOrder(wait_s=30))
    await send(0)
    blocked = asyncio.create_task(send(2))  # waits for 1
    await asyncio.sleep(0.05)
    blocked.cancel()
    started = time.monotonic()
    three = asyncio.create_task(send(3))  # still waits for 1, but not for 2, which gave up
    await asyncio.sleep(0.05)
    assert handed == [0]
    await send(1)
    await three
    assert time.monotonic() - started < 5
    assert handed == [0, 1, 3]


async def test_a_client_not_seen_before_waits_only_briefly_for_an_earlier_message() -> None:
    order = ClientOrder(clients=2, wait_s=30, first_wait_s=0.2)
    for client in ("a", "b", "c"):  # "a" is forgotten: only the 2 most recent are remembered
        async with order.turn(client, 0):
            pass
    started = time.monotonic()
    async with order.turn("a", 9):  # as after a restart of the service: 8 may never come
        pass
    assert 0.2 <= time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("client", "seq"),
    [(7, 0), ("x" * 65, 0), ("c", -1), ("c", True), ("c", 2**63), ("c", "1")],
    ids=["not-text", "long-id", "negative", "bool", "huge", "text-seq"],
)
def test_a_malformed_client_number_is_refused(client: Any, seq: Any) -> None:
    with pytest.raises(InvalidSpecError):
        ClientOrder.check(client, seq)


@pytest.mark.parametrize("after", [-2, 5, 6, True, 1.0, "1"])
def test_a_number_to_follow_that_is_not_below_the_message_is_refused(after: Any) -> None:
    ClientOrder.check("c", 5, 4)  # the usual one, given
    ClientOrder.check("c", 5, -1)  # none
    with pytest.raises(InvalidSpecError, match="after"):
        ClientOrder.check("c", 5, after)


def test_the_service_hands_a_clients_messages_to_the_actor_in_its_order_whatever_ray_does(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    host, me = client._host, uuid.uuid4().hex
    place = Place(
        Deployment(name="in-order", model="m", gpus=1),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-c"],)),
    )
    view = host.later("handle", GetClusterView(), me, 0, transform=_unwrap).get(timeout=TIMEOUT)
    assert isinstance(view, ClusterView)  # the service knows this client now
    # Sent in reverse: the query (number 2) must wait for the Place (number 1) and see it done.
    query = host.later("handle", GetPlacement("in-order"), me, 2, transform=_unwrap)
    time.sleep(1.0)  # the query reached the service first, and waits there
    placed = host.later("handle", place, me, 1, transform=_unwrap)
    seen = query.get(timeout=TIMEOUT)
    assert isinstance(placed.get(timeout=TIMEOUT), PlacementResult)
    assert isinstance(seen, Placement)
    assert seen.result is not None
    with pytest.raises(InvalidSpecError, match="seq"):
        host.later("handle", GetPlacement("in-order"), me, -1, transform=_unwrap).get(
            timeout=TIMEOUT
        )
    client.ask(Release("in-order"))


def test_an_endpoint_the_service_does_not_hold_is_a_typed_error(client: PlacementClient) -> None:
    host = client._host
    for key in (("no-such-group", 1, 0), (["unhashable"], 1, 0), ("g", 1, -1)):
        with pytest.raises(InvalidSpecError):
            host.later("endpoint", *key, transform=_unwrap).get(timeout=TIMEOUT)


async def test_replies_and_endpoints_can_be_awaited(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    place = Place(
        Deployment(name="awaited-remote", model="m"),
        PlacementConstraints(gpu_nodes=(ray_nodes["gpu-bulk"],)),
    )
    result = await client.ask_later(place)
    assert isinstance(result, PlacementResult)
    assert await result.replicas[0].master.port > 0


SECOND_DRIVER = """
import sys
from placement_actors import Deployment, Place, PlacementConstraints
from placement_actors.actors.messages import (
    BundleGpusKnown,
    GetPlacement,
    GroupRescheduling,
    NodeJoined,
    NodeLost,
    Placement,
    ReplicaLost,
    ReplicaReplaced,
    Subscribe,
    Unsubscribe,
)
from placement_actors.service import (
    EventBuffer,
    EventsMissed,
    PlacementClient,
    ServiceEvent,
    _unwrap,
)

address, name, node = sys.argv[1:4]
client = PlacementClient.connect(address, name=name)
deployment = Deployment(name="from-elsewhere", model="m", gpus=2)
result = client.ask(Place(deployment, PlacementConstraints(gpu_nodes=(node,))))
master = result.replicas[0].master
print(master.node_ip.get(timeout=60), master.port.get(timeout=60))
"""


def test_a_second_driver_places_and_the_state_outlives_it(
    client: PlacementClient, ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    done = subprocess.run(  # noqa: S603 - this interpreter running the script above
        [
            sys.executable,
            "-c",
            SECOND_DRIVER,
            ray_cluster.address,
            client.name,
            ray_nodes["gpu-b"],
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ip, port = done.stdout.split()[-2:]
    assert int(port) > 0
    # the driver has exited; the service still holds its deployment and group
    view = client.ask(GetClusterView())
    assert view.deployments == ("from-elsewhere",)
    assert len(view.node(ray_nodes["gpu-b"]).held) == 2
    groups = client.ask(GetReplicaGroups())
    assert isinstance(groups, ReplicaGroupsView)
    assert [g.state for g in groups.groups] == [GroupState.READY]
    assert ip.count(".") == 3


def test_stopping_through_a_client_of_a_service_served_again_stops_the_one_running_now(
    client: PlacementClient, ray_cluster: Any
) -> None:
    client.stop_service()
    PlacementClient.serve(ray_cluster.address, name=client.name)  # another of the same name
    client.stop_service()  # this client's handle is of the first: the running one stops
    with pytest.raises(BackendError, match="placement-actors serve"):
        PlacementClient.connect(ray_cluster.address, name=client.name)
    client.stop_service()  # nothing runs under the name: nothing to do
    PlacementClient.serve(ray_cluster.address, name=client.name)  # for the fixture's clean-up


def test_restarting_through_a_client_of_a_service_served_again_restarts_the_one_running_now(
    client: PlacementClient, ray_cluster: Any
) -> None:
    other = PlacementClient.connect(ray_cluster.address, name=client.name)  # the first's handle
    client.stop_service()
    PlacementClient.serve(ray_cluster.address, name=client.name)  # another of the same name
    other.restart_service(timeout_s=TIMEOUT)  # not "did not answer": it follows the name
    assert isinstance(other.ask(GetClusterView(), timeout=TIMEOUT), ClusterView)


def a_place_and_another_client(
    client: PlacementClient, ray_cluster: Any, ray_nodes: dict[str, str], name: str
) -> tuple[Place, PlacementClient]:
    """A one-GPU `Place` on gpu-a, and a second client whose handle is the running host's."""
    pinned = PlacementConstraints(gpu_nodes=(ray_nodes["gpu-a"],))
    other = PlacementClient.connect(ray_cluster.address, name=client.name)
    other.ask(GetClusterView(), timeout=TIMEOUT)
    return Place(Deployment(name=name, model="m", gpus=1), pinned), other


def test_calls_cut_off_by_a_stop_reach_the_service_served_again_in_the_order_they_were_sent(
    client: PlacementClient, ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    place, other = a_place_and_another_client(client, ray_cluster, ray_nodes, "cut-off")
    client.stop_service()
    PlacementClient.serve(ray_cluster.address, name=client.name)  # another of the same name
    placed = other.ask_later(place)  # both go to the stopped host first
    released = other.ask_later(Release("cut-off"))
    assert isinstance(released.get(timeout=TIMEOUT), Released)  # read first: sent again first?
    assert isinstance(placed.get(timeout=TIMEOUT), PlacementResult)
    assert "cut-off" not in other.ask(GetClusterView(), timeout=TIMEOUT).deployments  # released

    client.stop_service()
    PlacementClient.serve(ray_cluster.address, name=client.name)
    other.ask_later(place)  # never read: it reaches the new host with the next call
    found = other.ask(GetPlacement("cut-off"), timeout=TIMEOUT)
    assert isinstance(found, Placement)
    assert found.result is not None  # the query went after the Place it follows
    other.ask(Release("cut-off"), timeout=TIMEOUT)


class Recorder:
    """A hosted object that answers each call with its arguments; a "hang" call, if told to,
    never (as a stopped host leaves calls unanswered)."""

    HOSTED_METHODS: ClassVar[frozenset[str]] = frozenset({"handle"})

    def __init__(self, *, hang: bool) -> None:
        self._hang = hang

    async def handle(
        self, message: str, client: str, seq: int, after: int | None = None
    ) -> tuple[str, int, int | None]:
        if self._hang and message == "hang":
            await asyncio.sleep(3600)
        return f"{client}:{message}", seq, after


def test_calls_sent_again_to_a_successor_name_the_one_sent_again_before_them() -> None:
    name = f"test-resend-{uuid.uuid4().hex[:8]}"
    host = hosting.start_host(name, functools.partial(Recorder, hang=True), timeout_s=TIMEOUT)

    def send(message: str, seq: int) -> hosting.RayEventual[Any]:
        return host.later("handle", message, "c", seq, transform=lambda r: r, ordered=True)

    try:
        first, answered, third = send("hang", 0), send("now", 1), send("hang", 2)
        deadline = time.monotonic() + TIMEOUT
        while host.unanswered([answered]) and time.monotonic() < deadline:
            time.sleep(0.05)  # answered by this host, not read yet
        host.kill()
        hosting.start_host(name, functools.partial(Recorder, hang=False), timeout_s=TIMEOUT)
        assert first.get(timeout=TIMEOUT) == ("c:hang", 0, -1)  # follows nothing sent again
        assert third.get(timeout=TIMEOUT) == ("c:hang", 2, 0)  # not 1: the stopped host answered it
        assert answered.get(timeout=TIMEOUT) == ("c:now", 1, None)  # kept, not sent again
        assert send("new", 3).get(timeout=TIMEOUT) == ("c:new", 3, None)  # later ones as usual
    finally:
        host.kill()


class EarlierRecorder:
    """A hosted object of an earlier version: its method takes no number to follow."""

    HOSTED_METHODS: ClassVar[frozenset[str]] = frozenset({"handle", "seen"})

    def __init__(self) -> None:
        self.handled: list[int] = []

    async def handle(self, message: str, client: str, seq: int) -> tuple[str, int]:
        self.handled.append(seq)
        return f"{client}:{message}", seq

    def seen(self) -> list[int]:
        return sorted(self.handled)


@contextlib.contextmanager
def calls_cut_off_then(
    successor: Callable[[], object],
) -> Iterator[tuple[hosting.RemoteHost, list[hosting.RayEventual[Any]]]]:
    """Two calls their host never answers; the host stopped, ``successor`` served in its name."""
    name = f"test-resend-{uuid.uuid4().hex[:8]}"
    host = hosting.start_host(name, functools.partial(Recorder, hang=True), timeout_s=TIMEOUT)
    try:
        cut_off = [
            host.later("handle", "hang", "c", seq, transform=lambda r: r, ordered=True)
            for seq in (0, 1)
        ]
        host.kill()
        hosting.start_host(name, successor, timeout_s=TIMEOUT)
        yield host, cut_off
    finally:
        host.kill()


def eventually_answered(host: hosting.RemoteHost, call: hosting.RayEventual[Any]) -> bool:
    """Whether ``call`` is answered within the test's timeout, without reading it."""
    deadline = time.monotonic() + TIMEOUT
    while host.unanswered([call]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not host.unanswered([call])


def test_calls_sent_again_to_a_successor_of_an_earlier_version_still_reach_it_in_order() -> None:
    with calls_cut_off_then(EarlierRecorder) as (host, (first, second)):
        assert second.get(timeout=TIMEOUT) == ("c:hang", 1)  # not "failed to answer"
        deadline, seen = time.monotonic() + TIMEOUT, list[int]()
        while seen != [0, 1] and time.monotonic() < deadline:
            seen = host.later("seen", transform=lambda r: r).get(timeout=TIMEOUT)
        assert seen == [0, 1]  # the first went again with it, unread
        assert first.get(timeout=TIMEOUT) == ("c:hang", 0)


def test_asking_which_host_runs_sends_the_calls_cut_off_to_the_successor_unread() -> None:
    with calls_cut_off_then(functools.partial(Recorder, hang=False)) as (host, cut_off):
        host.incarnation(timeout_s=TIMEOUT)  # the successor's: later calls go there
        assert all(eventually_answered(host, c) for c in cut_off)  # went with the switch
        assert [c.get(timeout=TIMEOUT) for c in cut_off] == [("c:hang", 0, -1), ("c:hang", 1, 0)]


def test_an_awaited_call_finds_the_successor_of_its_stopped_host_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[threading.Thread] = []
    real = hosting.RemoteHost.forward

    def forward(host: hosting.RemoteHost, *args: Any) -> bool:
        threads.append(threading.current_thread())  # Ray is asked for the successor here
        return real(host, *args)

    monkeypatch.setattr(hosting.RemoteHost, "forward", forward)

    async def read(call: hosting.RayEventual[Any]) -> tuple[object, threading.Thread]:
        return await call, threading.current_thread()

    with calls_cut_off_then(functools.partial(Recorder, hang=False)) as (_, (first, _second)):
        answer, loop_thread = asyncio.run(read(first))
    assert answer == ("c:hang", 0, -1)  # it reached the successor
    assert threads  # the host's death was seen while awaiting
    assert loop_thread not in threads


class Poller:
    """A hosted object whose event polls never end, and whose endpoints are known at once."""

    HOSTED_METHODS: ClassVar[frozenset[str]] = frozenset({"events", "endpoint"})

    async def events(self) -> None:
        await asyncio.sleep(3600)

    async def endpoint(self) -> int:
        return 9000


def test_clients_following_events_leave_room_for_a_controller_waiting_for_an_endpoint() -> None:
    name = f"test-polls-{uuid.uuid4().hex[:8]}"
    host = hosting.start_host(name, Poller, timeout_s=TIMEOUT, waiting_calls=2, polling_calls=2)
    try:
        polls = [host.later("events", transform=lambda r: r, polls=True) for _ in range(3)]
        # Every poll slot is taken (and one more poll waits): an endpoint is still answered.
        endpoint = host.later("endpoint", transform=lambda r: r, waits=True)
        assert endpoint.get(timeout=TIMEOUT) == 9000
        assert host.unanswered(polls) == polls  # the polls were running all along
    finally:
        host.kill()


def test_a_call_told_failed_while_no_service_ran_is_not_sent_to_one_served_later(
    client: PlacementClient, ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    lost, other = a_place_and_another_client(client, ray_cluster, ray_nodes, "told-failed")
    client.stop_service()  # nothing runs under the name now
    refused = other.ask_later(lost)
    with pytest.raises(BackendError, match="failed to answer"):
        refused.get(timeout=TIMEOUT)
    PlacementClient.serve(ray_cluster.address, name=client.name)
    view = other.ask(GetClusterView(), timeout=TIMEOUT)  # goes to the new one
    assert isinstance(view, ClusterView)
    assert "told-failed" not in view.deployments  # the caller was told it failed: it did
    with pytest.raises(BackendError, match="failed to answer"):
        refused.get(timeout=TIMEOUT)  # and stays failed


def test_clients_waiting_for_events_never_hold_up_another_clients_command() -> None:
    name = f"test-waits-{uuid.uuid4().hex[:8]}"
    handle = hosting._Host.options(  # two at a time but waits
        name=name, namespace=NAMESPACE, lifetime="detached", max_concurrency=2
    ).remote(functools.partial(PlacementHost, ready_timeout_s=60))
    client = PlacementClient(hosting.RemoteHost(handle, name))
    try:
        assert isinstance(client.ask(GetClusterView(), timeout=TIMEOUT), ClusterView)
        waiting = [
            threading.Thread(target=client.events, kwargs={"wait_s": 6.0}, daemon=True)
            for _ in range(4)
        ]
        for thread in waiting:
            thread.start()
        time.sleep(1.0)  # four long polls wait on the host now, for 6 s
        assert all(thread.is_alive() for thread in waiting)
        view = client.ask(GetClusterView(), timeout=4)  # within their wait, not after it
        assert isinstance(view, ClusterView)
        assert all(thread.is_alive() for thread in waiting)  # (they did wait)
        for thread in waiting:
            thread.join(timeout=TIMEOUT)
    finally:
        client.stop_service()


def test_connecting_to_a_service_that_does_not_run_is_a_backend_error(ray_cluster: Any) -> None:
    with pytest.raises(BackendError, match="placement-actors serve"):
        PlacementClient.connect(ray_cluster.address, name="no-such-service")


def test_head_exclusion_set_in_the_callers_environment_holds_in_the_service(
    ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray tests only

    (head,) = (n.node_id for n in on_ray.get_cluster_topology() if n.is_head)
    monkeypatch.setenv(IGNORE_HEAD_NODE_ENV, "1")  # the caller's shell, not the service's worker
    client = PlacementClient.serve(ray_cluster.address, name=f"test-head-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(NoGpuNodesError, match="head"):
            client.ask(
                Place(
                    Deployment(name="on-head", model="m", gpus=1),
                    PlacementConstraints(gpu_nodes=(head,)),
                )
            )
    finally:
        client.stop_service()


def test_a_restarted_service_counts_the_gpus_its_groups_still_hold(
    client: PlacementClient, ray_cluster: Any, ray_nodes: dict[str, str]
) -> None:
    node = ray_nodes["gpu-a"]
    result = client.ask(
        Place(
            Deployment(name="kept-over", model="m", gpus=4), PlacementConstraints(gpu_nodes=(node,))
        )
    )
    result.replicas[0].master.port.get(timeout=TIMEOUT)
    client.stop_service()  # the detached group stays on gpu-a
    again = PlacementClient.serve(ray_cluster.address, name=client.name)
    view = again.ask(GetClusterView())
    assert view.deployments == ("kept-over",)
    assert len(view.node(node).held) == 4
    with pytest.raises(NotEnoughGpusError):
        again.ask(
            Place(Deployment(name="newcomer", model="m"), PlacementConstraints(gpu_nodes=(node,)))
        )
    assert again.ask(Release("kept-over")).gpus_freed == 4
    assert again.ask(GetClusterView()).node(node).held == ()


def test_a_label_selector_places_replicas_where_ray_labels_say_and_ray_keeps_them_there(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray tests only

    chosen = {on_ray.NAME_LABEL: "in(gpu-b,gpu-c)"}
    place = Place(
        Deployment(name="zoned", model="m", gpus=4, replicas=2),
        PlacementConstraints(label_selector=chosen),
    )
    result = client.ask(place)  # the selector crosses to the host pickled, and is checked there
    assert isinstance(result, PlacementResult)
    wanted = {ray_nodes["gpu-b"], ray_nodes["gpu-c"]}
    assert {a.node for a in result.assignments} <= wanted
    for replica in result.replicas:
        assert replica.master.port.get(timeout=TIMEOUT) > 0
    landed = on_ray.bundle_nodes(group_prefix("zoned"))
    assert len(landed) == 2
    assert {node for bundles in landed.values() for node in bundles.values()} <= wanted
    with pytest.raises(NoGpuNodesError, match="label_selector"):
        client.ask(
            Place(
                Deployment(name="nowhere", model="m", gpus=1),
                PlacementConstraints(label_selector={on_ray.NAME_LABEL: "no-such-node"}),
            )
        )
    client.ask(Release("zoned"))
    api = Deployment(name="zoned-api", model="gpt-4o", replicas=2)
    remote = client.ask(
        Place(api, PlacementConstraints(label_selector={on_ray.NAME_LABEL: "gpu-a"}))
    )  # egress nodes are picked by the labels Ray reported for them
    assert [a.node for a in remote.assignments] == [ray_nodes["gpu-a"]] * 2
    client.ask(Release("zoned-api"))


def test_a_moved_replica_gets_a_group_on_its_new_node_and_keeps_it_across_a_restart(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray tests only

    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    place = Place(
        Deployment(name="mover", model="m", gpus=2, replicas=2),
        PlacementConstraints(gpu_nodes=(a, b)),
    )
    result = client.ask(place)
    nodes = [x.node for x in result.assignments]
    assert nodes[0] == nodes[1]  # best fit: both on one node (which one: node ids decide)
    a, b = (a, b) if nodes[0] == a else (b, a)
    old_port = result.replicas[1].master.port.get(timeout=TIMEOUT)
    before = result.replicas[1]
    stream = client.watch(after=client.last_event(), wait_s=5, timeout_s=TIMEOUT)
    try:
        moved = client.ask(MoveReplica("mover", 1, b, from_node=a, gpus=2))
        told = next_of(stream, ReplicaMoved)
    finally:
        stream.close()
    assert isinstance(moved, ReplicaMoved)
    assert (moved.from_node, moved.to_node) == (told.from_node, told.to_node) == (a, b)
    assert moved.placement is not None
    port = moved.placement.master.port.get(timeout=TIMEOUT)  # resolved through the service
    assert port > 0
    assert moved.placement.master.node_ip.get(timeout=TIMEOUT).count(".") == 3
    assert moved.placement.group_name == before.group_name
    assert moved.placement.attempt > before.attempt
    with pytest.raises(StalePlacementError, match="made again"):  # the host kept only the new one
        client._host.later("endpoint", before.group_name, before.attempt, 0, transform=_unwrap).get(
            timeout=TIMEOUT
        )
    landed = on_ray.bundle_nodes(group_prefix("mover"))
    assert sorted(landed.values(), key=str) == [{0: a}, {0: b}]  # the old group is gone
    view = client.ask(GetClusterView())
    assert len(view.node(a).held) == len(view.node(b).held) == 2
    again_moved = client.ask(MoveReplica("mover", 1, b, from_node=a, gpus=2))  # sent again
    assert isinstance(again_moved, ReplicaMoved)  # answered as done: nothing moved
    assert again_moved.placement is not None
    assert again_moved.placement.attempt == moved.placement.attempt
    assert again_moved.placement.master.port.get(timeout=TIMEOUT) == port
    assert on_ray.bundle_nodes(group_prefix("mover")) == landed
    with pytest.raises(StalePlacementError, match="stale"):  # back, from where it no longer is
        client.ask(MoveReplica("mover", 1, a, from_node=a, gpus=2))
    client.restart_service()  # as a crash would: the record and the new group are taken back
    again = client.ask(GetPlacement("mover"))
    assert again.result is not None
    assert sorted(x.node for x in again.result.assignments) == sorted([a, b])
    assert again.result.replicas[1].master.port.get(timeout=TIMEOUT) == port
    assert old_port > 0
    assert client.ask(Release("mover")).gpus_freed == 4


def test_the_service_moves_movable_replicas_on_ray_to_make_room_for_a_refused_place(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray tests only

    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    both = (a, b)
    first = client.ask(
        Place(
            Deployment(name="roomy-1", model="m", gpus=2),
            PlacementConstraints(gpu_nodes=both, movable=True),
        )
    )
    client.ask(
        Place(
            Deployment(name="roomy-2", model="m", gpus=2),
            PlacementConstraints(gpu_nodes=both, strategy=GpuStrategy.SPREAD, movable=True),
        )
    )
    (x,) = {p.node for p in first.assignments}
    y = b if x == a else a  # 2 GPUs held on each of gpu-a and gpu-b: no node with 4 free
    after = client.last_event()
    wide = client.ask(
        Place(
            Deployment(name="roomy-wide", model="m", gpus=4),
            PlacementConstraints(gpu_nodes=both, keep_whole=True),
        )
    )
    assert [p.node for p in wide.assignments] == [x]
    assert wide.replicas[0].master.port.get(timeout=TIMEOUT) > 0
    found, _ = client.events(after, wait_s=5)
    (moved,) = [e.event for e in found if isinstance(e.event, ReplicaMoved)]
    assert (moved.deployment, moved.from_node, moved.to_node) == ("roomy-1", x, y)
    assert moved.placement is not None
    assert moved.placement.master.port.get(timeout=TIMEOUT) > 0
    assert list(on_ray.bundle_nodes(group_prefix("roomy-1")).values()) == [{0: y}]
    for name in ("roomy-1", "roomy-2", "roomy-wide"):
        client.ask(Release(name))


@pytest.mark.parametrize("timeout_s", ["5", [1], True, float("nan"), -1.0])
def test_a_malformed_watch_timeout_is_an_invalid_spec_before_anything_is_sent(
    timeout_s: Any,
) -> None:
    client = PlacementClient(host=None)  # type: ignore[arg-type]  # nothing may reach a host
    with pytest.raises(InvalidSpecError, match="timeout_s"):
        client.watch(timeout_s=timeout_s)
    with pytest.raises(InvalidSpecError, match="timeout_s"):
        client.awatch(timeout_s=timeout_s)


async def test_an_asyncio_controller_follows_events_while_its_loop_keeps_running(
    client: PlacementClient, ray_nodes: dict[str, str]
) -> None:
    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    placed = await client.ask_later(
        Place(Deployment(name="followed", model="m"), PlacementConstraints(gpu_nodes=(a, b)))
    )
    (source,) = {x.node for x in placed.assignments}
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def follow() -> list[ServiceEvent]:
        seen = []
        async for item in client.awatch(after=None, wait_s=1.0, timeout_s=TIMEOUT):
            seen.append(item)
            if isinstance(item.event, ReplicaMoved):
                return seen
        return seen

    ticker = asyncio.create_task(tick())
    following = asyncio.create_task(follow())
    await asyncio.sleep(1.5)  # a long poll or two, with nothing to tell
    moved = await client.ask_later(MoveReplica("followed", 0, b if source == a else a))
    seen = await following
    ticker.cancel()
    (item,) = seen
    assert isinstance(item.event, ReplicaMoved)
    assert item.event.to_node == moved.to_node
    assert ticks > 20  # the loop ran through the polls (a blocked one ticks once or twice)
    found, _ = await client.events_later(0)
    assert ReplicaMoved in {type(item.event) for item in found}
    await client.ask_later(Release("followed"))
