"""One local `Place` as one decision: every replica's nodes and GPUs, or a typed refusal.

`reserve_local_replicas` is all-or-nothing on the ledger it is given. Every number that sizes
work is checked against the ledger before any replica is tried, so a decision costs
O(nodes + replicas) whatever the request says:

- a replica that no node and no even split of the allowed nodes' *capacity* can hold is refused
  at once (`NotEnoughGpusError`, ``retryable=False``);
- more replicas than the allowed nodes could ever hold are refused at once (the local ceiling);
- otherwise replicas are reserved one by one; if one does not fit, this call's own reservations
  are undone *before* the refusal is worked out, so ``available``, the rejections and
  ``retryable`` describe the ledger without them. ``retryable`` is true only when releasing other
  deployments could make the whole request fit (checked on an empty copy of the allowed nodes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from placement_actors.domain.constraints import GpuStrategy
from placement_actors.domain.errors import MAX_REJECTIONS, NoGpuNodesError, NotEnoughGpusError
from placement_actors.domain.limits import MAX_REPLICA_NODES
from placement_actors.domain.results import NodeAssignment, Rejection
from placement_actors.policies.gpu_ledger import GpuLedger
from placement_actors.policies.node_choice import (
    choose_replica_nodes,
    even_split_nodes,
    gpu_rejections,
    nodes_at_least,
)

__all__ = ["LocalRequest", "fits_on_counts", "reserve_local_replicas"]

_NEVER = "not even on an empty cluster: "


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRequest:
    """What one local `Place` asks of the ledger.

    Attributes:
        deployment: the deployment's name (the holder of its GPUs on the ledger).
        gpus: GPUs per replica.
        replicas: the deployment's replica count (for the ceiling and messages).
        indexes: the replica indexes to place now; ``None`` for all of them.
        strategy: best fit or spread.
        allowed: the nodes the deployment may use (``None``: every node of the ledger).
        avoid: nodes never to use (excluded heads).
        own: what the deployment already holds (its other replicas, when lost ones are placed
            again); counted as its own, not as someone else's, when judging ``retryable``.
        no_nodes_named: the caller gave an empty node list (for the message).
        keep_whole: never split a replica that one allowed node is large enough to hold.
        selector: the label selector that narrowed ``allowed``, as a refusal names it.
    """

    deployment: str
    gpus: int
    replicas: int
    indexes: tuple[int, ...] | None = None
    strategy: GpuStrategy = GpuStrategy.PACK
    allowed: frozenset[str] | None = None
    avoid: frozenset[str] = frozenset()
    own: tuple[NodeAssignment, ...] = ()
    no_nodes_named: bool = False
    keep_whole: bool = False
    selector: str = ""

    def splits(self, largest: int) -> bool:
        """Whether a replica may be split, on nodes of at most ``largest`` GPUs."""
        return not self.keep_whole or self.gpus > largest


def reserve_local_replicas(ledger: GpuLedger, request: LocalRequest) -> tuple[NodeAssignment, ...]:
    """Reserve every requested replica on ``ledger``, or nothing.

    Returns:
        One `NodeAssignment` per replica and node, in replica order.

    Raises:
        NoGpuNodesError: no allowed node has any GPU.
        NotEnoughGpusError: the replicas do not fit now (``retryable`` when releasing other
            deployments could make them fit) or never (``retryable=False``).
    """
    allowed, avoid, gpus = request.allowed, request.avoid, request.gpus
    wanted = request.replicas if request.indexes is None else len(request.indexes)
    indexes = range(request.replicas) if request.indexes is None else request.indexes
    free = ledger.total_free(allowed, avoid)
    short = wanted * gpus > free  # then nothing to try (nor to undo) before refusing
    split = not request.keep_whole or request.splits(ledger.max_capacity(allowed, avoid))
    # Not short: the replicas are tried at once (their number is bounded by the free GPUs);
    # why they do not fit is worked out only if they do not.
    fitted = 0 if short else _reserve_all(ledger, request, indexes, split=split)
    if not isinstance(fitted, int):
        return fitted
    capacities = ledger.capacity_histogram(allowed, avoid)
    if not any(capacities[1:]):
        raise _no_gpu_nodes(ledger, request)
    if even_split_nodes(gpus, capacities) is None:
        raise _not_enough(
            ledger,
            request,
            capacities,
            progress="",
            never=_NEVER + _no_even_split(gpus, capacities),
        )
    total, own = ledger.total_capacity(allowed, avoid), _own_in_scope(ledger, request)
    ceiling = (total - own) // gpus
    if wanted > ceiling:
        never = f"{_NEVER}the allowed nodes could hold at most {ceiling} such replicas"
        raise _not_enough(ledger, request, capacities, progress="", never=never)
    others_hold_gpus = free + own < total
    retryable = others_hold_gpus and _fits_when_empty(ledger, request, capacities, split=split)
    why_not = None if retryable else _NEVER + "releasing every other deployment would not help"
    progress = (
        f"; {free} GPUs are free on the allowed nodes, {wanted * gpus} needed"
        if short
        else f"; {fitted} of {wanted} replicas fitted"
        if fitted
        else ""
    ) + ("" if split else "; keep_whole: a replica is not split over nodes")
    raise _not_enough(ledger, request, capacities, progress=progress, never=why_not)


def _reserve_all(
    ledger: GpuLedger, request: LocalRequest, indexes: Sequence[int], *, split: bool
) -> tuple[NodeAssignment, ...] | int:
    """Every replica's assignments; or, after undoing them, how many replicas fitted."""
    assignments: list[NodeAssignment] = []
    used = {a.node for a in request.own}  # read by SPREAD; passed, never copied
    for count, replica in enumerate(indexes):
        chosen = choose_replica_nodes(
            ledger,
            request.gpus,
            strategy=request.strategy,
            allowed=request.allowed,
            avoid=request.avoid,
            used=used,
            split=split,
        )
        if chosen is None:
            for assignment in assignments:
                ledger.release(assignment.node, assignment.gpus, request.deployment)
            return count
        for node, share in chosen:
            ordinals = ledger.reserve(node, share, request.deployment)
            assignments.append(NodeAssignment(replica_index=replica, node=node, gpus=ordinals))
            used.add(node)
    return tuple(assignments)


