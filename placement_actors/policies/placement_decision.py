"""One `Place` as one call: every replica's nodes (and GPUs), or a typed refusal.

`decide_placement` is the whole decision of the DeploymentPlacementActor for one deployment:
it checks the nodes the constraints name, picks the local or remote path, and reserves on the
ledgers all or nothing (`reserve_local_replicas` for GPU replicas, the egress choice for remote
ones). The actor keeps its records and talks to the planner; it never climbs back into the
policies halfway through a decision. Placing lost replicas again is the same call, with the
replica indexes to place and what the deployment still holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from placement_actors.domain.constraints import EgressKey, PlacementConstraints
from placement_actors.domain.deployments import Deployment, RemoteNetwork
from placement_actors.domain.errors import (
    MAX_REJECTIONS,
    InvalidSpecError,
    NoEgressNodesError,
    NotEnoughGpusError,
)
from placement_actors.domain.limits import DEFAULT_MAX_REMOTE_REPLICAS
from placement_actors.domain.results import NodeAssignment, Rejection
from placement_actors.policies.egress_ledger import EgressLedger
from placement_actors.policies.gpu_ledger import GpuLedger
from placement_actors.policies.rearrangement import Residents, Room, find_move_set
from placement_actors.policies.replica_placement import LocalRequest, reserve_local_replicas

__all__ = [
    "PlacementRules",
    "decide_placement",
    "egress_key",
    "egress_scope",
    "gpu_scope",
    "largest_first",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementRules:
    """The service's own settings that every decision follows.

    Attributes:
        avoid: nodes never to use for local replicas (head nodes, when head exclusion is on).
        max_remote_replicas: the most replicas one remote deployment may ask for.
    """

    avoid: frozenset[str] = frozenset()
    max_remote_replicas: int = DEFAULT_MAX_REMOTE_REPLICAS


def egress_key(deployment: Deployment) -> EgressKey | None:
    """The (provider, api key) remote replicas are counted under; ``None`` for a local one."""
    transport = deployment.transport_kind()
    if isinstance(transport, RemoteNetwork):
        return (transport.provider, deployment.api_key)
    return None


def gpu_scope(gpus: GpuLedger, constraints: PlacementConstraints) -> frozenset[str] | None:
    """The GPU nodes ``constraints`` allow: ``gpu_nodes`` narrowed by the label selector.

    ``None`` for every node. Both answers are remembered by the ledger, so the same constraints
    get the very same set back (and its own index) on every `Place`.
    """
    allowed = None if constraints.gpu_nodes is None else gpus.scope_of(constraints.gpu_nodes)
    if constraints.label_selector:
        allowed = gpus.selected(constraints.selector(), within=allowed)
    return allowed


def egress_scope(egress: EgressLedger, constraints: PlacementConstraints) -> frozenset[str] | None:
    """The egress nodes ``constraints`` allow: ``egress_nodes`` narrowed by the label selector."""
    allowed = (
        None if constraints.egress_nodes is None else egress.scope_of(constraints.egress_nodes)
    )
    if constraints.label_selector:
        allowed = egress.selected(constraints.selector(), within=allowed)
    return allowed


def largest_first(deployments: Sequence[Deployment]) -> list[int]:
    """The indexes of ``deployments``, most GPUs per replica first; ties keep their order.

    Remote deployments count 0 GPUs: they come last. Placing a batch in this order keeps small
    replicas from scattering the free GPUs a large one needs whole on one node.
    """
    return sorted(range(len(deployments)), key=lambda i: -deployments[i].gpus_per_replica)


def decide_placement(
    gpus: GpuLedger,
    egress: EgressLedger,
    deployment: Deployment,
    constraints: PlacementConstraints,
    *,
    rules: PlacementRules = PlacementRules(),
    indexes: Sequence[int] | None = None,
    own: Sequence[NodeAssignment] = (),
    named_nodes_known: bool = True,
    residents: Residents | None = None,
) -> tuple[NodeAssignment, ...]:
    """Reserve ``deployment``'s replicas on the ledgers, all or nothing, and return where they go.

    Args:
        gpus: the free-GPU ledger (changed only when the whole request fits).
        egress: the egress ledger (likewise).
        deployment: what to place.
        constraints: where it may go.
        rules: the service's settings.
        indexes: the replica indexes to place (lost replicas placed again); ``None`` for all.
        own: what the deployment still holds (its other replicas), for honest refusals.
        named_nodes_known: refuse constraints that name nodes the ledgers do not know (a new
            `Place`); ``False`` when replicas are placed again after a node was lost: a named
            node that is gone is simply not available.
        residents: the running replicas, read when a refusal could be fixed by moving some of
            them (`find_move_set`); ``None``: refusals carry no move set.

    Returns:
        One `NodeAssignment` per replica and node, in replica order.

    Raises:
        InvalidSpecError: the constraints name a node the ledgers do not know, or a remote
            deployment asks for more than ``rules.max_remote_replicas`` replicas.
        NoGpuNodesError, NotEnoughGpusError, NoEgressNodesError: it does not fit, with every
            node's reason.
    """
    unknown = _unknown_nodes(gpus, egress, constraints) if named_nodes_known else []
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""  # noqa: PLR2004
        msg = f"constraints name nodes the service does not know: {shown}{more}"
        raise InvalidSpecError(msg, field="constraints")
    key = egress_key(deployment)
    if key is not None:
        return _remote(egress, deployment, constraints, key, rules=rules, indexes=indexes)
    allowed = gpu_scope(gpus, constraints)
    request = LocalRequest(
        deployment=deployment.name,
        gpus=deployment.gpus_per_replica,
        replicas=deployment.replicas,
        indexes=None if indexes is None else tuple(indexes),
        strategy=constraints.strategy,
        allowed=allowed,
        avoid=rules.avoid,
        own=tuple(own),
        no_nodes_named=constraints.gpu_nodes == (),
        selector=_shown(constraints),
        keep_whole=constraints.keep_whole,
    )
    try:
        return reserve_local_replicas(gpus, request)
    except NotEnoughGpusError as refused:
        replicas = deployment.replicas if indexes is None else len(request.indexes or ())
        if (
            residents is None
            or not refused.retryable
            or gpus.total_free(None, rules.avoid) < request.gpus * replicas  # no move helps
        ):
            raise
        room = Room(
            gpus=request.gpus,
            replicas=replicas,
            split=not request.keep_whole,
            allowed=allowed,
            avoid=rules.avoid,
        )
        raise refused.with_moves(find_move_set(gpus, residents, room)) from None


def _unknown_nodes(
    gpus: GpuLedger, egress: EgressLedger, constraints: PlacementConstraints
) -> list[str]:
    """The nodes the constraints name that neither ledger knows, sorted.

    Each list is checked against the ledger it is for first (remembered per list, so a long list
    sent again costs O(1)), and only what that ledger does not know against the other.
    """
    unknown: set[str] = set()
    if constraints.gpu_nodes is not None:
        unknown.update(n for n in gpus.strangers(constraints.gpu_nodes) if n not in egress)
    lists = [] if constraints.egress_nodes is None else [constraints.egress_nodes]
    lists.extend(constraints.egress_preference.values())
    for nodes in lists:
        unknown.update(n for n in egress.strangers(nodes) if n not in gpus)
    return sorted(unknown)


_SHOWN_SELECTOR = 200
"""Characters of a label selector a refusal shows (one may hold over a megabyte of text)."""


def _shown(constraints: PlacementConstraints) -> str:
    """The constraints' label selector, as a refusal names it ("" when there is none)."""
    selector = constraints.label_selector
    if not selector:
        return ""
    text = str(dict(selector))
    cut = f"{text[:_SHOWN_SELECTOR]}... ({len(text):,} characters)"
    return f"label_selector {text if len(text) <= _SHOWN_SELECTOR else cut}"


