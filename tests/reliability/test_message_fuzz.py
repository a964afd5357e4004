"""Ten thousand generated messages, valid and not, against one live DeploymentPlacementActor.

Seeded and reproducible. Every message type of the protocol is sent, with good values, wrong
types, huge and negative numbers, odd and unicode names, and values that skipped their
constructor (as unpickled values do); by ``ask``, by ``tell``, through the typed proxy and after a
pickle round trip. After each one the actor must answer, the outcome must be a reply or a typed
`PlacementError`, and the ledger must agree with a model of what was placed: no GPU ordinal held
twice, free + held = capacity per node, every holder a placed deployment. At the end, releasing
everything gives a full ledger back. The counts are printed (``pytest -s``) and asserted.
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import queue
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from placement_actors import (
    ApiKey,
    ClusterView,
    CustomRuntime,
    DefragmentationPlan,
    Deployment,
    DeploymentPlacementActor,
    EgressStrategy,
    GetClusterView,
    GetDefragmentationPlan,
    GetPlacementFailure,
    GetReplicaGroups,
    GpuStrategy,
    InvalidSpecError,
    MoveReplica,
    NodeAssignment,
    NodeTopology,
    NotEnoughGpusError,
    Place,
    PlacedMany,
    PlaceMany,
    PlacementConstraints,
    PlacementError,
    PlacementFailure,
    PlacementGroupFailed,
    PlacementGroupReady,
    PlacementGroupTimedOut,
    PlacementResult,
    PlanReplica,
    ProviderKind,
    Release,
    Released,
    RemoveReplicaGroups,
    ReplicaFailed,
    ReplicaMoved,
    RuntimeKind,
    deployment_placement_proxy,
    group_name,
)
from placement_actors.actors.messages import (
    BundleProbed,
    BundleProbeFailed,
    GetPlacement,
    GpusInUse,
    NodeJoined,
    NodeLost,
    Placement,
    Subscribe,
)

SEED = 20261122
MESSAGES = 10_000
TIMEOUT = 10

TOPOLOGY = (
    NodeTopology(node_id="head", num_gpus=2, is_head=True, labels={"zone": "a"}),
    NodeTopology(node_id="gpu-a", num_gpus=4, labels={"zone": "a", "gpu-type": "A10G"}),
    NodeTopology(node_id="gpu-b", num_gpus=4, labels={"zone": "b", "gpu-type": "A10G"}),
    NodeTopology(node_id="gpu-c", num_gpus=8, labels={"zone": "b", "gpu-type": "H100"}),
    NodeTopology(node_id="cpu", num_gpus=0),
)
SELECTORS: tuple[object, ...] = (
    {},
    {"zone": "a"},
    {"zone": "!b"},
    {"zone": "in(a,b)", "gpu-type": "!in(T4)"},
    {"gpu-type": "H100"},
    {"rack": "r1"},  # a key no node has
    {"zone": "in(a, b)"},  # malformed from here on
    {"zone": ""},
    {"": "a"},
    {"zone": 1},
    "zone=a",
    {f"k{i}": "v" for i in range(65)},
)
EGRESS = ("head", "edge-1", "edge-2")
NODES = (*(n.node_id for n in TOPOLOGY), "edge-1", "edge-2")
NAMES = tuple(f"d{i}" for i in range(12))
ODD_NAMES = ("", " ", "a:b", "ünïcode", "x" * 129, "\x00", "[/]", "../..", "-lead", "d0 ")
HUGE = (0, -1, -(2**63), 2**63, 10**18, 10**100)
WRONG: tuple[object, ...] = (None, [], {}, "4", 4.0, True, b"x", object(), float("nan"), (1, 2))
SECRET = "sk-fuzz-planted-secret"  # noqa: S105 - planted to prove it is never shown


def forged(cls: type[Any], **fields: object) -> Any:
    """A value whose constructor never ran, as an unpickled one may be."""
    value = object.__new__(cls)
    for name, field_value in fields.items():
        object.__setattr__(value, name, field_value)
    return value


class Generator:
    """Messages of every type, from one seeded random source."""

    def __init__(
        self,
        rng: random.Random,
        placed: Callable[[], dict[str, PlacementResult]] = dict,
    ) -> None:
        self.rng = rng
        self.placed = placed  # what is placed now, for moves of running replicas

    def pick(self, options: tuple[Any, ...]) -> Any:
        return options[self.rng.randrange(len(options))]

    def name(self) -> str:
        return str(self.pick(NAMES)) if self.rng.random() < 0.9 else self.pick(ODD_NAMES)

    def number(self) -> object:
        roll = self.rng.random()
        if roll < 0.8:
            return self.rng.randint(1, 9)
        return self.pick(HUGE) if roll < 0.92 else self.pick(WRONG)

    def deployment(self) -> Any:
        remote = self.rng.random() < 0.3
        fields: dict[str, object] = {
            "name": self.name(),
            "model": self.pick(("gpt-4o", "claude-3-haiku")) if remote else "meta-llama/x",
            "replicas": self.number() if self.rng.random() < 0.5 else self.rng.randint(1, 3),
            "gpus": None if remote else self.number(),
            "runtime": self.pick((None, None, RuntimeKind.VLLM, CustomRuntime(name="mine"))),
            "api_key": ApiKey(SECRET) if remote and self.rng.random() < 0.5 else None,
        }
        if self.rng.random() < 0.08:
            fields[self.pick(tuple(fields))] = self.pick(WRONG)
        return self.build(Deployment, fields)

    def constraints(self) -> Any:
        fields: dict[str, object] = {
            "gpu_nodes": self.nodes(),
            "egress_nodes": self.nodes(),
            "egress_preference": {},
            "strategy": self.pick(tuple(GpuStrategy)),
            "egress_strategy": self.pick(tuple(EgressStrategy)),
            "keep_whole": self.rng.random() < 0.3,
            "movable": self.rng.random() < 0.4,
            "label_selector": self.pick(SELECTORS) if self.rng.random() < 0.3 else {},
        }
        if self.rng.random() < 0.1:
            key = (ProviderKind.OPENAI, ApiKey(SECRET))
            fields["egress_preference"] = {key: ("edge-2",)}
        if self.rng.random() < 0.05:
            fields["egress_preference"] = {(ProviderKind.OPENAI, SECRET): ("edge-2",)}
        if self.rng.random() < 0.05:
            fields[self.pick(tuple(fields))] = self.pick(WRONG)
        return self.build(PlacementConstraints, fields)

    def nodes(self) -> tuple[str, ...] | None:
        roll = self.rng.random()
        if roll < 0.7:
            return None
        if roll < 0.95:
            return tuple(self.rng.sample(NODES, self.rng.randint(0, 3)))
        return ("gpu-z",)  # unknown to the service

    def gpus_in_use(self) -> object:
        """A settled reading of Ray's GPUs in use: others' and the service's own groups."""
        taken = self.rng.sample((*NODES, "gpu-new"), self.rng.randint(0, 3))
        groups = [
            (group_name(name, a.replica_index), a.node, len(a.gpus))
            for name, result in self.placed().items()
            for a in result.assignments
            if a.gpus and self.rng.random() < 0.5
        ]
        fields: dict[str, object] = {
            "in_use": tuple((node, self.pick((1, 2, 4, 8, 16))) for node in taken),
            "groups": tuple(groups[:5]),
            "unsettled": self.pick(((), (), (), tuple(self.rng.sample(NODES, 1)))),
        }
        if self.rng.random() < 0.2:
            fields[self.pick(tuple(fields))] = self.pick((*WRONG, (("gpu-a", 0),), (("x",),)))
        return self.build(GpusInUse, fields)

    def cluster_change(self) -> object:
        if self.rng.random() < 0.4:
            return self.gpus_in_use()
        node_id = self.pick((*NODES, "gpu-new", "edge-new"))
        if self.rng.random() < 0.5:
            return NodeLost(node_id=node_id)
        gpus = self.pick((0, 1, 4, 8, 16))
        labels = {"zone": self.pick(("a", "b"))} if self.rng.random() < 0.7 else {}
        node = NodeTopology(
            node_id=node_id, num_gpus=gpus, is_head=node_id == "head", labels=labels
        )
        fields = {
            "node": node,
            "egress": self.rng.random() < 0.3,
            "in_use": self.pick((0, 0, 0, min(gpus, 3))),  # another user's, held as outside
        }
        if self.rng.random() < 0.1:
            fields["in_use"] = self.pick((gpus + 1, -1, True, "2"))
        return self.build(NodeJoined, fields)

    def build(self, cls: type[Any], fields: dict[str, object]) -> Any:
        """The value made properly when its fields allow, else forged past its constructor."""
        try:
            return cls(**fields)
        except PlacementError:
            return forged(cls, **fields)

    def move(self) -> object:
        placed = self.placed()
        running = [(n, a) for n, r in placed.items() for a in r.assignments]
        if running and self.rng.random() < 0.7:
            name, held = self.pick(tuple(running))
            return MoveReplica(
                name,
                held.replica_index,
                self.pick(("gpu-a", "gpu-b", "gpu-c", "gpu-c", *NODES, "gpu-z")),
                from_node=self.pick((held.node, held.node, None, "gpu-a")),
                gpus=self.pick((len(held.gpus) or None, len(held.gpus) or None, None, 1)),
            )
        fields = {
            "deployment": self.name(),
            "replica_index": self.pick((0, 1, *HUGE, *WRONG)),
            "to_node": self.pick((*NODES, "gpu-z", 5)),
            "from_node": self.pick((None, *NODES, 5)),
            "gpus": self.pick((None, 1, 4, 0, 10**9)),
        }
        return self.build(MoveReplica, fields)

    def message(self) -> object:  # noqa: C901, PLR0911 - one return per message type
        kind = self.rng.random()
        if kind < 0.03:  # the cluster changes under the service
            return self.cluster_change()
        if kind < 0.45:
            return self.build(
                Place, {"deployment": self.deployment(), "constraints": self.constraints()}
            )
        if kind < 0.65:
            return self.build(Release, {"deployment": self.name()})
        if kind < 0.70:
            return GetClusterView()
        if kind < 0.72:
            return self.build(GetPlacementFailure, {"deployment": self.pick((*NAMES, None, 7))})
        if kind < 0.74:
            fields = {
                "gpus": self.pick((None, 1, 4, 8, 0, -1, 10**9, "8", 2.5)),
                "max_moves": self.pick((1, 16, 1000, 0, 10**9, None, True)),
            }
            return self.build(GetDefragmentationPlan, fields)
        if kind < 0.78:
            return forged(Place, deployment=self.pick(WRONG), constraints=self.pick(WRONG))
        if kind < 0.82:
            fields = {
                "deployment": self.pick((*NAMES, [], None)),
                "replica_index": self.number(),
                "group_name": "placement-actors:d0:r0",
                "attempt": self.number(),
                "error": self.pick((PlacementError("lost"), ValueError("x"), None)),
            }
            return self.build(ReplicaFailed, fields)
        if kind < 0.86:
            assignment = NodeAssignment(replica_index=0, node="gpu-a", gpus=(0,))
            return self.build(
                PlanReplica,
                {"deployment": self.name(), "replica_index": 0, "assignments": (assignment,)},
            )
        if kind < 0.91:  # a batch: each Place decided as if sent alone
            places = tuple(
                self.build(
                    Place, {"deployment": self.deployment(), "constraints": self.constraints()}
                )
                for _ in range(self.rng.randint(1, 3))
            )
            return self.build(
                PlaceMany,
                {
                    "places": self.pick((places, places, (), [places])),
                    "largest_first": self.pick((False, True, True, "yes")),
                },
            )
        if kind < 0.94:
            return self.pick(
                (
                    RemoveReplicaGroups("d0"),
                    GetReplicaGroups(),
                    PlacementGroupReady(group_name="g", attempt=1),
                    PlacementGroupFailed(group_name="g", attempt=1, error=ValueError("x")),
                    PlacementGroupTimedOut(group_name="g", attempt=1),
                    BundleProbed(group_name="g", attempt=1, bundle_index=0, node_ip="1", port=1),
                    BundleProbeFailed(group_name="g", attempt=1, bundle_index=0, error=OSError()),
                    Released(deployment="d0", was_placed=True, gpus_freed=1, replicas_freed=1),
                    PlacementFailure(deployment="d0", error=None),
                )
            )
        if kind < 0.97:  # a move: of a running replica (to anywhere), or stale, or malformed
            return self.move()
        return self.pick((None, 42, "Place", {"deployment": "d0"}, [Place], b"\x00", 1.5))


