"""What a starting service keeps of an earlier run: checkpoints and live groups, reconciled.

A pure decision. The service wrote down each placed deployment and each replica's placement
group (`placement_actors.domain.checkpoints`); the cluster still has some of those groups, maybe
groups with no record (a run that stopped between creating a group and writing it down), and
maybe records whose group is gone (removed, or lost with its node while the service was away).
`plan_recovery` says, for every record and every live group, what the new run does with it:

- a replica whose group is live, is the very group recorded (same cluster id), is not being
  rescheduled, and whose nodes are all alive is **adopted**: its GPUs are reserved again and its
  endpoints come back (the recorded ports claimed again, bundles without a record re-probed);
- a remote replica whose nodes are all alive is adopted as it was;
- every other replica of a recorded deployment is **missing**: the service places it again;
- every live group nobody adopts is **reaped** (removed), every group record nobody adopts is
  **forgotten** (deleted), so nothing leaks and no GPU is held twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from placement_actors.domain.checkpoints import (
    DeploymentCheckpoint,
    GroupCheckpoint,
    KnownEndpoint,
    LiveGroup,
)
from placement_actors.domain.deployments import group_name
from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.results import NodeAssignment
from placement_actors.policies.placement_decision import egress_key

__all__ = ["AdoptedReplica", "RecoveredDeployment", "RecoveryPlan", "plan_recovery"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AdoptedReplica:
    """A replica the new run keeps where it is.

    Attributes:
        replica_index: which replica.
        assignments: its nodes and GPU counts (ordinals are the ledger's to number again).
        group: its placement group (local replicas), with the endpoints recorded of it (``None``
            where none were); ``None`` for a remote replica.
    """

    replica_index: int
    assignments: tuple[NodeAssignment, ...]
    group: GroupCheckpoint | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveredDeployment:
    """A recorded deployment and the replicas of it that are kept; the others are missing."""

    checkpoint: DeploymentCheckpoint
    adopted: tuple[AdoptedReplica, ...]

    @property
    def name(self) -> str:
        """The deployment's name."""
        return self.checkpoint.deployment.name

    def missing(self) -> tuple[int, ...]:
        """The replica indexes that are not kept (to be placed again)."""
        kept = {r.replica_index for r in self.adopted}
        return tuple(i for i in range(self.checkpoint.deployment.replicas) if i not in kept)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryPlan:
    """What a starting service does with an earlier run's records and the cluster's groups.

    Attributes:
        deployments: every recorded deployment, by name order, with the replicas kept.
        reap: live groups to remove (no record, a stale record, or a lost node under them).
        forget: group records to delete (their group is gone, or not adopted; an adopted
            group's record is written again when its endpoints are known).
    """

    deployments: tuple[RecoveredDeployment, ...]
    reap: tuple[str, ...]
    forget: tuple[str, ...]


def _adopted_group(
    checkpoint: DeploymentCheckpoint,
    *,
    replica: int,
    assignments: tuple[NodeAssignment, ...],
    groups: Mapping[str, GroupCheckpoint],
    live: Mapping[str, LiveGroup],
    alive: AbstractSet[str],
) -> GroupCheckpoint | None:
    """The group a local replica is kept with, or ``None`` when it must be placed again."""
    name = checkpoint.deployment.name
    gname = group_name(name, replica)
    held = next((g for g in checkpoint.groups if g.replica_index == replica), None)
    found = live.get(gname)
    if (
        held is None
        or found is None
        or found.group_id != held.group_id
        or not found.status.is_live
        or found.status is GroupStatus.RESCHEDULING
        or not all(a.node in alive for a in assignments)
    ):
        return None
    recorded = groups.get(gname)
    endpoints: tuple[KnownEndpoint | None, ...] = (None,) * len(assignments)
    if (
        recorded is not None
        and recorded.group_id == held.group_id
        and (recorded.deployment, recorded.replica_index) == (name, replica)
        and len(recorded.endpoints) == len(assignments)
    ):
        endpoints = recorded.endpoints
    return GroupCheckpoint(
        deployment=name,
        replica_index=replica,
        group_id=held.group_id,
        attempt=held.attempt,
        assignments=assignments,
        endpoints=endpoints,
    )


def plan_recovery(
    deployments: Mapping[str, DeploymentCheckpoint],
    groups: Mapping[str, GroupCheckpoint],
    live: Mapping[str, LiveGroup],
    alive: AbstractSet[str],
) -> RecoveryPlan:
    """Reconcile an earlier run's records with the cluster now.

    Args:
        deployments: deployment name -> its record.
        groups: placement-group name -> its record.
        live: placement-group name -> the group the cluster has under that name now (the
            service's groups only).
        alive: ids of the nodes alive now.
    """
    recovered: list[RecoveredDeployment] = []
    adopted_groups: set[str] = set()
    for name in sorted(deployments):
        checkpoint = deployments[name]
        by_replica: dict[int, list[NodeAssignment]] = {}
        for assignment in checkpoint.assignments:
            by_replica.setdefault(assignment.replica_index, []).append(assignment)
        remote = egress_key(checkpoint.deployment) is not None
        kept: list[AdoptedReplica] = []
        for replica, assignments in sorted(by_replica.items()):
            if remote:
                if all(a.node in alive for a in assignments):
                    kept.append(
                        AdoptedReplica(
                            replica_index=replica, assignments=tuple(assignments), group=None
                        )
                    )
                continue
            group = _adopted_group(
                checkpoint,
                replica=replica,
                assignments=tuple(assignments),
                groups=groups,
                live=live,
                alive=alive,
            )
            if group is not None:
                adopted_groups.add(group_name(name, replica))
                kept.append(
                    AdoptedReplica(
                        replica_index=replica, assignments=group.assignments, group=group
                    )
                )
        recovered.append(RecoveredDeployment(checkpoint=checkpoint, adopted=tuple(kept)))
    return RecoveryPlan(
        deployments=tuple(recovered),
        reap=tuple(
            sorted(n for n, g in live.items() if g.status.is_live and n not in adopted_groups)
        ),
        forget=tuple(sorted(n for n in groups if n not in adopted_groups)),
    )
