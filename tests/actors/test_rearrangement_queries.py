"""A refusal that moving running replicas would fix says which; a query plans defragmentation."""

from collections.abc import Iterator

import pykka
import pytest

from placement_actors import (
    DefragmentationPlan,
    Deployment,
    DeploymentPlacementActor,
    GetDefragmentationPlan,
    GetPlacementFailure,
    GpuStrategy,
    InvalidSpecError,
    MoveReplica,
    NodeTopology,
    NotEnoughGpusError,
    Place,
    PlacementConstraints,
    PlacementFailure,
    PlacementResult,
    Release,
)
from placement_actors.actors.messages import GetPlacement, Placement

TIMEOUT = 5
Ref = pykka.ActorRef[DeploymentPlacementActor]


@pytest.fixture
def actor() -> Iterator[Ref]:
    topology = [NodeTopology(node_id=f"gpu-{c}", num_gpus=4) for c in "abc"]
    topology.append(NodeTopology(node_id="head", num_gpus=4, is_head=True))
    ref = DeploymentPlacementActor.start(topology=topology, ignore_head_node=True)
    yield ref
    ref.stop(timeout=TIMEOUT)


def deployment(name: str, gpus: int) -> Deployment:
    return Deployment(name=name, model="meta-llama/Llama-3.1-8B", gpus=gpus)


def place(actor: Ref, name: str, gpus: int, **constraints: object) -> PlacementResult:
    message = Place(deployment(name, gpus), PlacementConstraints(**constraints))  # type: ignore[arg-type]
    result = actor.ask(message, timeout=TIMEOUT)
    assert isinstance(result, PlacementResult)
    return result


def node_of(actor: Ref, name: str) -> str:
    found = actor.ask(GetPlacement(name), timeout=TIMEOUT)
    assert isinstance(found, Placement)
    assert found.result is not None
    (assignment,) = found.result.assignments
    return assignment.node


def scatter(actor: Ref) -> None:
    """Two free GPUs on each of three nodes: six free, no node with four."""
    for name in ("a", "b", "c"):
        place(actor, name, 2, strategy=GpuStrategy.SPREAD)
    assert {node_of(actor, name) for name in ("a", "b", "c")} == {"gpu-a", "gpu-b", "gpu-c"}


def test_a_kept_whole_replica_refused_on_scattered_gpus_is_told_which_replica_to_move(
    actor: Ref,
) -> None:
    scatter(actor)
    with pytest.raises(NotEnoughGpusError, match="would make room") as caught:
        place(actor, "wide", 4, keep_whole=True)
    refusal = caught.value
    assert refusal.retryable
    (move,) = refusal.moves
    assert node_of(actor, move.deployment) == move.from_node
    assert move.gpus == 2
    assert move.from_node != move.to_node
    failure = actor.ask(GetPlacementFailure("wide"), timeout=TIMEOUT)
    assert isinstance(failure, PlacementFailure)
    assert isinstance(failure.error, NotEnoughGpusError)
    assert failure.error.moves == refusal.moves
    # Carrying the move out makes the refused Place fit.
    actor.ask(MoveReplica.of(move), timeout=TIMEOUT)
    assert node_of(actor, move.deployment) == move.to_node
    assert place(actor, "wide", 4, keep_whole=True).assignments[0].node == move.from_node


def test_keep_whole_refuses_what_the_default_would_split(actor: Ref) -> None:
    scatter(actor)
    with pytest.raises(NotEnoughGpusError, match="keep_whole") as caught:
        place(actor, "wide", 4, keep_whole=True)
    assert caught.value.retryable
    split = place(actor, "wide", 4)
    assert len(split.assignments) == 2


def test_a_refusal_no_move_could_fix_carries_no_moves(actor: Ref) -> None:
    for name in ("a", "b", "c"):
        place(actor, name, 4)
    with pytest.raises(NotEnoughGpusError) as caught:
        place(actor, "more", 1)
    assert caught.value.moves == ()


def test_a_defragmentation_plan_names_placed_replicas_and_keeps_them_off_the_head(
    actor: Ref,
) -> None:
    scatter(actor)
    plan = actor.ask(GetDefragmentationPlan(), timeout=TIMEOUT)
    assert isinstance(plan, DefragmentationPlan)
    assert plan.gpus == 4
    assert plan.moves
    assert len(plan.freed_nodes) >= 1
    for move in plan.moves:
        assert node_of(actor, move.deployment) == move.from_node
        assert move.to_node != "head"
    assert not set(plan.freed_nodes) & {m.to_node for m in plan.moves}


def test_a_plan_respects_the_nodes_each_moved_deployment_may_use(actor: Ref) -> None:
    for name, node in (("a", "gpu-a"), ("b", "gpu-b"), ("c", "gpu-c")):
        place(actor, name, 2, gpu_nodes=(node,))
    plan = actor.ask(GetDefragmentationPlan(), timeout=TIMEOUT)
    assert isinstance(plan, DefragmentationPlan)
    assert plan.moves == ()
    assert plan.freed_nodes == ()


@pytest.mark.parametrize(
    "fields", [{"gpus": 0}, {"max_moves": 0}, {"max_moves": 10**9}, {"gpus": 10**9}]
)
def test_a_plan_query_out_of_range_is_refused_and_the_actor_keeps_serving(
    actor: Ref, fields: dict[str, int]
) -> None:
    forged = object.__new__(GetDefragmentationPlan)
    for key, value in {"gpus": None, "max_moves": 16, **fields}.items():
        object.__setattr__(forged, key, value)
    with pytest.raises(InvalidSpecError):
        actor.ask(forged, timeout=TIMEOUT)
    plan = actor.ask(GetDefragmentationPlan(), timeout=TIMEOUT)
    assert isinstance(plan, DefragmentationPlan)


def test_a_move_set_names_no_replica_whose_deployment_may_use_only_its_own_node() -> None:
    topology = [NodeTopology(node_id=f"gpu-{c}", num_gpus=4, labels={"rack": c}) for c in "abcd"]
    ref = DeploymentPlacementActor.start(topology=topology)
    try:
        place(ref, "listed", 2, gpu_nodes=("gpu-a", "gpu-a"))
        place(ref, "labelled", 2, label_selector={"rack": "b"})
        place(ref, "pinned", 2, gpu_nodes=("gpu-c",))
        place(ref, "filler", 2, gpu_nodes=("gpu-a",))
        place(ref, "free", 2, gpu_nodes=("gpu-d", "gpu-a"))
        assert node_of(ref, "free") == "gpu-d"
        with pytest.raises(NotEnoughGpusError) as caught:
            place(ref, "wide", 4, keep_whole=True, gpu_nodes=("gpu-b", "gpu-c", "gpu-d"))
        assert caught.value.moves == ()  # "free" could go only to gpu-a, which is full
        ref.ask(Release("filler"), timeout=TIMEOUT)
        with pytest.raises(NotEnoughGpusError) as caught:
            place(ref, "wide", 4, keep_whole=True, gpu_nodes=("gpu-b", "gpu-c", "gpu-d"))
        (move,) = caught.value.moves
        assert (move.deployment, move.from_node, move.to_node) == ("free", "gpu-d", "gpu-a")
    finally:
        ref.stop(timeout=TIMEOUT)