def _refusing_nodes(ledger: GpuLedger, request: LocalRequest) -> Iterator[str]:
    """The allowed nodes that turn a replica down, in node-id order, lazily.

    Those are the nodes with fewer than ``gpus`` free (a node too small has fewer free too),
    read from the ledger's free-count index (`GpuLedger.refusing`): a refusal reads only the
    nodes it reports, not the nodes that would fit.
    """
    return ledger.refusing(request.gpus, request.allowed, request.avoid)


def _own_in_scope(ledger: GpuLedger, request: LocalRequest) -> int:
    """GPUs the deployment itself holds on the nodes it may use now (allowed, not avoided)."""
    return sum(
        len(a.gpus)
        for a in request.own
        if a.node in ledger
        and a.node not in request.avoid
        and (request.allowed is None or a.node in request.allowed)
    )


def _fits_when_empty(
    ledger: GpuLedger, request: LocalRequest, capacities: Sequence[int], *, split: bool
) -> bool:
    """Whether the request fits the allowed nodes when nobody but the deployment holds GPUs.

    Worked out on counts of nodes by free GPUs, as best fit would place the replicas on an
    empty copy of the allowed nodes (the deployment's own holdings kept): no node ids, so it
    costs O(max GPUs per node) per bucket and per split replica, not per node. ``capacities``
    is the allowed nodes' `GpuLedger.capacity_histogram` (not changed).
    """
    free = list(capacities)
    own: dict[str, int] = {}
    for assignment in request.own:
        own[assignment.node] = own.get(assignment.node, 0) + len(assignment.gpus)
    for node, held in own.items():
        if node in ledger and node not in request.avoid:
            if request.allowed is not None and node not in request.allowed:
                continue
            capacity = ledger.capacity(node)
            free[capacity] -= 1
            free[max(0, capacity - held)] += 1
    wanted = request.replicas if request.indexes is None else len(request.indexes)
    return fits_on_counts(free, request.gpus, wanted, split=split)