class Model:
    """What the actor has placed, as its replies said; the ledger must agree with it."""

    def __init__(self) -> None:
        self.placed: dict[str, PlacementResult] = {}
        self.degraded: tuple[str, ...] = ()

    def record(self, message: object, reply: object) -> None:
        if isinstance(reply, PlacedMany):  # each outcome as the reply to its own Place
            for outcome in reply.outcomes:
                self.record(None, outcome)
            return
        if isinstance(reply, PlacementResult):
            name = reply.deployment.name
            earlier = self.placed.get(name)
            whole = earlier is not None and len(
                {a.replica_index for a in earlier.assignments}
            ) == len(range(earlier.deployment.replicas))
            # an equal Place answers the first result; one missing replicas places them again
            assert not whole or earlier.assignments == reply.assignments, "Place not idempotent"  # type: ignore[union-attr]
            self.placed[name] = reply
        elif isinstance(reply, Released):
            assert reply.was_placed == (reply.deployment in self.placed)
            self.placed.pop(reply.deployment, None)
        elif isinstance(reply, ReplicaMoved):  # the replica's GPUs are on the new node only
            assert isinstance(message, MoveReplica)
            result = self.placed[reply.deployment]
            held = [a for a in result.assignments if a.replica_index == reply.replica_index]
            if [a.node for a in held] == [message.to_node]:  # there already: answered as done
                assert message.from_node == reply.from_node != message.to_node
                assert reply.assignments == tuple(held)
                return
            assert [a.node for a in held] == [reply.from_node] != [message.to_node]
            assert [a.node for a in reply.assignments] == [message.to_node]
            assert sum(len(a.gpus) for a in reply.assignments) == len(held[0].gpus)
            kept = [a for a in result.assignments if a.replica_index != reply.replica_index]
            self.placed[reply.deployment] = dataclasses.replace(
                result, assignments=tuple(sorted((*kept, *reply.assignments), key=_replica))
            )
        elif isinstance(reply, DefragmentationPlan):  # moves name placed replicas where they run
            for move in reply.moves:
                result = self.placed[move.deployment]
                held = [a for a in result.assignments if a.replica_index == move.replica_index]
                assert [(a.node, len(a.gpus)) for a in held] == [(move.from_node, move.gpus)]
        del message

    def follow(self, view: ClusterView, ask: Callable[[object], object]) -> None:
        """After a node joined or left: what is placed now is what the actor says."""
        self.placed = {}
        for name in view.deployments:
            found = ask(GetPlacement(name))
            if isinstance(found, Placement) and found.result is not None:
                self.placed[name] = found.result

    def catch_up(self, view: ClusterView, ask: Callable[[object], object]) -> None:
        """After a tell: learn what it placed, from the actor's own record of it."""
        for name in set(view.deployments) - set(self.placed):
            found = ask(GetPlacement(name))
            assert isinstance(found, Placement)
            assert found.result is not None
            self.placed[name] = found.result
        for name in set(self.placed) - set(view.deployments):
            del self.placed[name]

    def check(self, view: ClusterView) -> None:
        assert set(view.deployments) == set(self.placed)
        expected: dict[str, dict[int, str]] = {}
        for name, result in self.placed.items():
            for assignment in result.assignments:
                for ordinal in assignment.gpus:
                    held = expected.setdefault(assignment.node, {})
                    assert ordinal not in held, f"{assignment.node}:{ordinal} held twice"
                    held[ordinal] = name
        for node in view.nodes:
            held = {h.ordinal: h.deployment for h in node.held}
            assert held == expected.get(node.node_id, {})
            assert not set(node.free_gpus) & set(held)
            assert len(node.free_gpus) + len(held) + node.outside == node.capacity


