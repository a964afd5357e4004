"""The cluster as the placement service knows it: nodes, their GPUs and their labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.frozen import reduce_frozen

__all__ = ["NodeTopology"]


def _no_labels() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeTopology:
    """One node of the cluster.

    Attributes:
        node_id: the node's unique id (Ray's NodeID hex when the topology comes from Ray).
        num_gpus: whole GPUs the node has in total (0 for a CPU-only node).
        is_head: whether this is the cluster's head node.
        labels: the node's labels; stored as a read-only copy.
    """

    node_id: str
    num_gpus: int
    is_head: bool = False
    labels: Mapping[str, str] = field(default_factory=_no_labels, hash=False)

    def __post_init__(self) -> None:
        """Check the fields and freeze ``labels``."""
        if not isinstance(self.node_id, str) or not self.node_id.strip():
            msg = f"a node id must be a non-empty string, got {self.node_id!r}"
            raise InvalidSpecError(msg, field="node_id")
        if isinstance(self.num_gpus, bool) or not isinstance(self.num_gpus, int):
            msg = f"node {self.node_id}: num_gpus must be an integer, got {self.num_gpus!r}"
            raise InvalidSpecError(msg, field="num_gpus")
        if self.num_gpus < 0:
            msg = f"node {self.node_id}: num_gpus must be >= 0, got {self.num_gpus}"
            raise InvalidSpecError(msg, field="num_gpus")
        if not isinstance(self.labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()
        ):
            msg = f"node {self.node_id}: labels must map strings to strings"
            raise InvalidSpecError(msg, field="labels")
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def __reduce__(self) -> tuple[Any, tuple[type[Any], dict[str, object]]]:
        """Pickle through plain copies of the read-only mappings."""
        return reduce_frozen(self)