def _remote(
    egress: EgressLedger,
    deployment: Deployment,
    constraints: PlacementConstraints,
    key: EgressKey,
    *,
    rules: PlacementRules,
    indexes: Sequence[int] | None,
) -> tuple[NodeAssignment, ...]:
    provider = key[0]
    if deployment.replicas > rules.max_remote_replicas:
        msg = (
            f"deployment {deployment.name} asks for more remote replicas than the service's "
            f"limit of {rules.max_remote_replicas}"
        )
        raise InvalidSpecError(msg, field="replicas")
    allowed = egress_scope(egress, constraints)
    if not (len(egress) if allowed is None else allowed):
        rejections = tuple(
            Rejection(
                node_id=n,
                reason="has no egress" if n not in egress else "its labels do not match",
                requested=1,
                available=0,
            )
            for n in sorted(constraints.egress_nodes or ())[:MAX_REJECTIONS]
        )
        picked = (
            f" ({_shown(constraints)} picks none of them)" if constraints.label_selector else ""
        )
        msg = (
            f"deployment {deployment.name} calls {provider.value}; "
            f"no allowed node has egress{picked}"
        )
        raise NoEgressNodesError(
            msg, deployment=deployment.name, provider=provider, rejections=rejections
        )
    told = frozenset(constraints.egress_preference.get(key, ()))
    wanted = list(range(deployment.replicas)) if indexes is None else list(indexes)
    nodes = egress.choose_many(
        len(wanted),
        allowed=allowed,
        preferred=told | egress.serving(key),
        strategy=constraints.egress_strategy,
    )
    egress.add_many(nodes, key)
    return tuple(
        NodeAssignment(replica_index=replica, node=node)
        for replica, node in zip(wanted, nodes, strict=True)
    )