def fits_on_counts(free: list[int], gpus: int, replicas: int, *, split: bool = True) -> bool:
    """Whether ``replicas`` of ``gpus`` GPUs fit nodes counted by free GPUs (``free[k]``).

    Best fit, as the ledger does it: a replica goes to a node with the fewest free GPUs that
    still holds it whole (a node keeps taking replicas while it can, so each bucket is settled
    at once); when none holds it whole, to the smallest even split, fewest-free nodes first
    (only with ``split``). ``free`` is changed in place.
    """
    remaining = replicas
    for count in range(gpus, len(free)):
        if not free[count] or not remaining:
            continue
        per_node = count // gpus
        nodes = min(free[count], -(-remaining // per_node))
        remaining -= min(remaining, nodes * per_node)
        free[count] -= nodes
        free[count % gpus] += nodes
    while remaining:
        if not split:
            return False
        nnodes = even_split_nodes(gpus, free, minimum=2)
        if nnodes is None:
            return False
        share, needed = gpus // nnodes, nnodes
        for count in range(share, len(free)):
            taken = min(free[count], needed)
            free[count] -= taken
            free[count - share] += taken
            needed -= taken
            if not needed:
                break
        remaining -= 1
    return True


def _no_gpu_nodes(ledger: GpuLedger, request: LocalRequest) -> NoGpuNodesError:
    nodes = ledger.node_ids() if request.allowed is None else sorted(request.allowed)
    omitted = max(0, len(nodes) - MAX_REJECTIONS)
    nodes = nodes[:MAX_REJECTIONS]
    return NoGpuNodesError(
        f"deployment {request.deployment} needs GPUs, but no allowed node has any"
        + (" (gpu_nodes is empty)" if request.no_nodes_named else "")
        + (f" ({request.selector} narrows the nodes)" if request.selector else "")
        + (" (head exclusion is on)" if request.avoid else ""),
        deployment=request.deployment,
        rejections=tuple(
            Rejection(
                node_id=n,
                reason=(
                    "is a head node (head exclusion is on)" if n in request.avoid else "has no GPUs"
                ),
                requested=request.gpus,
                available=0,
            )
            for n in nodes
        ),
        rejections_omitted=omitted,
    )


_SPLITS_NAMED = 3
"""The even splits a refusal names when none fits even an empty cluster (the fewest nodes first)."""


def _no_even_split(gpus: int, capacities: Sequence[int]) -> str:
    """Why one replica of ``gpus`` fits no node of these capacities, nor any even split over them.

    ``capacities[k]`` counts the allowed nodes of ``k`` GPUs. Names the splits with the fewest
    nodes (at most `_SPLITS_NAMED`) and how many nodes could take each share; bounded by
    `MAX_REPLICA_NODES`, whatever ``gpus``.
    """
    at_least = nodes_at_least(capacities)
    largest = max((k for k in range(1, len(capacities)) if capacities[k]), default=0)
    fewest = max(2, -(-gpus // max(largest, 1)))
    splits = [
        (n, gpus // n, at_least[gpus // n] if gpus // n < len(at_least) else 0)
        for n in range(fewest, min(gpus, MAX_REPLICA_NODES) + 1)
        if gpus % n == 0
    ][:_SPLITS_NAMED]
    whole = f"no allowed node has {gpus} GPUs, the largest has {largest}"
    if not splits:
        return f"{whole}; an even split would need more than {MAX_REPLICA_NODES} nodes"
    named = "; ".join(
        f"{n} nodes of {share}{(' GPU' if share == 1 else ' GPUs') if i == 0 else ''}, "
        f"but only {have}"
        f"{' allowed' if i == 0 else ''} {'node has' if have == 1 else 'nodes have'} "
        f"{share} or more"
        for i, (n, share, have) in enumerate(splits)
    )
    return f"{whole}; no even split fits either: {named}"


def _not_enough(
    ledger: GpuLedger,
    request: LocalRequest,
    capacities: Sequence[int],
    *,
    progress: str,
    never: str | None,
) -> NotEnoughGpusError:
    """The refusal, worked out on the ledger as it is now (without this call's reservations).

    ``capacities`` is the allowed nodes' `GpuLedger.capacity_histogram`.
    """
    allowed, avoid, gpus = request.allowed, request.avoid, request.gpus
    free = ledger.free_histogram(allowed, avoid)
    available = next((k for k in range(len(free) - 1, -1, -1) if free[k]), 0)
    largest = next((k for k in range(len(capacities) - 1, -1, -1) if capacities[k]), 0)
    nodes = _refusing_nodes(ledger, request)
    heads = tuple(
        Rejection(
            node_id=n,
            reason="is a head node (head exclusion is on)",
            requested=gpus,
            available=ledger.free_count(n),
        )
        for n in sorted(avoid)
        if n in ledger and (allowed is None or n in allowed)
    )
    # Nodes that turn a replica down: too few free GPUs (every node with a free count < gpus).
    rejected = sum(free[: min(gpus, len(free))]) + len(heads)
    rejections = (
        heads + gpu_rejections(ledger, gpus, nodes, limit=MAX_REJECTIONS, presorted=True)
    )[:MAX_REJECTIONS]
    by_free = tuple((k, free[k]) for k in range(min(gpus, len(free))) if free[k])
    why = f" ({never})" if never else ""
    return NotEnoughGpusError(
        f"deployment {request.deployment} needs {gpus} free GPUs per replica, on one node or "
        f"split evenly over nodes; the most free on an allowed node is {available}"
        f"{why}{progress}",
        deployment=request.deployment,
        requested=gpus,
        available=available,
        largest_node=largest,
        retryable=never is None,
        rejections=rejections,
        rejections_omitted=max(0, rejected - len(rejections)),
        refusing_by_free=by_free,
    )
