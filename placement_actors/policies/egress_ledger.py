"""Egress nodes: how many remote replicas each runs, and which (provider, key) pairs each serves."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence

from placement_actors.domain.constraints import EgressKey, EgressStrategy
from placement_actors.domain.errors import InvalidSpecError

__all__ = ["EgressLedger"]


class EgressLedger:
    """Remote replicas per egress node, and the nodes already serving each (provider, api key)."""

    def __init__(self, egress_nodes: Iterable[str]) -> None:
        """Start with every egress node empty."""
        self._load: dict[str, int] = dict.fromkeys(sorted(set(egress_nodes)), 0)
        self._serving: dict[EgressKey, Counter[str]] = {}

    def __contains__(self, node_id: object) -> bool:
        """Whether ``node_id`` is an egress node."""
        return node_id in self._load

    def node_set(self) -> frozenset[str]:
        """Every egress node id, as a set."""
        return frozenset(self._load)

    def node_ids(self) -> list[str]:
        """Every egress node id, sorted."""
        return list(self._load)

    def load(self, node_id: str) -> int:
        """Remote replicas running on ``node_id``."""
        return self._load[node_id]

    def serving(self, key: EgressKey) -> frozenset[str]:
        """Egress nodes that already run a replica for ``key``."""
        return frozenset(self._serving.get(key, ()))

    def keys_on(self, node_id: str) -> int:
        """How many distinct (provider, api key) pairs ``node_id`` serves."""
        return sum(1 for nodes in self._serving.values() if node_id in nodes)

    def choose(self, *, allowed: Iterable[str], preferred: Iterable[str]) -> str | None:
        """The least-loaded preferred node, else the least-loaded allowed node; ties by node id.

        Args:
            allowed: egress nodes this placement may use (non-egress ids are ignored).
            preferred: nodes already serving the same (provider, api key).
        """
        candidates = [n for n in allowed if n in self._load]
        favourites = set(preferred).intersection(candidates)
        pool = [n for n in candidates if n in favourites] or candidates
        return min(pool, key=lambda n: (self._load[n], n), default=None)

    def choose_many(
        self,
        count: int,
        *,
        allowed: Iterable[str],
        preferred: Iterable[str],
        strategy: EgressStrategy = EgressStrategy.SPREAD,
    ) -> list[str]:
        """The egress nodes of ``count`` new replicas of one deployment, in replica order.

        ``SPREAD`` gives each replica a node the deployment does not use yet while there are
        enough, preferring ``preferred`` nodes (already serving the same provider and key), then
        the least-loaded, ties by node id; then goes round again. ``PACK`` keeps every replica on
        the preferred nodes (the least-loaded of them), or on the least-loaded allowed node when
        none is preferred, which then becomes preferred. Nothing is recorded: call `add` for
        each. Costs O((nodes + count) log nodes).

        Returns:
            ``count`` node ids, or an empty list when no allowed node is an egress node.
        """
        favourites = frozenset(preferred)
        candidates = dict.fromkeys(n for n in allowed if n in self._load)
        spread = strategy is EgressStrategy.SPREAD
        # (replicas of this deployment on it (spread only), not preferred, load, node id)
        heap = [(0, n not in favourites, self._load[n], n) for n in candidates]
        heapq.heapify(heap)
        chosen: list[str] = []
        while heap and len(chosen) < count:
            uses, _, load, node = heap[0]
            chosen.append(node)
            heapq.heapreplace(heap, (uses + 1 if spread else 0, False, load + 1, node))
        return chosen

    def add(self, node_id: str, key: EgressKey) -> None:
        """Count one more replica for ``key`` on ``node_id``."""
        if node_id not in self._load:
            msg = f"{node_id!r} is not an egress node"
            raise InvalidSpecError(msg, field="egress_nodes")
        self._load[node_id] += 1
        self._serving.setdefault(key, Counter())[node_id] += 1

    def add_many(self, node_ids: Sequence[str], key: EgressKey) -> None:
        """Count one more replica for ``key`` on each of ``node_ids`` (a node may repeat)."""
        strangers = [n for n in set(node_ids) if n not in self._load]
        if strangers:
            msg = f"{len(strangers)} of these nodes are not egress nodes"
            raise InvalidSpecError(msg, field="egress_nodes")
        counts = Counter(node_ids)
        for node_id, count in counts.items():
            self._load[node_id] += count
        self._serving.setdefault(key, Counter()).update(counts)

    def add_node(self, node_id: str) -> None:
        """Take an egress node that joined the cluster (no-op when it is known already)."""
        if node_id not in self._load:
            self._load[node_id] = 0
            self._load = dict(sorted(self._load.items()))

    def remove_node(self, node_id: str) -> dict[EgressKey, int]:
        """Forget an egress node that left; returns how many replicas of each key ran there."""
        if node_id not in self._load:
            return {}
        del self._load[node_id]
        lost: dict[EgressKey, int] = {}
        for key in list(self._serving):
            count = self._serving[key].pop(node_id, 0)
            if count:
                lost[key] = count
            if not self._serving[key]:
                del self._serving[key]
        return lost

    def remove(self, node_id: str, key: EgressKey) -> None:
        """Count one replica for ``key`` on ``node_id`` less."""
        nodes = self._serving.get(key)
        if nodes is None or nodes[node_id] < 1:
            msg = f"{node_id!r} runs no replica for this provider and key"
            raise InvalidSpecError(msg, field="egress_nodes")
        self._load[node_id] -= 1
        nodes[node_id] -= 1
        if nodes[node_id] == 0:
            del nodes[node_id]
        if not nodes:
            del self._serving[key]
