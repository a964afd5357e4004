"""The cluster as the placement service knows it: nodes, their GPUs and their labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.frozen import reduce_frozen
from placement_actors.domain.limits import MAX_LABEL_TEXT, MAX_LABELS, MAX_NODE_GPUS, MAX_NODE_ID

__all__ = ["NodeTopology"]


def _no_labels() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeTopology:
    """One node of the cluster.

    Attributes:
        node_id: the node's unique id (Ray's NodeID hex when the topology comes from Ray).
        num_gpus: whole GPUs the node has in total (0 for a CPU-only node), at most
            `placement_actors.domain.limits.MAX_NODE_GPUS`.
        is_head: whether this is the cluster's head node.
        labels: the node's labels; stored as a read-only copy.
    """

    node_id: str
    num_gpus: int
    is_head: bool = False
    labels: Mapping[str, str] = field(default_factory=_no_labels, hash=False)

    def __post_init__(self) -> None:
        """Check the fields and freeze ``labels``."""
        if (
            not isinstance(self.node_id, str)
            or not self.node_id.strip()
            or len(self.node_id) > MAX_NODE_ID
        ):
            shown = repr(self.node_id[:40]) if isinstance(self.node_id, str) else "a non-string"
            msg = f"a node id must be 1-{MAX_NODE_ID} characters, not blank, got {shown}"
            raise InvalidSpecError(msg, field="node_id")
        if isinstance(self.num_gpus, bool) or not isinstance(self.num_gpus, int):
            msg = (
                f"node {self.node_id}: num_gpus must be an integer, "
                f"got {type(self.num_gpus).__name__}"
            )
            raise InvalidSpecError(msg, field="num_gpus")
        if not 0 <= self.num_gpus <= MAX_NODE_GPUS:
            msg = f"node {self.node_id}: num_gpus must be 0-{MAX_NODE_GPUS}, got {self.num_gpus}"
            raise InvalidSpecError(msg, field="num_gpus")
        if not isinstance(self.labels, Mapping) or len(self.labels) > MAX_LABELS:
            msg = f"node {self.node_id}: labels must be a mapping of at most {MAX_LABELS} labels"
            raise InvalidSpecError(msg, field="labels")
        if not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_LABEL_TEXT >= len(v)
            for k, v in self.labels.items()
        ):
            msg = (
                f"node {self.node_id}: labels must map strings to strings of at most "
                f"{MAX_LABEL_TEXT} characters"
            )
            raise InvalidSpecError(msg, field="labels")
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def __reduce__(self) -> tuple[Any, tuple[type[Any], dict[str, object]]]:
        """Pickle through plain copies of the read-only mappings."""
        return reduce_frozen(self)
