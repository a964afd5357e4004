"""Generated messages against both actors wired together on the real Ray test cluster.

The DeploymentPlacementActor and the PlanningActor receive the messages of both (valid places and
releases, forged and malformed commands, stray events about groups that do not exist, replies and
non-messages), by ``ask`` and ``tell``. After each: both answer, every outcome is a reply or a
typed error, no GPU ordinal is held twice, and every group the planner tracks belongs to a
deployment the ledger holds. At the end everything is released and no placement group is left
alive on Ray (the ``ray_nodes`` fixture checks).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from placement_actors import (
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    GetReplicaGroups,
    NodeAssignment,
    Place,
    PlacementConstraints,
    PlacementError,
    PlanningActor,
    PlanReplica,
    Release,
    RemoveReplicaGroups,
    ReplicaFailed,
    ReplicaGroupsView,
)
from placement_actors.actors.messages import (
    BundleProbed,
    BundleProbeFailed,
    PlacementGroupFailed,
    PlacementGroupReady,
    PlacementGroupTimedOut,
)
from placement_actors.backends import ray as on_ray

SEED = 20261122
MESSAGES = 1_000
TIMEOUT = 30
NAMES = tuple(f"pf{i}" for i in range(6))

pytestmark = pytest.mark.usefixtures("ray_nodes")


def forged(cls: type[Any], **fields: object) -> Any:
    value = object.__new__(cls)
    for name, field_value in fields.items():
        object.__setattr__(value, name, field_value)
    return value


@pytest.fixture
def actors() -> Iterator[tuple[pykka.ActorRef[Any], pykka.ActorRef[Any]]]:
    planner = PlanningActor.start(backend=on_ray.RayBackend(), ready_timeout_s=20)
    placement = DeploymentPlacementActor.start(
        topology=on_ray.get_cluster_topology(),
        egress_nodes=on_ray.get_egress_nodes(),
        planner=planner,
    )
    yield placement, planner
    for name in NAMES:
        placement.ask(Release(name), timeout=TIMEOUT)
    placement.stop(timeout=TIMEOUT)
    planner.stop(timeout=TIMEOUT)


def message(rng: random.Random) -> tuple[str, object]:  # noqa: PLR0911 - one return per kind
    """A message and which actor it is for ("placement" or "planner")."""
    name = rng.choice(NAMES)
    roll = rng.random()
    if roll < 0.25:
        deployment = Deployment(
            name=name, model="m", gpus=rng.choice((1, 2, 64, 10**9)), replicas=rng.randint(1, 2)
        )
        return "placement", Place(deployment, PlacementConstraints())
    if roll < 0.45:
        return "placement", Release(name)
    if roll < 0.55:
        bad = forged(Deployment, name=name + ":x", model="m", replicas=1, gpus="1", runtime=None)
        return "placement", forged(Place, deployment=bad, constraints=PlacementConstraints())
    if roll < 0.65:
        assignment = forged(NodeAssignment, replica_index=0, node=None, gpus=(0, 0))
        plan = forged(
            PlanReplica,
            deployment=name,
            replica_index=-1,
            assignments=(assignment,),
            notify=None,
            ready_timeout_s=float("nan"),
        )
        return "planner", plan
    if roll < 0.70:
        return "planner", forged(RemoveReplicaGroups, deployment=[name], replica_indexes="0")
    if roll < 0.85:
        group = f"placement-actors:{name}:r0"
        attempt = rng.randint(0, 50)
        return "planner", rng.choice(
            (
                PlacementGroupReady(group_name=group, attempt=attempt),
                PlacementGroupFailed(group_name=group, attempt=attempt, error=OSError("x")),
                PlacementGroupTimedOut(group_name=group, attempt=attempt),
                BundleProbed(
                    group_name=group, attempt=attempt, bundle_index=9, node_ip="1", port=1
                ),
                BundleProbeFailed(
                    group_name=group, attempt=attempt, bundle_index=0, error=OSError()
                ),
                forged(PlacementGroupReady, group_name=None, attempt="1"),
            )
        )
    if roll < 0.9:
        lost = forged(
            ReplicaFailed,
            deployment=name,
            replica_index="0",
            group_name=None,
            attempt=None,
            error=None,
        )
        return "placement", lost
    return rng.choice(("placement", "planner")), rng.choice(
        (None, 7, "Place", GetReplicaGroups(), GetClusterView(), b"\xff")
    )


def check(placement: pykka.ActorRef[Any], planner: pykka.ActorRef[Any]) -> None:
    view = placement.ask(GetClusterView(), timeout=TIMEOUT)
    groups = planner.ask(GetReplicaGroups(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    assert isinstance(groups, ReplicaGroupsView)
    for node in view.nodes:
        held = [h.ordinal for h in node.held]
        assert len(held) == len(set(held))
        assert len(held) + len(node.free_gpus) == node.capacity
    assert {g.deployment for g in groups.groups} <= set(view.deployments)


def test_generated_messages_to_both_actors_on_ray_leave_ledger_and_groups_in_agreement(
    actors: tuple[pykka.ActorRef[Any], pykka.ActorRef[Any]],
) -> None:
    placement, planner = actors
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    for _ in range(MESSAGES):
        target, sent = message(rng)
        ref = placement if target == "placement" else planner
        if rng.random() < 0.2:
            ref.tell(sent)
            outcomes["told"] += 1
        else:
            try:
                reply = ref.ask(sent, timeout=TIMEOUT)
            except PlacementError as exc:
                outcomes[type(exc).__name__] += 1
            else:
                outcomes[type(reply).__name__] += 1
        check(placement, planner)
    print(f"\nplanner fuzz, seed {SEED}: {MESSAGES} messages: {dict(sorted(outcomes.items()))}")  # noqa: T201
    assert outcomes["PlacementResult"] >= 50
    assert outcomes["InvalidSpecError"] >= 200
    assert outcomes["UnknownMessageError"] >= 10
