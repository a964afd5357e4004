"""Nodes by label, and which of them a label selector picks (remembered per selector).

A deployment limited by a `LabelSelector` asks, on every `Place`, which nodes it may use. The
answer comes from an index of the nodes by label key and value (the values a selector names are
looked up, not every node read), and is kept for that selector, and node set it narrows, until
nodes join or leave: a controller that sends the same selector with every `Place` pays for it
once, and the ledgers get the same set back each time, whose own index they keep too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from placement_actors.domain.labels import LabelSelector

__all__ = ["MAX_REMEMBERED_NODES", "LabelIndex"]

MAX_REMEMBERED_NODES = 250_000
"""What the remembered answers may hold in all, keys included: node ids (those picked, and those
of the node set a selector narrows), and a unit per `_SELECTOR_UNIT` characters of selector
text. Past it, all are forgotten and worked out again when asked: new selectors and node lists
sent one after another cannot grow memory past this (about 25 MB)."""

_SELECTOR_UNIT = 32


class LabelIndex:
    """Label key -> value -> node ids, over the nodes given and those added since."""

    def __init__(self, nodes: Iterable[tuple[str, Mapping[str, str]]] = ()) -> None:
        """Index ``nodes``, given as (id, labels)."""
        self._labels: dict[str, Mapping[str, str]] = {}
        self._by_label: dict[str, dict[str, set[str]]] = {}
        self._answers: dict[tuple[frozenset[str] | None, LabelSelector], frozenset[str]] = {}
        self._remembered = 0
        for node_id, labels in nodes:
            self.add(node_id, labels)

    def add(self, node_id: str, labels: Mapping[str, str]) -> None:
        """Index a node (again, with these labels, if it was indexed before)."""
        self.remove(node_id)
        self._labels[node_id] = labels
        for key, value in labels.items():
            self._by_label.setdefault(key, {}).setdefault(value, set()).add(node_id)
        self._forget()

    def labels_of(self, node_id: str) -> Mapping[str, str]:
        """The labels a node was indexed with (empty for a node not indexed)."""
        return self._labels.get(node_id, {})

    def remove(self, node_id: str) -> None:
        """Forget a node (nothing happens for a node not indexed)."""
        labels = self._labels.pop(node_id, None)
        if labels is None:
            return
        for key, value in labels.items():
            values = self._by_label[key]
            values[value].discard(node_id)
            if not values[value]:
                del values[value]
                if not values:
                    del self._by_label[key]
        self._forget()

    def selected(
        self, selector: LabelSelector, within: frozenset[str] | None = None
    ) -> frozenset[str]:
        """The indexed nodes (of ``within``, when given) whose labels ``selector`` picks.

        O(the nodes the selector's values name) the first time (every node for a selector that
        only excludes), then O(1) for the same selector and set until nodes change.
        """
        key = (within, selector)
        found = self._answers.get(key)
        if found is None:
            found = self._pick(selector)
            if within is not None:
                found &= within
            held = len(found) + len(within or ()) + _text_units(selector) + 1
            if self._remembered + held > MAX_REMEMBERED_NODES:
                self._forget()
            self._answers[key] = found
            self._remembered += held
        return found

    def _pick(self, selector: LabelSelector) -> frozenset[str]:
        by_label = self._by_label
        matching = [
            set().union(*(by_label.get(m.key, {}).get(v, ()) for v in m.values))
            for m in selector.matches
            if not m.negated
        ]
        matching.sort(key=len)
        chosen = set(matching[0]).intersection(*matching[1:]) if matching else set(self._labels)
        for m in selector.matches:
            if m.negated:
                for v in m.values:
                    chosen.difference_update(by_label.get(m.key, {}).get(v, ()))
        return frozenset(chosen)

    def _forget(self) -> None:
        self._answers.clear()
        self._remembered = 0


def _text_units(selector: LabelSelector) -> int:
    """The selector's text (keys and values), in units of `_SELECTOR_UNIT` characters."""
    text = sum(len(m.key) + sum(len(v) + 1 for v in m.values) for m in selector.matches)
    return text // _SELECTOR_UNIT
