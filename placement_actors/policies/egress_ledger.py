"""Egress nodes: how many remote replicas each runs, and which (provider, key) pairs each serves."""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from itertools import chain, islice

from placement_actors.domain.constraints import EgressKey, EgressStrategy
from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.labels import LabelSelector
from placement_actors.domain.memo import IdentityMemo
from placement_actors.policies.label_index import LabelIndex
from placement_actors.policies.scopes import ScopedIndexes, deserves_index, leaves_out_few

__all__ = ["EgressLedger"]


class _LoadIndex:
    """Nodes by load: load -> node ids (sorted), and the loads present (sorted)."""

    __slots__ = ("by_load", "loads")

    def __init__(self, nodes: Iterable[tuple[str, int]]) -> None:
        """Index ``nodes``, given as (id, load) in node-id order."""
        self.by_load: dict[int, list[str]] = {}
        for node_id, load in nodes:
            self.by_load.setdefault(load, []).append(node_id)
        self.loads = sorted(self.by_load)

    def add(self, node_id: str, load: int) -> None:
        bucket = self.by_load.get(load)
        if bucket is None:
            self.by_load[load] = [node_id]
            bisect.insort(self.loads, load)
        else:
            bisect.insort(bucket, node_id)

    def remove(self, node_id: str, load: int) -> None:
        bucket = self.by_load[load]
        del bucket[bisect.bisect_left(bucket, node_id)]
        if not bucket:
            del self.by_load[load]
            del self.loads[bisect.bisect_left(self.loads, load)]

    def in_order(self) -> Iterator[str]:
        """Every node, least-loaded first, ties by id (lazily)."""
        return (n for load in list(self.loads) for n in self.by_load[load])


