"""Random Place/Release/MoveReplica sequences against a live DeploymentPlacementActor."""

from collections import Counter

import pykka
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from placement_actors import (
    ApiKey,
    CapacityError,
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    GpuStrategy,
    InvalidSpecError,
    MoveReplica,
    NodeTopology,
    Place,
    PlacementConstraints,
    PlacementResult,
    Release,
    ReplicaMoved,
)
from placement_actors.actors.messages import GetPlacement, Placement

TIMEOUT = 5
NAMES = st.sampled_from([f"d{i}" for i in range(6)])


class PlacementMachine(RuleBasedStateMachine):
    """The model: which Place is held under each name. The actor must agree with it."""

    def __init__(self) -> None:
        super().__init__()
        self.placed: dict[str, Place] = {}
        self.actor: pykka.ActorRef[DeploymentPlacementActor] | None = None

    @initialize(gpus=st.lists(st.integers(0, 8), min_size=1, max_size=6))
    def start(self, gpus: list[int]) -> None:
        topology = [NodeTopology(node_id=f"n{i}", num_gpus=n) for i, n in enumerate(gpus)]
        self.capacity = {node.node_id: node.num_gpus for node in topology}
        self.actor = DeploymentPlacementActor.start(topology=topology, egress_nodes=["n0", "e"])

    def ask(self, message: object) -> object:
        assert self.actor is not None
        return self.actor.ask(message, timeout=TIMEOUT)

    def view(self) -> ClusterView:
        view = self.ask(GetClusterView())
        assert isinstance(view, ClusterView)
        return view

    @rule(
        name=NAMES,
        gpus=st.integers(1, 9),
        replicas=st.integers(1, 3),
        spread=st.booleans(),
        remote=st.booleans(),
    )
    def place(self, name: str, gpus: int, replicas: int, spread: bool, remote: bool) -> None:  # noqa: FBT001
        if remote:
            deployment = Deployment(
                name=name, model="claude-3-haiku", replicas=replicas, api_key=ApiKey(f"k{gpus % 2}")
            )
        else:
            deployment = Deployment(name=name, model="llama", replicas=replicas, gpus=gpus)
        strategy = GpuStrategy.SPREAD if spread else GpuStrategy.PACK
        message = Place(deployment, PlacementConstraints(strategy=strategy))
        before = self.view()
        earlier = self.placed.get(name)
        try:
            result = self.ask(message)
        except InvalidSpecError:
            assert earlier is not None
            assert earlier != message
            assert self.view() == before
            return
        except CapacityError:
            assert earlier is None
            assert self.view() == before
            return
        assert isinstance(result, PlacementResult)
        assert earlier is None or earlier == message
        assert len({a.replica_index for a in result.assignments}) == replicas
        for replica in range(replicas):
            parts = [a for a in result.assignments if a.replica_index == replica]
            assert sum(len(a.gpus) for a in parts) == deployment.gpus_per_replica
            assert len({a.node for a in parts}) == len(parts)  # a split uses distinct nodes
            assert len({len(a.gpus) for a in parts}) == 1  # ... in equal shares
        if earlier is not None:
            assert self.view() == before  # idempotent: nothing new reserved
        self.placed[name] = message

    @rule(name=NAMES)
    def release(self, name: str) -> None:
        released = self.ask(Release(name))
        earlier = self.placed.pop(name, None)
        expected = (
            0
            if earlier is None
            else (earlier.deployment.gpus_per_replica * earlier.deployment.replicas)
        )
        assert released.was_placed == (earlier is not None)  # type: ignore[attr-defined]
        assert released.gpus_freed == expected  # type: ignore[attr-defined]

    def local(self) -> list[str]:
        return sorted(n for n, p in self.placed.items() if p.deployment.gpus_per_replica)

    @precondition(lambda self: self.local())
    @rule(data=st.data(), node=st.integers(0, 6))
    def move(self, data: st.DataObject, node: int) -> None:
        name = data.draw(st.sampled_from(self.local()))
        replica = data.draw(st.integers(0, 3))
        before = self.view()
        try:
            moved = self.ask(MoveReplica(name, replica, f"n{node}"))
        except (InvalidSpecError, CapacityError) as refused:
            event(f"move refused: {type(refused).__name__}")
            assert self.view() == before  # a move that cannot be made changes nothing
            return
        event("moved")
        assert isinstance(moved, ReplicaMoved)
        found = self.ask(GetPlacement(name))
        assert isinstance(found, Placement)
        assert found.result is not None
        now = [a.node for a in found.result.assignments if a.replica_index == replica]
        assert now == [f"n{node}"] != [moved.from_node]

    @invariant()
    def no_ordinal_is_held_twice_and_free_plus_held_is_capacity(self) -> None:
        if self.actor is None:
            return
        view = self.view()
        held_by: Counter[str] = Counter()
        for node in view.nodes:
            held = [h.ordinal for h in node.held]
            assert len(held) == len(set(held)), f"an ordinal is held twice on {node.node_id}"
            assert not set(held) & set(node.free_gpus)
            assert sorted([*held, *node.free_gpus]) == list(
                range(self.capacity.get(node.node_id, 0))
            )
            held_by.update(h.deployment for h in node.held)
        expected = {
            name: p.deployment.gpus_per_replica * p.deployment.replicas
            for name, p in self.placed.items()
            if p.deployment.gpus_per_replica
        }
        assert dict(held_by) == expected
        assert set(view.deployments) == set(self.placed)
        assert sum(n.remote_replicas for n in view.nodes) == sum(
            p.deployment.replicas for p in self.placed.values() if not p.deployment.gpus_per_replica
        )

    def teardown(self) -> None:
        if self.actor is not None:
            self.actor.stop(timeout=TIMEOUT)


PlacementMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
test_placement_actor_keeps_its_ledger_consistent = pytest.mark.filterwarnings("error")(
    PlacementMachine.TestCase
)
