"""Indexes of long node lists, kept up to date, a bounded number at a time.

A placement limited to a node list (``gpu_nodes``, ``egress_nodes``, the nodes a label selector
picks) asks the ledgers for the best of *those* nodes. Sorting the list on every `Place` costs
O(list): linear in the cluster when the list is a fixed share of it. So a long list gets an
index of its own, built once and changed with every reservation on one of its nodes, and the
query costs what it costs on the whole cluster. A list that leaves out few nodes needs none
(the ledger's index, less those few, serves it) and a short list is cheaper to read than to keep.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

__all__ = [
    "SCOPE_INDEXES",
    "SCOPE_INDEX_MIN",
    "ScopedIndexes",
    "deserves_index",
    "leaves_out_few",
]

SCOPE_INDEX_MIN = 64
"""A node list this long or longer, that leaves out at least as many nodes, gets an index of its
own. A list that leaves out fewer is read from the ledger's index less the nodes left out."""
SCOPE_INDEXES = 16
"""The most node lists indexed at once per ledger; the one used least recently goes first. Each
costs memory for its nodes and a little work on every reservation on one of them."""

_I = TypeVar("_I")


def deserves_index(size: int, nodes: int) -> bool:
    """Whether a list of ``size`` nodes, out of ``nodes``, is read from an index of its own."""
    return size >= SCOPE_INDEX_MIN and nodes - size >= SCOPE_INDEX_MIN


def leaves_out_few(size: int, nodes: int) -> bool:
    """Whether a list of ``size`` nodes leaves out fewer than `SCOPE_INDEX_MIN` of ``nodes``.

    Then the ledger's own index, less those few, serves it at the least cost.
    """
    return nodes - size < SCOPE_INDEX_MIN


class ScopedIndexes(Generic[_I]):
    """The indexes of node lists (by the set of nodes), and the indexes each node is in."""

    def __init__(self) -> None:
        """Index nothing yet."""
        self._by_scope: OrderedDict[frozenset[str], tuple[_I, frozenset[str]]] = OrderedDict()
        self._of: dict[str, list[_I]] = {}

    def get(self, scope: frozenset[str], build: Callable[[], tuple[_I, Iterable[str]]]) -> _I:
        """The index of ``scope``; built by ``build`` (the index and its nodes) when not kept."""
        kept = self._by_scope.get(scope)
        if kept is not None:
            self._by_scope.move_to_end(scope)
            return kept[0]
        while len(self._by_scope) >= max(1, SCOPE_INDEXES):
            self._drop(*self._by_scope.popitem(last=False)[1])
        index, members = build()
        nodes = frozenset(members)
        for node_id in nodes:
            self._of.setdefault(node_id, []).append(index)
        self._by_scope[scope] = (index, nodes)
        return index

    def of(self, node_id: str) -> Sequence[_I]:
        """The indexes ``node_id`` is in (to change with it)."""
        return self._of.get(node_id, ())

    def clear(self) -> None:
        """Drop every index (nodes joined or left: the lists mean other nodes now)."""
        self._by_scope.clear()
        self._of.clear()

    def _drop(self, index: _I, nodes: frozenset[str]) -> None:
        for node_id in nodes:
            indexes = self._of[node_id]
            indexes[:] = [i for i in indexes if i is not index]
            if not indexes:
                del self._of[node_id]
