"""Recovery: an earlier run's records and the cluster's live groups, reconciled without Ray."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement_actors import (
    ApiKey,
    Deployment,
    GroupStatus,
    NodeAssignment,
    PlacementConstraints,
)
from placement_actors.domain.checkpoints import (
    DeploymentCheckpoint,
    GroupCheckpoint,
    KnownEndpoint,
    LiveGroup,
    ReplicaGroup,
)
from placement_actors.domain.deployments import group_name
from placement_actors.policies.recovery import plan_recovery


def record(name: str, *replicas: tuple[int, str], ids: str = "id-") -> DeploymentCheckpoint:
    """A deployment record whose replica r is held by group ``id-r``."""
    return DeploymentCheckpoint(
        deployment=Deployment(name=name, model="m", gpus=1, replicas=3),
        constraints=PlacementConstraints(),
        assignments=tuple(NodeAssignment(replica_index=r, node=n, gpus=(0,)) for r, n in replicas),
        groups=tuple(
            ReplicaGroup(replica_index=r, group_id=f"{ids}{r}", attempt=r + 1) for r, _ in replicas
        ),
    )


def group(name: str, replica: int, node: str, group_id: str) -> GroupCheckpoint:
    return GroupCheckpoint(
        deployment=name,
        replica_index=replica,
        group_id=group_id,
        attempt=replica + 1,
        assignments=(NodeAssignment(replica_index=replica, node=node, gpus=(0,)),),
        endpoints=(KnownEndpoint(node_ip="10.0.0.1", port=40_000 + replica),),
    )


def live(name: str, replica: int, group_id: str, status: GroupStatus) -> LiveGroup:
    return LiveGroup(name=group_name(name, replica), group_id=group_id, status=status)


def by_name(*groups: GroupCheckpoint | LiveGroup) -> dict[str, object]:
    return {
        (g.name if isinstance(g, LiveGroup) else group_name(g.deployment, g.replica_index)): g
        for g in groups
    }


@pytest.mark.parametrize(
    ("status", "live_id", "alive", "kept"),
    [
        (GroupStatus.CREATED, "id-0", {"a"}, True),  # the recorded group, ready: kept
        (GroupStatus.NO_RESOURCES, "id-0", {"a"}, True),  # still pending: kept, counted
        (GroupStatus.PENDING, "id-0", {"a"}, True),
        (GroupStatus.CREATED, "id-9", {"a"}, False),  # another group of that name: not ours
        (GroupStatus.RESCHEDULING, "id-0", {"a"}, False),  # Ray lost a node under it
        (GroupStatus.CREATED, "id-0", {"b"}, False),  # its node is gone
    ],
)
def test_a_replica_is_adopted_only_when_its_very_group_lives_on_alive_nodes(
    status: GroupStatus, live_id: str, alive: set[str], *, kept: bool
) -> None:
    plan = plan_recovery(
        {"d": record("d", (0, "a"))},
        by_name(group("d", 0, "a", "id-0")),  # type: ignore[arg-type]
        by_name(live("d", 0, live_id, status)),  # type: ignore[arg-type]
        alive,
    )
    (recovered,) = plan.deployments
    assert bool(recovered.adopted) is kept
    assert recovered.missing() == ((1, 2) if kept else (0, 1, 2))
    assert plan.reap == (() if kept else (group_name("d", 0),))
    assert plan.forget == (() if kept else (group_name("d", 0),))


def test_groups_without_a_record_are_reaped_and_records_without_a_group_forgotten() -> None:
    plan = plan_recovery(
        {"d": record("d", (0, "a"), (1, "a"))},
        by_name(group("d", 0, "a", "id-0"), group("d", 1, "a", "id-1")),  # type: ignore[arg-type]
        by_name(  # type: ignore[arg-type]
            live("d", 0, "id-0", GroupStatus.CREATED),  # kept
            live("orphan", 0, "id-7", GroupStatus.CREATED),  # no deployment record: reaped
            live("gone", 0, "id-8", GroupStatus.REMOVED),  # removed already: nothing to do
        ),
        {"a"},
    )
    (recovered,) = plan.deployments
    assert [r.replica_index for r in recovered.adopted] == [0]
    assert recovered.missing() == (1, 2)  # replica 1's group is gone: placed again
    assert plan.reap == (group_name("orphan", 0),)
    assert plan.forget == (group_name("d", 1),)


def test_an_adopted_replica_keeps_its_recorded_endpoints_and_attempt() -> None:
    recorded = group("d", 2, "a", "id-2")
    plan = plan_recovery(
        {"d": record("d", (2, "a"))},
        by_name(recorded),  # type: ignore[arg-type]
        by_name(live("d", 2, "id-2", GroupStatus.CREATED)),  # type: ignore[arg-type]
        {"a"},
    )
    (adopted,) = plan.deployments[0].adopted
    assert adopted.group == recorded
    assert adopted.group.endpoints[0] == KnownEndpoint(node_ip="10.0.0.1", port=40_002)


def test_a_remote_deployment_keeps_the_replicas_whose_egress_nodes_live() -> None:
    api = DeploymentCheckpoint(
        deployment=Deployment(name="api", model="gpt-4o", replicas=2, api_key=ApiKey("sk-x")),
        constraints=PlacementConstraints(),
        assignments=(
            NodeAssignment(replica_index=0, node="e1"),
            NodeAssignment(replica_index=1, node="e2"),
        ),
    )
    plan = plan_recovery({"api": api}, {}, {}, {"e1"})
    (recovered,) = plan.deployments
    assert [(r.replica_index, r.group) for r in recovered.adopted] == [(0, None)]
    assert recovered.missing() == (1,)
    assert (plan.reap, plan.forget) == ((), ())


NODES = ("a", "b", "c")


@st.composite
def earlier_runs(
    draw: st.DrawFn,
) -> tuple[dict[str, DeploymentCheckpoint], dict[str, GroupCheckpoint], dict[str, LiveGroup]]:
    deployments: dict[str, DeploymentCheckpoint] = {}
    groups: dict[str, GroupCheckpoint] = {}
    lives: dict[str, LiveGroup] = {}
    for name in draw(st.sets(st.sampled_from(["d0", "d1", "d2", "d3"]))):
        replicas = draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=3))
        deployments[name] = record(name, *enumerate(replicas))
    for name in ("d0", "d1", "d2", "d3", "orphan"):
        for replica in range(3):
            gid = draw(st.sampled_from(["", f"id-{replica}", "id-x"]))
            if gid and draw(st.booleans()):
                node = draw(st.sampled_from(NODES))
                groups[group_name(name, replica)] = group(name, replica, node, gid)
            live_id = draw(st.sampled_from(["", f"id-{replica}", "id-x"]))
            if live_id:
                status = draw(st.sampled_from(list(GroupStatus)))
                lives[group_name(name, replica)] = live(name, replica, live_id, status)
    return deployments, groups, lives


@given(earlier_runs(), st.sets(st.sampled_from(NODES)))
def test_every_live_group_is_adopted_or_reaped_and_every_record_kept_or_forgotten(
    run: tuple[dict[str, DeploymentCheckpoint], dict[str, GroupCheckpoint], dict[str, LiveGroup]],
    alive: set[str],
) -> None:
    deployments, groups, lives = run
    plan = plan_recovery(deployments, groups, lives, alive)
    adopted = {
        group_name(d.name, r.replica_index)
        for d in plan.deployments
        for r in d.adopted
        if r.group is not None
    }
    live_names = {n for n, g in lives.items() if g.status.is_live}
    assert adopted <= live_names  # nothing is adopted that the cluster does not hold
    assert adopted.isdisjoint(plan.reap)
    assert adopted | set(plan.reap) == live_names  # no live group is left unaccounted for
    assert set(plan.forget) == set(groups) - adopted  # a record is kept only with its group
    assert [d.name for d in plan.deployments] == sorted(deployments)
    for recovered in plan.deployments:
        for replica in recovered.adopted:
            assert all(a.node in alive for a in replica.assignments)  # never on a dead node
            if replica.group is not None:
                name = group_name(recovered.name, replica.replica_index)
                assert lives[name].group_id == replica.group.group_id  # the very group recorded
                if any(replica.group.endpoints):  # endpoints only from that group's own record
                    assert groups[name].group_id == replica.group.group_id
        kept = {r.replica_index for r in recovered.adopted}
        assert kept.isdisjoint(recovered.missing())
        assert kept | set(recovered.missing()) == set(
            range(recovered.checkpoint.deployment.replicas)
        )
