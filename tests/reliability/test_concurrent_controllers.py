"""Eight controller threads, a thousand Place/Release each, against one DeploymentPlacementActor.

Each thread keeps its own record of what it has placed (from the replies it got) and, every 50
operations and at the end, holds it against `GetClusterView`: its deployments hold exactly the
GPUs its replies named, and no GPU ordinal is held twice. Seeded and reproducible per thread.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator

import pykka
import pytest

from placement_actors import (
    ApiKey,
    CapacityError,
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    GpuStrategy,
    NodeTopology,
    Place,
    PlacementConstraints,
    PlacementResult,
    Release,
    Released,
)

THREADS = 8
OPERATIONS = 1_000
SEED = 7
TIMEOUT = 30
TOPOLOGY = tuple(NodeTopology(node_id=f"n{i:02}", num_gpus=(4, 8)[i % 2]) for i in range(12))
EGRESS = ("e1", "e2", "e3")


@pytest.fixture
def actor() -> Iterator[pykka.ActorRef[DeploymentPlacementActor]]:
    ref = DeploymentPlacementActor.start(topology=TOPOLOGY, egress_nodes=EGRESS)
    yield ref
    ref.stop(timeout=TIMEOUT)


def view_of(actor: pykka.ActorRef[DeploymentPlacementActor]) -> ClusterView:
    view = actor.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    return view


def holdings(view: ClusterView, names: set[str]) -> set[tuple[str, int, str]]:
    """(node, ordinal, deployment) of every GPU the deployments ``names`` hold."""
    found = set()
    for node in view.nodes:
        ordinals = [h.ordinal for h in node.held]
        assert len(ordinals) == len(set(ordinals)), f"an ordinal of {node.node_id} held twice"
        found |= {
            (node.node_id, h.ordinal, h.deployment) for h in node.held if h.deployment in names
        }
    return found


class Controller:
    """One thread's controller: its own names, its own record of what it placed."""

    def __init__(self, index: int, actor: pykka.ActorRef[DeploymentPlacementActor]) -> None:
        self.index = index
        self.actor = actor
        self.rng = random.Random(SEED * 1000 + index)
        self.names = {f"t{index}-d{i}" for i in range(6)}
        self.live: dict[str, PlacementResult] = {}
        self.outcomes: Counter[str] = Counter()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            for step in range(OPERATIONS):
                self.step()
                if step % 50 == 49:
                    self.check()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which fails
            self.failure = exc

    def step(self) -> None:
        name = self.rng.choice(sorted(self.names))
        if name in self.live and self.rng.random() < 0.6:
            released = self.actor.ask(Release(name), timeout=TIMEOUT)
            assert isinstance(released, Released)
            assert released.was_placed
            del self.live[name]
            self.outcomes["released"] += 1
            return
        place = self.place_message(name)
        try:
            result = self.actor.ask(place, timeout=TIMEOUT)
        except CapacityError:
            self.outcomes["did not fit"] += 1
            return
        except ValueError:  # placed before with another spec: release it first
            self.outcomes["placed with another spec"] += 1
            return
        assert isinstance(result, PlacementResult)
        self.live[name] = result
        self.outcomes["placed"] += 1

    def place_message(self, name: str) -> Place:
        if self.rng.random() < 0.2:
            key = ApiKey(f"sk-{self.index}")
            deployment = Deployment(
                name=name, model="gpt-4o", replicas=self.rng.randint(1, 3), api_key=key
            )
        else:
            deployment = Deployment(
                name=name,
                model="meta-llama/x",
                gpus=self.rng.choice((1, 1, 2, 4, 8, 16)),
                replicas=self.rng.randint(1, 2),
            )
        strategy = self.rng.choice(tuple(GpuStrategy))
        return Place(deployment, PlacementConstraints(strategy=strategy))

    def check(self) -> None:
        view = view_of(self.actor)
        expected = {
            (a.node, ordinal, name)
            for name, result in self.live.items()
            for a in result.assignments
            for ordinal in a.gpus
        }
        assert holdings(view, self.names) == expected
        assert set(self.live) <= set(view.deployments)
        assert not (self.names - set(self.live)) & set(view.deployments)


def test_eight_controller_threads_never_share_a_gpu_and_keep_their_own_records(
    actor: pykka.ActorRef[DeploymentPlacementActor],
) -> None:
    controllers = [Controller(i, actor) for i in range(THREADS)]
    threads = [threading.Thread(target=c.run) for c in controllers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
        assert not thread.is_alive()
    for controller in controllers:
        if controller.failure is not None:
            raise controller.failure
        controller.check()
    view = view_of(actor)
    live = {name for c in controllers for name in c.live}
    assert set(view.deployments) == live
    total: Counter[str] = sum((c.outcomes for c in controllers), Counter())
    print(f"\n{THREADS} threads x {OPERATIONS} operations: {dict(total)}")  # noqa: T201
    assert sum(total.values()) == THREADS * OPERATIONS
    assert total["placed"] >= 1000
    assert total["did not fit"] >= 100  # the cluster was kept full enough to refuse
    for name in live:
        actor.ask(Release(name), timeout=TIMEOUT)
    assert all(len(n.free_gpus) == n.capacity for n in view_of(actor).nodes)