@pytest.fixture
def actor() -> Iterator[pykka.ActorRef[DeploymentPlacementActor]]:
    ref = DeploymentPlacementActor.start(
        topology=TOPOLOGY, egress_nodes=EGRESS, ignore_head_node=False, max_remote_replicas=50
    )
    yield ref
    ref.stop(timeout=TIMEOUT)


def pickled(message: object) -> object:
    """The message after a pickle round trip; a value that cannot cross stays as it is."""
    try:
        data = pickle.dumps(message)
    except (pickle.PicklingError, TypeError, AttributeError):
        return message
    return pickle.loads(data)  # noqa: S301 - our own bytes


def deliver(
    actor: pykka.ActorRef[DeploymentPlacementActor], model: Model, message: object, how: str
) -> str:
    """Send ``message`` the way ``how`` says; the outcome's name; the model follows the reply."""
    if isinstance(message, NodeJoined | NodeLost | GpusInUse) or (
        how == "tell" and isinstance(message, MoveReplica)  # told: no reply says what moved
    ):
        actor.tell(message)
        model.follow(view_of(actor), lambda m: actor.ask(m, timeout=TIMEOUT))
        return "cluster changed"
    if how == "tell":
        actor.tell(message)
        model.catch_up(view_of(actor), lambda m: actor.ask(m, timeout=TIMEOUT))
        return "told"
    reply: object
    try:
        if how == "proxy" and isinstance(message, Place):
            reply = deployment_placement_proxy(actor).place(message).get(timeout=TIMEOUT)
        else:
            reply = actor.ask(message, timeout=TIMEOUT)
    except PlacementError as exc:
        return type(exc).__name__
    model.record(message, reply)
    return type(reply).__name__


