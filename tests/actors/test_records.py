"""A deployment's record follows its replicas, even when the store fails for a while."""

from collections.abc import Iterator

import pykka
import pytest

from placement_actors import (
    BackendError,
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    NodeTopology,
    Place,
    PlacementResult,
    Release,
)
from placement_actors.actors.messages import NodeLost
from placement_actors.backends.protocol import MemoryCheckpoints
from placement_actors.domain.checkpoints import DeploymentCheckpoint, decode, deployment_key

TIMEOUT = 5


class FlakyStore(MemoryCheckpoints):
    """A store whose writes fail while ``down`` is set."""

    down = False

    def save(self, key: str, value: bytes) -> None:
        if self.down:
            msg = "the store is down"
            raise BackendError(msg, operation="write checkpoint")
        super().save(key, value)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def actor(store: FlakyStore) -> Iterator[pykka.ActorRef[DeploymentPlacementActor]]:
    topology = [NodeTopology(node_id=n, num_gpus=4) for n in ("gpu-a", "gpu-b")]
    ref = DeploymentPlacementActor.start(topology=topology, checkpoints=store)
    yield ref
    ref.stop(timeout=TIMEOUT)


def recorded_nodes(store: FlakyStore, name: str) -> set[str]:
    data = store.load(deployment_key(name))[deployment_key(name)]
    return {a.node for a in decode(data, DeploymentCheckpoint).assignments}


def test_a_record_that_could_not_be_rewritten_is_written_with_the_next_message(
    actor: pykka.ActorRef[DeploymentPlacementActor], store: FlakyStore
) -> None:
    placed = actor.ask(Place(Deployment(name="d", model="m", gpus=2)), timeout=TIMEOUT)
    assert isinstance(placed, PlacementResult)
    (before,) = {a.node for a in placed.assignments}
    assert recorded_nodes(store, "d") == {before}
    store.down = True
    actor.tell(NodeLost(node_id=before))  # the replica moves; its record cannot follow yet
    view = actor.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    assert recorded_nodes(store, "d") == {before}  # stale while the store is down
    store.down = False
    actor.ask(GetClusterView(), timeout=TIMEOUT)  # any message retries the write
    (after,) = recorded_nodes(store, "d")
    assert after != before


def test_a_released_deployment_is_not_written_again(
    actor: pykka.ActorRef[DeploymentPlacementActor], store: FlakyStore
) -> None:
    placed = actor.ask(Place(Deployment(name="d", model="m", gpus=2)), timeout=TIMEOUT)
    assert isinstance(placed, PlacementResult)
    store.down = True
    actor.tell(NodeLost(node_id=placed.assignments[0].node))
    actor.ask(GetClusterView(), timeout=TIMEOUT)
    store.down = False
    actor.ask(Release("d"), timeout=TIMEOUT)
    actor.ask(GetClusterView(), timeout=TIMEOUT)
    assert store.load(deployment_key("d")) == {}
