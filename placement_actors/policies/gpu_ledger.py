"""The free-GPU ledger: which GPU ordinals of which node are free, and who holds the rest.

The ledger is indexed by free capacity: nodes sit in buckets keyed by their free-GPU count, each
bucket sorted by node id. A best-fit or least-loaded query walks buckets (at most one per possible
free count, a small number) instead of every node, so a decision costs about the same on 10 nodes
and on 10,000. A node list that a placement is limited to (``allowed``: a `gpu_nodes` list, the
nodes a label selector picks) gets an index of its own once it is long enough, kept up to date
with every reservation, so a list of half the cluster costs what the whole cluster does. It is a
plain, deterministic data structure: no clock, no I/O, no threads; the actor that owns it
serialises access.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.labels import LabelSelector
from placement_actors.domain.memo import IdentityMemo
from placement_actors.domain.topology import NodeTopology
from placement_actors.policies.label_index import LabelIndex
from placement_actors.policies.scopes import ScopedIndexes, deserves_index, leaves_out_few

__all__ = ["GpuLedger"]


class _Index:
    """Nodes in buckets by free GPUs (each bucket sorted by id), counts by capacity, and totals.

    ``members`` answers ``in`` for the nodes indexed (the ledger's own node table for the index
    of every node, a set for the index of one node list).
    """

    __slots__ = ("by_capacity", "by_free", "members", "total_capacity", "total_free")

    def __init__(
        self,
        members: AbstractSet[str] | dict[str, NodeTopology],
        nodes: Iterable[tuple[str, int, int]],
        max_capacity: int,
    ) -> None:
        """Index ``nodes``, given as (id, capacity, free) in node-id order."""
        self.members = members
        self.by_free: list[list[str]] = [[] for _ in range(max_capacity + 1)]
        self.by_capacity: list[int] = [0] * (max_capacity + 1)
        self.total_capacity = 0
        self.total_free = 0
        for node_id, capacity, free in nodes:
            self.by_free[free].append(node_id)
            self.by_capacity[capacity] += 1
            self.total_capacity += capacity
            self.total_free += free

    def grow(self, max_capacity: int) -> None:
        """Make room for nodes of up to ``max_capacity`` GPUs."""
        grow = max_capacity + 1 - len(self.by_free)
        if grow > 0:
            self.by_free.extend([] for _ in range(grow))
            self.by_capacity.extend([0] * grow)

    def add(self, node_id: str, capacity: int, free: int) -> None:
        bisect.insort(self.by_free[free], node_id)
        self.by_capacity[capacity] += 1
        self.total_capacity += capacity
        self.total_free += free

    def remove(self, node_id: str, capacity: int, free: int) -> None:
        bucket = self.by_free[free]
        del bucket[bisect.bisect_left(bucket, node_id)]
        self.by_capacity[capacity] -= 1
        self.total_capacity -= capacity
        self.total_free -= free

    def move(self, node_id: str, old_free: int, new_free: int) -> None:
        old_bucket = self.by_free[old_free]
        del old_bucket[bisect.bisect_left(old_bucket, node_id)]
        bisect.insort(self.by_free[new_free], node_id)
        self.total_free += new_free - old_free


_View = tuple[_Index | None, frozenset[str] | None, AbstractSet[str]]
"""How a query reads its nodes: an index (less the nodes to avoid), or a short list to walk."""


class GpuLedger:
    """Free and held GPU ordinals per node, with best-fit and least-loaded look-ups."""

    def __init__(self, topology: Iterable[NodeTopology]) -> None:
        """Start with every GPU of every node free.

        Raises:
            InvalidSpecError: two nodes share an id.
        """
        self._nodes: dict[str, NodeTopology] = {}
        for node in topology:
            if node.node_id in self._nodes:
                msg = f"node {node.node_id} appears twice in the topology"
                raise InvalidSpecError(msg, field="node_id")
            self._nodes[node.node_id] = node
        self._sorted_ids = sorted(self._nodes)
        self._node_set = frozenset(self._nodes)
        self._max_capacity = max((n.num_gpus for n in self._nodes.values()), default=0)
        self._free: dict[str, list[int]] = {
            node_id: list(range(node.num_gpus)) for node_id, node in self._nodes.items()
        }
        self._held: dict[str, dict[int, str]] = {node_id: {} for node_id in self._nodes}
        self._all = _Index(
            self._nodes,
            ((n, self._nodes[n].num_gpus, self._nodes[n].num_gpus) for n in self._sorted_ids),
            self._max_capacity,
        )
        self._scoped: ScopedIndexes[_Index] = ScopedIndexes()  # long node lists' own indexes
        self._labels = LabelIndex((n.node_id, n.labels) for n in self._nodes.values())
        # Answers about long node lists, by the list's identity (cleared when nodes change).
        self._scopes: IdentityMemo[frozenset[str]] = IdentityMemo()
        self._left_out: IdentityMemo[frozenset[str]] = IdentityMemo()
        self._strangers: IdentityMemo[tuple[str, ...]] = IdentityMemo()

    # -- queries ---------------------------------------------------------------------------------

    def __contains__(self, node_id: object) -> bool:
        """Whether the ledger knows ``node_id``."""
        return node_id in self._nodes

    def __len__(self) -> int:
        """How many nodes the ledger knows."""
        return len(self._nodes)

    def node_ids(self) -> list[str]:
        """Every node id, sorted."""
        return list(self._sorted_ids)

    def scope_of(self, nodes: tuple[str, ...]) -> frozenset[str]:
        """The nodes of ``nodes`` the ledger knows, as a set.

        Remembered for that very tuple until nodes join or leave: a controller that sends the
        same list of thousands of nodes with every `Place` pays for it once.
        """
        found = self._scopes.get(nodes)
        if found is None:
            found = self._scopes.put(nodes, frozenset(nodes) & self._node_set)
        return found

    def selected(
        self, selector: LabelSelector, within: frozenset[str] | None = None
    ) -> frozenset[str]:
        """The nodes (of ``within``, when given) whose labels ``selector`` picks.

        From the ledger's `LabelIndex`: remembered per selector until nodes join or leave, so
        the same set comes back each time (and its own free-count index is kept, `_view`).
        """
        return self._labels.selected(selector, within)

    def strangers(self, nodes: tuple[str, ...]) -> tuple[str, ...]:
        """The nodes of ``nodes`` the ledger does not know, in list order (remembered, as above)."""
        found = self._strangers.get(nodes)
        if found is None:
            known = self._node_set
            found = self._strangers.put(nodes, tuple(n for n in nodes if n not in known))
        return found

    def sorted_ids(self) -> Sequence[str]:
        """Every node id, sorted: a read-only view (no copy), for walks that stop early."""
        return _ReadOnly(self._sorted_ids)

    def with_free(self, count: int, allowed: frozenset[str] | None = None) -> Iterator[str]:
        """The nodes (of ``allowed``) with exactly ``count`` free GPUs, by id, lazily.

        From an index when the list has one (or leaves out few nodes); a short list is walked.
        """
        if not 0 <= count <= self._max_capacity:
            return iter(())
        index, nodes, avoid = self._view(allowed, frozenset())
        if index is None:
            assert nodes is not None  # noqa: S101 - a view is an index or a list
            return (n for n in sorted(nodes) if n in self._nodes and self.free_count(n) == count)
        bucket = index.by_free[count] if count < len(index.by_free) else []
        return (n for n in bucket if n not in avoid) if avoid else iter(bucket)

    def refusing(
        self,
        gpus: int,
        allowed: frozenset[str] | None = None,
        avoid: AbstractSet[str] = frozenset(),
    ) -> Iterator[str]:
        """The nodes (of ``allowed``, less ``avoid``) with fewer than ``gpus`` free, by id, lazily.

        From an index, the buckets below ``gpus`` (each in node-id order) are merged: a caller
        that stops after a few nodes reads only those, not the nodes that would fit.
        """
        index, nodes, avoid = self._view(allowed, avoid)
        if index is None:
            assert nodes is not None  # noqa: S101 - a view is an index or a list
            return (
                n
                for n in sorted(nodes)
                if n in self._nodes and n not in avoid and self.free_count(n) < gpus
            )
        buckets = [b for b in index.by_free[: max(0, min(gpus, len(index.by_free)))] if b]
        below = iter(buckets[0]) if len(buckets) == 1 else heapq.merge(*buckets)
        return (n for n in below if n not in avoid) if avoid else below

    def node_set(self) -> frozenset[str]:
        """Every node id, as a set (for set operations on node lists)."""
        return self._node_set

    def topology(self, node_id: str) -> NodeTopology:
        """The node as it was given to the ledger."""
        return self._nodes[node_id]

    def capacity(self, node_id: str) -> int:
        """Total GPUs of ``node_id``."""
        return self._nodes[node_id].num_gpus

    def free_count(self, node_id: str) -> int:
        """Free GPUs of ``node_id``."""
        return len(self._free[node_id])

    def free_ordinals(self, node_id: str) -> tuple[int, ...]:
        """The free GPU ordinals of ``node_id``, ascending."""
        return tuple(self._free[node_id])

    def holders(self, node_id: str) -> dict[int, str]:
        """Held ordinal -> holder on ``node_id`` (a copy)."""
        return dict(sorted(self._held[node_id].items()))

    def holder_names(self, node_id: str) -> set[str]:
        """The holders of GPUs on ``node_id`` (a new set)."""
        return set(self._held[node_id].values())

    def max_free(
        self, allowed: frozenset[str] | None = None, avoid: AbstractSet[str] = frozenset()
    ) -> int:
        """The most free GPUs any node (of ``allowed``, when given, less ``avoid``) has."""
        return _largest(self.free_histogram(allowed, avoid))

    def max_capacity(
        self, allowed: frozenset[str] | None = None, avoid: AbstractSet[str] = frozenset()
    ) -> int:
        """The most GPUs any node (of ``allowed``, when given, less ``avoid``) has in total.

        Of the nodes there now: the index keeps room for the largest node there ever was.
        """
        return _largest(self.capacity_histogram(allowed, avoid))

    def total_capacity(
        self, allowed: frozenset[str] | None = None, avoid: AbstractSet[str] = frozenset()
    ) -> int:
        """GPUs in total on the nodes of ``allowed`` (every node when ``None``), less ``avoid``.

        Every query that takes ``allowed`` reads it through `_view`: O(1 + len(avoid)) from an
        index (every node, most nodes, or a long list's own), O(len(allowed)) for a short list.
        """
        index, nodes, avoid = self._view(allowed, avoid)
        if index is not None:
            return index.total_capacity - sum(self.capacity(n) for n in avoid if n in index.members)
        assert nodes is not None  # noqa: S101 - a view is an index or a list
        return sum(self.capacity(n) for n in nodes if n in self._nodes and n not in avoid)

    def total_free(
        self, allowed: frozenset[str] | None = None, avoid: AbstractSet[str] = frozenset()
    ) -> int:
        """Free GPUs on the nodes of ``allowed`` (every node when ``None``), less ``avoid``."""
        index, nodes, avoid = self._view(allowed, avoid)
        if index is not None:
            return index.total_free - sum(self.free_count(n) for n in avoid if n in index.members)
        assert nodes is not None  # noqa: S101 - a view is an index or a list
        return sum(self.free_count(n) for n in nodes if n in self._nodes and n not in avoid)

    def capacity_histogram(
        self, allowed: frozenset[str] | None = None, avoid: AbstractSet[str] = frozenset()
    ) -> list[int]:
        """How many nodes have each total GPU count: entry ``k`` counts nodes of ``k`` GPUs.

        O(max capacity + len(avoid)) from an index, O(len(allowed)) for a short list.
        """
        index, nodes, avoid = self._view(allowed, avoid)
        counts = [0] * (self._max_capacity + 1) if index is None else list(index.by_capacity)
        self._count(self.capacity, counts, index, nodes, avoid)
        return counts

    def free_histogram(
        self, allowed: frozenset[str] | None = None, avoid: AbstractSet[str] = frozenset()
    ) -> list[int]:
        """How many nodes have each free GPU count: entry ``k`` counts nodes with ``k`` free."""
        index, nodes, avoid = self._view(allowed, avoid)
        counts = (
            [0] * (self._max_capacity + 1)
            if index is None
            else [len(bucket) for bucket in index.by_free]
        )
        self._count(self.free_count, counts, index, nodes, avoid)
        return counts

    def _count(
        self,
        count_of: Callable[[str], int],
        counts: list[int],
        index: _Index | None,
        nodes: frozenset[str] | None,
        avoid: AbstractSet[str],
    ) -> None:
        """Take the avoided nodes off an index's ``counts``, or count a short list's nodes."""
        if index is not None:
            for node_id in avoid:
                if node_id in index.members:
                    counts[count_of(node_id)] -= 1
            return
        assert nodes is not None  # noqa: S101 - a view is an index or a list
        for node_id in nodes:
            if node_id in self._nodes and node_id not in avoid:
                counts[count_of(node_id)] += 1

    def _view(self, allowed: frozenset[str] | None, avoid: AbstractSet[str]) -> _View:
        """How to read the nodes of ``allowed`` less ``avoid``: from which index, or by walking.

        - every node (``None``): the ledger's index;
        - a list that leaves out few nodes (`leaves_out_few`): the ledger's index, less the
          nodes left out (remembered per list), so a list of 9,999 of 10,000 nodes costs what
          the one left out costs;
        - a long list (`deserves_index`): an index of its own, built once (O(list)) and kept up
          to date with every reservation (`ScopedIndexes`);
        - a shorter list: walked node by node.
        """
        if allowed is None:
            return self._all, None, avoid
        if leaves_out_few(len(allowed), len(self._nodes)):
            left_out = self._left_out.get(allowed)
            if left_out is None:
                left_out = self._left_out.put(allowed, self._node_set - allowed)
            return self._all, None, (left_out | avoid) if avoid else left_out
        if not deserves_index(len(allowed), len(self._nodes)):
            return None, allowed, avoid
        return self._scoped.get(allowed, lambda: self._build(allowed)), None, avoid

    def _build(self, allowed: frozenset[str]) -> tuple[_Index, frozenset[str]]:
        members = allowed & self._node_set
        nodes = ((n, self.capacity(n), self.free_count(n)) for n in sorted(members))
        return _Index(members, nodes, self._max_capacity), members

    def best_fit(
        self,
        gpus: int,
        *,
        allowed: frozenset[str] | None = None,
        avoid: AbstractSet[str] = frozenset(),
    ) -> str | None:
        """The node left with the fewest free GPUs after taking ``gpus``; ties by node id.

        Args:
            gpus: GPUs needed on one node.
            allowed: only these nodes, or every node when ``None``.
            avoid: nodes to pass over.
        """
        return next(self.candidates(gpus, allowed=allowed, avoid=avoid), None)

    def least_loaded(
        self,
        gpus: int,
        *,
        allowed: frozenset[str] | None = None,
        avoid: AbstractSet[str] = frozenset(),
        skip: AbstractSet[str] = frozenset(),
    ) -> str | None:
        """The node with the most free GPUs that has at least ``gpus`` free; ties by node id."""
        found = self.candidates(gpus, allowed=allowed, avoid=avoid, skip=skip, most_free=True)
        return next(found, None)

    def candidates(
        self,
        gpus: int,
        *,
        allowed: frozenset[str] | None = None,
        avoid: AbstractSet[str] = frozenset(),
        skip: AbstractSet[str] = frozenset(),
        most_free: bool = False,
    ) -> Iterator[str]:
        """Nodes with ``gpus`` or more free: fewest free first (most free first with ``most_free``).

        Ties are broken by node id. Without ``allowed`` the walk runs over the free-capacity index
        and stops as soon as the caller has what it needs. Nodes in ``avoid`` or ``skip`` are
        passed over (two sets, so callers never build their union).
        """
        index, nodes, avoid = self._view(allowed, avoid)
        if index is None:
            assert nodes is not None  # noqa: S101 - a view is an index or a list
            fits = [
                n
                for n in nodes
                if n in self._nodes
                and n not in avoid
                and n not in skip
                and self.free_count(n) >= gpus
            ]
            sign = -1 if most_free else 1
            yield from sorted(fits, key=lambda n: (sign * self.free_count(n), n))
            return
        counts = range(max(gpus, 0), len(index.by_free))
        for free in reversed(counts) if most_free else counts:
            for node_id in index.by_free[free]:
                if node_id not in avoid and node_id not in skip:
                    yield node_id

    # -- changes ---------------------------------------------------------------------------------

    def reserve(self, node_id: str, gpus: int, holder: str) -> tuple[int, ...]:
        """Hand ``gpus`` of the lowest free ordinals of ``node_id`` to ``holder``.

        Raises:
            InvalidSpecError: the node is unknown, ``gpus`` < 1, or too few GPUs are free.
        """
        free = self._free_list(node_id)
        if gpus < 1 or gpus > len(free):
            msg = f"cannot reserve {gpus} GPUs on {node_id}: {len(free)} free"
            raise InvalidSpecError(msg, field="gpus")
        taken, rest = free[:gpus], free[gpus:]
        self._move(node_id, len(free), len(rest))
        self._free[node_id] = rest
        held = self._held[node_id]
        for ordinal in taken:
            held[ordinal] = holder
        return tuple(taken)

    def hold(self, node_id: str, ordinals: Iterable[int], holder: str) -> tuple[int, ...]:
        """Hand ``holder`` those of ``ordinals`` of ``node_id`` that are free; returns them.

        For GPUs known to be taken already (a placement group that still stands on a node that
        joined again): ordinals held by someone else, or that the node does not have, are left.

        Raises:
            InvalidSpecError: the node is unknown.
        """
        free = self._free_list(node_id)
        taken = tuple(sorted(set(ordinals) & set(free)))
        if taken:
            before = len(free)
            self._free[node_id] = [o for o in free if o not in taken]
            held = self._held[node_id]
            for ordinal in taken:
                held[ordinal] = holder
            self._move(node_id, before, before - len(taken))
        return taken

    def release(self, node_id: str, ordinals: Iterable[int], holder: str) -> None:
        """Give back ``ordinals`` of ``node_id`` that ``holder`` holds.

        Raises:
            InvalidSpecError: the node is unknown or an ordinal is not held by ``holder``.
        """
        free = self._free_list(node_id)
        held = self._held[node_id]
        wanted = list(ordinals)
        strangers = [o for o in wanted if held.get(o) != holder]
        if strangers or len(set(wanted)) != len(wanted):
            msg = f"{holder} does not hold GPUs {strangers} on {node_id}"
            raise InvalidSpecError(msg, field="gpus")
        before = len(free)
        for ordinal in wanted:
            del held[ordinal]
            bisect.insort(free, ordinal)
        self._move(node_id, before, len(free))

    def renumber(
        self, node_id: str, holder: str, old: Sequence[int], new: Sequence[int]
    ) -> dict[str, dict[int, int]]:
        """Make ``holder`` hold ordinals ``new`` of ``node_id`` instead of ``old`` (as many).

        For when the cluster says which devices a holder really got: a wanted ordinal that is
        free is taken, one held by someone else is swapped with one ``holder`` gives up. Free
        counts do not change.

        Returns:
            For each other holder whose ordinals moved: its old ordinal -> its new one.

        Raises:
            InvalidSpecError: the node is unknown, ``holder`` does not hold ``old``, or ``new``
                is not as many distinct ordinals of the node.
        """
        free = self._free_list(node_id)
        held = self._held[node_id]
        capacity = self._nodes[node_id].num_gpus
        if (
            len(set(old)) != len(old)
            or len(set(new)) != len(new)
            or len(old) != len(new)
            or any(held.get(o) != holder for o in old)
            or not all(0 <= n < capacity for n in new)
        ):
            msg = f"cannot renumber {holder}'s GPUs on {node_id} from {list(old)} to {list(new)}"
            raise InvalidSpecError(msg, field="gpus")
        given_up = sorted(set(old) - set(new))
        moves: dict[str, dict[int, int]] = {}
        free_set = set(free)
        for ordinal in sorted(set(new) - set(old)):
            other = held.get(ordinal)
            if other is None:
                free_set.discard(ordinal)
            else:
                swapped = given_up.pop(0)
                held[swapped] = other
                moves.setdefault(other, {})[ordinal] = swapped
            held[ordinal] = holder
        for ordinal in given_up:  # what no one else needed goes back to the free list
            del held[ordinal]
            free_set.add(ordinal)
        self._free[node_id] = sorted(free_set)
        return moves

    def add_node(self, node: NodeTopology) -> None:
        """Take a node that joined the cluster, all its GPUs free.

        Raises:
            InvalidSpecError: the ledger knows a node of that id already.
        """
        if node.node_id in self._nodes:
            msg = f"node {node.node_id} is on the ledger already"
            raise InvalidSpecError(msg, field="node_id")
        if node.num_gpus > self._max_capacity:
            self._max_capacity = node.num_gpus
            self._all.grow(node.num_gpus)
        self._nodes[node.node_id] = node
        bisect.insort(self._sorted_ids, node.node_id)
        self._node_set = frozenset(self._nodes)
        self._free[node.node_id] = list(range(node.num_gpus))
        self._held[node.node_id] = {}
        self._all.add(node.node_id, node.num_gpus, node.num_gpus)
        self._labels.add(node.node_id, node.labels)
        self._forget_lists()

    def remove_node(self, node_id: str) -> dict[int, str]:
        """Forget a node that left the cluster; returns what was held there (ordinal -> holder).

        The holders lose those GPUs: the caller decides what becomes of their replicas.

        Raises:
            InvalidSpecError: the node is unknown.
        """
        free = self._free_list(node_id)
        node = self._nodes.pop(node_id)
        held = self._held.pop(node_id)
        del self._free[node_id]
        self._all.remove(node_id, node.num_gpus, len(free))
        self._labels.remove(node_id)
        del self._sorted_ids[bisect.bisect_left(self._sorted_ids, node_id)]
        self._node_set = frozenset(self._nodes)
        self._forget_lists()
        return dict(sorted(held.items()))

    def _forget_lists(self) -> None:
        """Nodes joined or left: what was worked out about node lists no longer holds."""
        self._scopes.clear()
        self._left_out.clear()
        self._strangers.clear()
        self._scoped.clear()

    def _free_list(self, node_id: str) -> list[int]:
        try:
            return self._free[node_id]
        except KeyError:
            msg = f"unknown node {node_id!r}"
            raise InvalidSpecError(msg, field="node_id") from None

    def _move(self, node_id: str, old_free: int, new_free: int) -> None:
        """``node_id`` now has ``new_free`` GPUs free: move it in every index that holds it."""
        if old_free == new_free:
            return
        self._all.move(node_id, old_free, new_free)
        for index in self._scoped.of(node_id):
            index.move(node_id, old_free, new_free)

    def __iter__(self) -> Iterator[str]:
        """Node ids, sorted."""
        return iter(self.node_ids())


def _largest(histogram: Sequence[int]) -> int:
    """The largest ``k`` whose entry is not zero (0 when none is)."""
    return next((k for k in range(len(histogram) - 1, 0, -1) if histogram[k]), 0)


class _ReadOnly(Sequence[str]):
    """A read-only view of a list the ledger owns (indexing and iteration, no copy)."""

    __slots__ = ("_items",)

    def __init__(self, items: list[str]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:  # noqa: ANN401 - a str, or a list for a slice
        return self._items[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