class EgressLedger:
    """Remote replicas per egress node, and the nodes already serving each (provider, api key)."""

    def __init__(
        self,
        egress_nodes: Iterable[str],
        labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """Start with every egress node empty; ``labels`` (node -> its labels) for selectors."""
        self._load: dict[str, int] = dict.fromkeys(sorted(set(egress_nodes)), 0)
        known = labels or {}
        self._labels = LabelIndex((n, known.get(n, {})) for n in self._load)
        self._serving: dict[EgressKey, Counter[str]] = {}
        # The nodes indexed by load, so the least-loaded are found without looking at every
        # node; and long node lists' own indexes.
        self._all = _LoadIndex((n, 0) for n in self._load)
        self._scoped: ScopedIndexes[_LoadIndex] = ScopedIndexes()
        self._scopes: IdentityMemo[frozenset[str]] = IdentityMemo()
        self._strangers: IdentityMemo[tuple[str, ...]] = IdentityMemo()

    def __len__(self) -> int:
        """How many egress nodes there are."""
        return len(self._load)

    def scope_of(self, nodes: tuple[str, ...] | AbstractSet[str]) -> frozenset[str]:
        """The egress nodes of ``nodes``, as a set (remembered for that very tuple or set)."""
        if type(nodes) not in {tuple, frozenset}:  # a mutable set could change: never kept
            return frozenset(n for n in nodes if n in self._load)
        found = self._scopes.get(nodes)
        if found is None:
            found = frozenset(n for n in nodes if n in self._load)
            self._scopes.put(nodes, found)
            self._scopes.put(found, found)  # the answer is its own scope
        return found

    def strangers(self, nodes: tuple[str, ...]) -> tuple[str, ...]:
        """The nodes of ``nodes`` that are not egress nodes, in list order (remembered)."""
        found = self._strangers.get(nodes)
        if found is None:
            found = self._strangers.put(nodes, tuple(n for n in nodes if n not in self._load))
        return found

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
        allowed: AbstractSet[str] | None = None,
        preferred: AbstractSet[str] = frozenset(),
        strategy: EgressStrategy = EgressStrategy.SPREAD,
    ) -> list[str]:
        """The egress nodes of ``count`` new replicas of one deployment, in replica order.

        ``SPREAD`` gives each replica a node the deployment does not use yet while there are
        enough, preferring ``preferred`` nodes (already serving the same provider and key), then
        the least-loaded, ties by node id; then goes round again, least-loaded first. ``PACK``
        keeps every replica on the preferred nodes (the least-loaded of them, each replica
        counted as it is added), or on the least-loaded allowed node when none is preferred.
        Nothing is recorded: call `add_many`.

        The least-loaded nodes come from the load index, so the cost is O(count + preferred +
        the allowed nodes left out), not O(every node): a request never pays for nodes it does
        not use, unless it asks for more replicas than there are nodes.

        Args:
            count: how many replicas.
            allowed: the egress nodes this placement may use (non-egress ids are ignored);
                ``None`` for every egress node.
            preferred: nodes already serving the same (provider, api key).
            strategy: `EgressStrategy.SPREAD` or `EgressStrategy.PACK`.

        Returns:
            ``count`` node ids, or an empty list when no allowed node is an egress node.
        """
        if allowed is not None:  # its egress nodes only (remembered for that very set)
            allowed = self.scope_of(allowed)
        size = len(self._load) if allowed is None else len(allowed)
        if size == 0 or count < 1:
            return []
        favourites = frozenset(
            n for n in preferred if n in self._load and (allowed is None or n in allowed)
        )
        if strategy is EgressStrategy.PACK:
            return self._packed(count, allowed, favourites)
        first = list(
            islice(
                chain(self._in_order(favourites, frozenset()), self._in_order(allowed, favourites)),
                min(count, size),
            )
        )
        if count <= size:
            return first
        # Every allowed node has one replica: further rounds go least-loaded first.
        again = list(self._in_order(allowed, frozenset()))
        rounds, rest = divmod(count - size, size)
        return first + again * rounds + again[:rest]

    def _packed(
        self, count: int, allowed: AbstractSet[str] | None, favourites: frozenset[str]
    ) -> list[str]:
        if not favourites:  # the least-loaded allowed node takes them all
            node = next(self._in_order(allowed, frozenset()))
            return [node] * count
        heap = [(self._load[n], n) for n in favourites]
        heapq.heapify(heap)
        chosen: list[str] = []
        for _ in range(count):
            load, node = heap[0]
            chosen.append(node)
            heapq.heapreplace(heap, (load + 1, node))
        return chosen

    def _in_order(self, nodes: AbstractSet[str] | None, skip: AbstractSet[str]) -> Iterator[str]:
        """``nodes`` (every node when ``None``) less ``skip``, least-loaded first, ties by id.

        Read lazily from a load index (a caller that stops early pays for what it read): the
        ledger's for every node or a list that leaves out few, passing over those few; a long
        list's own (`ScopedIndexes`); a short list is sorted.
        """
        if nodes is None or leaves_out_few(len(nodes), len(self._load)):
            return (
                n for n in self._all.in_order() if (nodes is None or n in nodes) and n not in skip
            )
        if deserves_index(len(nodes), len(self._load)):
            scope = frozenset(nodes)
            index = self._scoped.get(scope, lambda: self._build(scope))
            return (n for n in index.in_order() if n not in skip)
        return iter(
            sorted(
                (n for n in nodes if n not in skip and n in self._load),
                key=lambda n: (self._load[n], n),
            )
        )

    def _build(self, scope: frozenset[str]) -> tuple[_LoadIndex, frozenset[str]]:
        members = scope & self._load.keys()
        return _LoadIndex((n, self._load[n]) for n in sorted(members)), members

    def _set_load(self, node_id: str, load: int) -> None:
        """Move ``node_id`` to ``load`` in every load index that holds it."""
        old = self._load[node_id]
        if old != load:
            self._load[node_id] = load
            for index in (self._all, *self._scoped.of(node_id)):
                index.remove(node_id, old)
                index.add(node_id, load)

    def add(self, node_id: str, key: EgressKey) -> None:
        """Count one more replica for ``key`` on ``node_id``."""
        if node_id not in self._load:
            msg = f"{node_id!r} is not an egress node"
            raise InvalidSpecError(msg, field="egress_nodes")
        self._set_load(node_id, self._load[node_id] + 1)
        self._serving.setdefault(key, Counter())[node_id] += 1

    def add_many(self, node_ids: Sequence[str], key: EgressKey) -> None:
        """Count one more replica for ``key`` on each of ``node_ids`` (a node may repeat)."""
        strangers = [n for n in set(node_ids) if n not in self._load]
        if strangers:
            msg = f"{len(strangers)} of these nodes are not egress nodes"
            raise InvalidSpecError(msg, field="egress_nodes")
        counts = Counter(node_ids)
        for node_id, count in counts.items():
            self._set_load(node_id, self._load[node_id] + count)
        self._serving.setdefault(key, Counter()).update(counts)

    def selected(
        self, selector: LabelSelector, within: frozenset[str] | None = None
    ) -> frozenset[str]:
        """The egress nodes (of ``within``, when given) whose labels ``selector`` picks.

        Remembered per selector until nodes join or leave (`LabelIndex`). A node whose labels
        were not given picks only selectors that exclude.
        """
        return self._labels.selected(selector, within)

    def labels(self, node_id: str) -> Mapping[str, str]:
        """The labels ``node_id`` was given with (empty when none were)."""
        return self._labels.labels_of(node_id)

    def add_node(self, node_id: str, labels: Mapping[str, str] | None = None) -> None:
        """Take an egress node that joined the cluster (no-op when it is known already)."""
        if node_id not in self._load:
            self._labels.add(node_id, labels or {})
            self._load[node_id] = 0
            self._load = dict(sorted(self._load.items()))
            self._all.add(node_id, 0)
            self._forget_lists()

    def remove_node(self, node_id: str) -> dict[EgressKey, int]:
        """Forget an egress node that left; returns how many replicas of each key ran there."""
        if node_id not in self._load:
            return {}
        self._all.remove(node_id, self._load.pop(node_id))
        self._labels.remove(node_id)
        self._forget_lists()
        lost: dict[EgressKey, int] = {}
        for key in list(self._serving):
            count = self._serving[key].pop(node_id, 0)
            if count:
                lost[key] = count
            if not self._serving[key]:
                del self._serving[key]
        return lost

    def _forget_lists(self) -> None:
        """Nodes joined or left: what was worked out about node lists no longer holds."""
        self._scopes.clear()
        self._strangers.clear()
        self._scoped.clear()

    def remove(self, node_id: str, key: EgressKey) -> None:
        """Count one replica for ``key`` on ``node_id`` less."""
        nodes = self._serving.get(key)
        if nodes is None or nodes[node_id] < 1:
            msg = f"{node_id!r} runs no replica for this provider and key"
            raise InvalidSpecError(msg, field="egress_nodes")
        self._set_load(node_id, self._load[node_id] - 1)
        nodes[node_id] -= 1
        if nodes[node_id] == 0:
            del nodes[node_id]
        if not nodes:
            del self._serving[key]