class Listener(pykka.ThreadingActor):
    """Subscribed to the actor: queues each `ReplicaMoved` it is told."""

    def __init__(self, found: queue.Queue[object]) -> None:
        super().__init__()
        self.found = found

    def on_receive(self, message: object) -> None:
        if isinstance(message, ReplicaMoved):
            self.found.put(message)


def _drained(listener: pykka.ActorRef[Listener], found: queue.Queue[object]) -> int:
    """How many moves the listener was told so far (all taken out).

    The actor tells an event before it answers the message that caused it, so an ask to the
    listener, answered after every message already in its mailbox, sees them all.
    """
    listener.ask(None, timeout=TIMEOUT)
    count = 0
    while not found.empty():
        found.get_nowait()
        count += 1
    return count


def _replica(assignment: NodeAssignment) -> int:
    return assignment.replica_index


def view_of(actor: pykka.ActorRef[DeploymentPlacementActor]) -> ClusterView:
    view = actor.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    return view


def test_ten_thousand_generated_messages_never_break_the_actor_or_its_ledger(
    actor: pykka.ActorRef[DeploymentPlacementActor], caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(SEED)
    moves: queue.Queue[object] = queue.Queue()
    listener = Listener.start(moves)
    actor.ask(Subscribe(listener), timeout=TIMEOUT)
    model = Model()
    generate = Generator(rng, lambda: model.placed)
    outcomes: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for _ in range(MESSAGES):
        message = generate.message()
        how = rng.choice(("ask", "ask", "proxy", "tell", "pickled"))
        if how == "pickled":
            try:
                message = pickled(message)
            except PlacementError:  # a value that re-checks itself while unpickled
                outcomes["refused while unpickled"] += 1
                continue
        types[type(message).__name__] += 1
        outcomes[deliver(actor, model, message, how)] += 1
        view = view_of(actor)
        if _drained(listener, moves):  # a MoveReplica, or moves the service made to make room
            outcomes["moves told"] += 1
            model.follow(view, lambda m: actor.ask(m, timeout=TIMEOUT))
        if view.degraded or model.degraded:  # lost replicas come back on any freed capacity
            model.follow(view, lambda m: actor.ask(m, timeout=TIMEOUT))
        model.degraded = view.degraded
        model.check(view)
    for name in list(model.placed):
        released = actor.ask(Release(name), timeout=TIMEOUT)
        assert isinstance(released, Released)
        assert released.was_placed
    actor.ask(GpusInUse(), timeout=TIMEOUT)  # every other user gave its GPUs back
    final = view_of(actor)
    assert final.deployments == ()
    assert all(len(n.free_gpus) == n.capacity and not n.held for n in final.nodes)
    assert SECRET not in caplog.text

    print(f"\nmessage fuzz, seed {SEED}: {sum(types.values())} messages of {len(types)} types")  # noqa: T201
    print("  outcomes:", dict(sorted(outcomes.items())))  # noqa: T201
    assert sum(types.values()) + outcomes["refused while unpickled"] >= MESSAGES
    assert len(types) >= 15  # every message type of both actors, replies and non-messages
    assert outcomes["PlacementResult"] >= 300  # valid work was done, not only refused
    assert outcomes["InvalidSpecError"] >= 500
    assert outcomes["NotEnoughGpusError"] >= 100
    assert outcomes["UnknownMessageError"] >= 100
    assert outcomes["ReplicaMoved"] >= 5  # running replicas were moved, not only refused


GOOD = Deployment(name="ok", model="meta-llama/x", gpus=1)


def _fields(value: object) -> dict[str, object]:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("name", "a:b", InvalidSpecError),  # reaping relies on names without ':'
        ("gpus", "4", InvalidSpecError),
        ("replicas", 0, InvalidSpecError),
        ("replicas", 2**63, NotEnoughGpusError),  # above what the cluster could ever hold
        ("gpus", 10**18, NotEnoughGpusError),  # a valid spec that never fits
        ("api_key", "sk-raw", InvalidSpecError),
    ],
    ids=["colon-name", "string-gpus", "no-replicas", "int64-replicas", "huge-gpus", "raw-key"],
)
def test_a_place_that_skipped_its_constructor_is_checked_on_arrival(
    actor: pykka.ActorRef[DeploymentPlacementActor],
    field: str,
    value: object,
    error: type[PlacementError],
) -> None:
    deployment = forged(Deployment, **{**_fields(GOOD), field: value})
    message = pickled(forged(Place, deployment=deployment, constraints=PlacementConstraints()))
    with pytest.raises(error) as caught:
        actor.ask(message, timeout=TIMEOUT)
    assert "sk-raw" not in str(caught.value)
    assert view_of(actor).deployments == ()


