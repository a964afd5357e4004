"""Choosing a node for one replica: filter (with reasons), then pick by strategy.

The pick runs on the ledger's free-capacity index; the filter is only evaluated node by node when
nothing fits, to tell the caller every node's reason (the Kubernetes scheduler's "0/N nodes are
available: ..." report, as data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from functools import lru_cache
from itertools import islice

from placement_actors.domain.constraints import GpuStrategy
from placement_actors.domain.limits import MAX_REPLICA_NODES
from placement_actors.domain.results import Rejection
from placement_actors.policies.gpu_ledger import GpuLedger

__all__ = [
    "choose_gpu_node",
    "choose_replica_nodes",
    "even_split_nodes",
    "gpu_fit",
    "gpu_rejections",
    "nodes_at_least",
]


REJECTIONS_REMEMBERED = 4096
"""Per-node reasons kept for the next refusal that names the same node with the same counts."""


def gpu_fit(node_id: str, *, capacity: int, free: int, gpus: int) -> Rejection | None:
    """Why a node of ``capacity`` GPUs, ``free`` of them free, cannot take ``gpus``; else None."""
    return _fit(node_id, capacity, free, gpus)


@lru_cache(maxsize=REJECTIONS_REMEMBERED)
def _fit(node_id: str, capacity: int, free: int, gpus: int) -> Rejection | None:
    # Remembered: a full cluster refuses again and again, naming the same first nodes by id with
    # the same counts; a `Rejection` is frozen, so one value serves every refusal that names it.
    if capacity == 0:
        reason = "has no GPUs"
    elif capacity < gpus:
        reason = f"has {capacity} GPUs in all; a whole replica needs {gpus}"
    elif free < gpus:
        reason = f"{free} of {capacity} GPUs free, {gpus} needed"
    else:
        return None
    return Rejection(node_id=node_id, reason=reason, requested=gpus, available=free)


def gpu_rejections(
    ledger: GpuLedger,
    gpus: int,
    nodes: Iterable[str],
    *,
    limit: int | None = None,
    presorted: bool = False,
) -> tuple[Rejection, ...]:
    """Each of ``nodes``' reason for not taking ``gpus`` GPUs, in node-id order.

    With ``limit``, only the first ``limit`` rejections (by node id) are worked out; with
    ``presorted`` (``nodes`` come in node-id order already), only as many nodes are read.
    """
    rejections: list[Rejection] = []
    capacity, free_count, add = ledger.capacity, ledger.free_count, rejections.append
    left = -1 if limit is None else max(limit, 0)  # -1: no limit
    for n in nodes if presorted else sorted(nodes):
        if left == 0:
            break
        rejection = _fit(n, capacity(n), free_count(n), gpus)
        if rejection is not None:
            add(rejection)
            left -= 1
    return tuple(rejections)


_Pick = Callable[
    [GpuLedger, int, frozenset[str] | None, AbstractSet[str], AbstractSet[str]], str | None
]


def _pack(
    ledger: GpuLedger,
    gpus: int,
    allowed: frozenset[str] | None,
    avoid: AbstractSet[str],
    _used: AbstractSet[str],
) -> str | None:
    return ledger.best_fit(gpus, allowed=allowed, avoid=avoid)


def _spread(
    ledger: GpuLedger,
    gpus: int,
    allowed: frozenset[str] | None,
    avoid: AbstractSet[str],
    used: AbstractSet[str],
) -> str | None:
    fresh = ledger.least_loaded(gpus, allowed=allowed, avoid=avoid, skip=used)
    return fresh if fresh is not None else ledger.least_loaded(gpus, allowed=allowed, avoid=avoid)


_STRATEGIES: dict[GpuStrategy, _Pick] = {
    GpuStrategy.PACK: _pack,
    GpuStrategy.SPREAD: _spread,
}


def choose_gpu_node(
    ledger: GpuLedger,
    gpus: int,
    *,
    strategy: GpuStrategy = GpuStrategy.PACK,
    allowed: frozenset[str] | None = None,
    avoid: AbstractSet[str] = frozenset(),
    used: AbstractSet[str] = frozenset(),
) -> str | None:
    """The node one replica of ``gpus`` GPUs goes to, or ``None`` when no allowed node fits.

    Args:
        ledger: the free-GPU ledger.
        gpus: GPUs the replica needs on one node.
        strategy: `GpuStrategy.PACK` (best fit) or `GpuStrategy.SPREAD` (distinct nodes first).
        allowed: the nodes this placement may use; ``None`` for every node of the ledger.
        avoid: nodes never to use (excluded head nodes).
        used: nodes the same deployment already uses (read by ``SPREAD``).
    """
    return _STRATEGIES[strategy](ledger, gpus, allowed, avoid, used)


def choose_replica_nodes(
    ledger: GpuLedger,
    gpus: int,
    *,
    strategy: GpuStrategy = GpuStrategy.PACK,
    allowed: frozenset[str] | None = None,
    avoid: AbstractSet[str] = frozenset(),
    used: AbstractSet[str] = frozenset(),
    split: bool = True,
) -> tuple[tuple[str, int], ...] | None:
    """The nodes of one replica of ``gpus`` GPUs, with each node's share; ``None`` if none fits.

    One node when one has ``gpus`` free (chosen by `choose_gpu_node`). Otherwise, with ``split``,
    the smallest even split over *free* capacity: the least ``nnodes >= 2`` dividing ``gpus`` for
    which ``nnodes`` distinct nodes each have ``gpus // nnodes`` free (best-fit nodes for
    ``PACK``, least-loaded for ``SPREAD``). Never an uneven split.
    """
    node = choose_gpu_node(ledger, gpus, strategy=strategy, allowed=allowed, avoid=avoid, used=used)
    if node is not None:
        return ((node, gpus),)
    if not split:
        return None
    nnodes = even_split_nodes(gpus, ledger.free_histogram(allowed, avoid), minimum=2)
    if nnodes is None:
        return None
    share = gpus // nnodes
    most_free = strategy is GpuStrategy.SPREAD
    found = ledger.candidates(share, allowed=allowed, avoid=avoid, most_free=most_free)
    return tuple((n, share) for n in islice(found, nnodes))


def nodes_at_least(histogram: Sequence[int]) -> list[int]:
    """``histogram`` (nodes offering ``k`` GPUs, by ``k``) as nodes offering ``k`` or more."""
    at_least = list(histogram)
    for k in range(len(at_least) - 2, -1, -1):
        at_least[k] += at_least[k + 1]
    return at_least


def even_split_nodes(gpus: int, histogram: Sequence[int], *, minimum: int = 1) -> int | None:
    """The fewest nodes (at least ``minimum``) that can hold ``gpus`` in equal shares.

    ``histogram[k]`` counts the nodes offering ``k`` GPUs (free or in total, as the caller needs).
    ``nnodes`` works when it divides ``gpus`` and at least ``nnodes`` nodes offer
    ``gpus // nnodes``; at most `MAX_REPLICA_NODES` nodes. The search is bounded by that, never
    by ``gpus``: it costs O(len(histogram) + MAX_REPLICA_NODES) whatever the numbers.
    """
    at_least = nodes_at_least(histogram)
    largest = next((k for k in range(len(at_least) - 1, 0, -1) if histogram[k]), 0)
    if gpus < 1 or largest == 0:
        return None
    # Each share is at most ``largest``, so at least ceil(gpus / largest) nodes are needed.
    fewest = max(minimum, -(-gpus // largest))
    for nnodes in range(fewest, min(gpus, at_least[1], MAX_REPLICA_NODES) + 1):
        if gpus % nnodes == 0 and at_least[gpus // nnodes] >= nnodes:
            return nnodes
    return None
