"""What the cluster says of a placement group, as one closed set of states."""

from __future__ import annotations

import enum

__all__ = ["GroupStatus"]


class GroupStatus(enum.Enum):
    """A placement group's state on the cluster (Ray's states, mapped by the Ray backend).

    A group that is not created yet is ``NO_RESOURCES`` (it would fit, but the capacity is in
    use), ``INFEASIBLE`` (no node of the cluster can ever hold it) or ``PENDING`` (waiting, no
    reason known).
    """

    CREATED = "created"
    """Every bundle is reserved on its node."""
    PENDING = "pending"
    """Not created yet; the cluster gave no reason."""
    NO_RESOURCES = "no_resources"
    """Not created yet: it would fit, but the capacity is in use."""
    INFEASIBLE = "infeasible"
    """Not created, and no node of the cluster can ever hold it."""
    RESCHEDULING = "rescheduling"
    """Was created, lost a node, and waits to be placed again."""
    REMOVED = "removed"
    """Removed; its capacity is free."""
    UNKNOWN = "unknown"
    """The cluster could not say."""

    @property
    def is_waiting(self) -> bool:
        """Whether the group is not (or no longer) created but may still become so."""
        return self in _WAITING

    @property
    def is_live(self) -> bool:
        """Whether the group holds, or may come to hold, capacity (not removed)."""
        return self is not GroupStatus.REMOVED


_WAITING = frozenset(
    {
        GroupStatus.PENDING,
        GroupStatus.NO_RESOURCES,
        GroupStatus.INFEASIBLE,
        GroupStatus.RESCHEDULING,
    }
)