def a_mapping_that_holds_itself() -> collections.ChainMap[Any, Any]:
    looped: collections.ChainMap[Any, Any] = collections.ChainMap()
    looped.maps.append(looped)  # reading it never ends (a stdlib Mapping; it pickles)
    return looped


@pytest.mark.parametrize(
    "inside",
    [
        a_mapping_that_holds_itself(),
        collections.ChainMap(5),  # type: ignore[arg-type]  # malformed on purpose
        collections.ChainMap([[1]]),  # type: ignore[arg-type]
    ],
    ids=["holds-itself", "over-a-number", "over-a-list"],
)
def test_a_mapping_that_cannot_be_read_is_an_invalid_spec_and_the_actor_serves_on(
    actor: pykka.ActorRef[DeploymentPlacementActor], inside: object
) -> None:
    for message in (
        forged(Release, deployment=inside),
        forged(NodeLost, node_id=inside),
        forged(
            Place,
            deployment=GOOD,
            constraints=forged(
                PlacementConstraints,
                **{**_fields(PlacementConstraints()), "label_selector": inside},
            ),
        ),
    ):
        with pytest.raises(InvalidSpecError, match="malformed"):
            actor.ask(message, timeout=TIMEOUT)  # forged: checked on arrival
    assert view_of(actor).deployments == ()  # and it answers


def test_a_place_without_its_fields_is_an_invalid_spec(
    actor: pykka.ActorRef[DeploymentPlacementActor],
) -> None:
    with pytest.raises(InvalidSpecError, match="missing"):
        actor.ask(pickled(forged(Place)), timeout=TIMEOUT)
