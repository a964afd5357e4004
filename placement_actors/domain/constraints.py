"""What a caller may say about where one deployment goes."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from types import MappingProxyType
from typing import Any, cast

from placement_actors.domain.checked import Checked, mark_checked
from placement_actors.domain.deployments import ApiKey, ProviderKind
from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.frozen import reduce_frozen
from placement_actors.domain.labels import LabelSelector
from placement_actors.domain.limits import MAX_NODE_ID, MAX_NODES
from placement_actors.domain.memo import IdentityMemo

__all__ = ["EgressKey", "EgressStrategy", "GpuStrategy", "PlacementConstraints"]

EgressKey = tuple[ProviderKind, ApiKey | None]
"""Deployments that share a provider and an API key can share a rate limiter on one node."""


class GpuStrategy(enum.Enum):
    """How a local deployment's replicas are spread over GPU nodes.

    ``PACK`` (the default) puts each replica on the node that will be left with the fewest free GPUs
    (best fit), keeping whole nodes free for large replicas. ``SPREAD`` puts one deployment's
    replicas on distinct nodes where it can (the least-loaded node not yet used by the deployment)
    and shares a node only when no unused node fits.
    """

    PACK = "pack"
    SPREAD = "spread"


class EgressStrategy(enum.Enum):
    """How a remote deployment's replicas are spread over egress nodes.

    ``SPREAD`` (the default) gives each replica an egress node the deployment does not use yet
    while there are enough, so one lost node never takes every replica; among those it prefers
    the nodes already serving the same (provider, api key), then the least-loaded, ties by node
    id. Once every allowed node serves the deployment, further replicas go round again the same
    way. ``PACK`` keeps every replica of a (provider, api key) on the nodes that already serve
    it (the least-loaded of them), so they can share one rate limiter.
    """

    SPREAD = "spread"
    PACK = "pack"


def _no_preference() -> Mapping[EgressKey, tuple[str, ...]]:
    return MappingProxyType({})


_CHECKED: IdentityMemo[tuple[str, ...]] = IdentityMemo()
"""Node-id tuples already checked (a long list sent with every `Place` is checked once)."""
_LONG = 32
"""Lists at least this long are remembered; shorter ones cost less to check than to look up."""


def _node_ids(value: object, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if type(value) is tuple and len(value) >= _LONG:
        checked = _CHECKED.get(value)
        if checked is not None:
            return checked
        ids = _checked_node_ids(value, name)
        _CHECKED.put(ids, ids)  # the normalised tuple is valid as it is
        return _CHECKED.put(value, ids)
    return _checked_node_ids(value, name)


def _checked_node_ids(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        msg = f"{name} must be a list of node ids or None, got {type(value).__name__}"
        raise InvalidSpecError(msg, field=name)
    ids = tuple(islice(value, MAX_NODES + 1))
    if len(ids) > MAX_NODES:
        msg = f"{name} names more than {MAX_NODES} nodes"
        raise InvalidSpecError(msg, field=name)
    for node in ids:
        if not isinstance(node, str) or not node.strip() or len(node) > MAX_NODE_ID:
            shown = repr(node[:40]) if isinstance(node, str) else type(node).__name__
            msg = f"{name} must hold node ids of 1-{MAX_NODE_ID} characters, got {shown}"
            raise InvalidSpecError(msg, field=name)
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementConstraints(Checked):
    """Which nodes one `Place` may use, and what the caller knows about egress sharing.

    Attributes:
        gpu_nodes: GPU nodes a local deployment may use; ``None`` means every GPU node the service
            knows, an empty sequence means none. Naming a node the service does not know is an
            `InvalidSpecError`.
        egress_nodes: egress nodes a remote deployment may use, with the same meaning.
        label_selector: only nodes whose labels match, in Ray's syntax (`LabelSelector`):
            ``{"zone": "in(a,b)", "gpu-type": "!T4"}``. It narrows ``gpu_nodes`` (local) or
            ``egress_nodes`` (remote) further; empty (the default) picks every node. It is read
            again when replicas are placed anew, so a node that joins with matching labels is
            eligible. A node whose labels the service does not know (an egress node given by id
            only) matches no selector.
        egress_preference: ``(provider, api key) -> node ids`` already serving that pair, added to
            what the service itself remembers.
        strategy: how local replicas are spread (`GpuStrategy`).
        egress_strategy: how remote replicas are spread (`EgressStrategy`).
        replace_lost: place a replica again, elsewhere, when a node under it is lost (the
            default); ``False`` leaves the deployment degraded until it is placed again.
        keep_whole: never split a replica that one allowed node is large enough to hold: when no
            such node has the GPUs free, the `Place` is refused (retryable, with the move set
            that would make room, when one exists) instead of split over nodes. Replicas larger
            than every node are split evenly all the same. Default ``False``: split when needed.
        movable: the service may move this deployment's replicas (each held whole on one node) to
            make room for another deployment's `Place` that it would otherwise refuse (or for
            replicas it places again after their node was lost) although the cluster has GPUs enough
            free (scattered, or off the requested nodes): one or two
            moves (a refusal's move set) or up to `ROOM_PLAN_MOVES` (a defragmentation plan of
            the requested nodes), each to a node this deployment's own constraints allow (a
            SPREAD one never onto a node holding another of its replicas), never more than
            ``replicas - 1`` of its replicas for one `Place` (one, if it has one), and only when
            they make the request fit. Each move is a `MoveReplica`: a new placement group on
            the new node, and whatever ran in the old group stops (subscribers are told
            `ReplicaMoved`). The `Place` does not wait for a moved replica to be ready, so a
            deployment whose every replica is needed at all times should not be movable.
            Default ``False``: only an explicit `MoveReplica` moves it.
    """

    gpu_nodes: tuple[str, ...] | None = None
    egress_nodes: tuple[str, ...] | None = None
    label_selector: Mapping[str, str] = field(default_factory=LabelSelector, hash=False)
    egress_preference: Mapping[EgressKey, tuple[str, ...]] = field(
        default_factory=_no_preference, hash=False
    )
    strategy: GpuStrategy = GpuStrategy.PACK
    egress_strategy: EgressStrategy = EgressStrategy.SPREAD
    replace_lost: bool = True
    keep_whole: bool = False
    movable: bool = False

    def __post_init__(self) -> None:
        """Normalise node lists to tuples (duplicates dropped) and freeze the preference map."""
        object.__setattr__(self, "gpu_nodes", _node_ids(self.gpu_nodes, "gpu_nodes"))
        object.__setattr__(self, "egress_nodes", _node_ids(self.egress_nodes, "egress_nodes"))
        object.__setattr__(self, "label_selector", LabelSelector.of(self.label_selector))
        if not isinstance(self.strategy, GpuStrategy):
            msg = f"strategy must be a GpuStrategy, got {type(self.strategy).__name__}"
            raise InvalidSpecError(msg, field="strategy")
        if not isinstance(self.egress_strategy, EgressStrategy):
            msg = (
                "egress_strategy must be an EgressStrategy, "
                f"got {type(self.egress_strategy).__name__}"
            )
            raise InvalidSpecError(msg, field="egress_strategy")
        if not isinstance(self.replace_lost, bool):
            msg = f"replace_lost must be true or false, got {type(self.replace_lost).__name__}"
            raise InvalidSpecError(msg, field="replace_lost")
        for flag in ("keep_whole", "movable"):
            given = getattr(self, flag)
            if not isinstance(given, bool):
                msg = f"{flag} must be true or false, got {type(given).__name__}"
                raise InvalidSpecError(msg, field=flag)
        if not isinstance(self.egress_preference, Mapping):
            msg = "egress_preference must map (provider, api key) to node ids"
            raise InvalidSpecError(msg, field="egress_preference")
        if len(self.egress_preference) > MAX_NODES:
            msg = f"egress_preference holds more than {MAX_NODES} entries"
            raise InvalidSpecError(msg, field="egress_preference")
        frozen: dict[EgressKey, tuple[str, ...]] = {}
        for key, nodes in self.egress_preference.items():
            if not (
                isinstance(key, tuple)
                and len(key) == 2  # noqa: PLR2004 - a (provider, api key) pair
                and isinstance(key[0], ProviderKind)
                and (key[1] is None or isinstance(key[1], ApiKey))
            ):
                # Never echo the key: a raw string here is most likely a secret.
                msg = (
                    "egress_preference keys must be (ProviderKind, ApiKey | None) pairs, got a "
                    f"{type(key).__name__} (wrap a secret in ApiKey; it is not shown here)"
                )
                raise InvalidSpecError(msg, field="egress_preference")
            frozen[key] = _node_ids(nodes, "egress_preference") or ()
        object.__setattr__(self, "egress_preference", MappingProxyType(frozen))
        mark_checked(self)

    def __reduce__(self) -> tuple[Any, tuple[type[Any], dict[str, object]]]:
        """Pickle through plain copies of the read-only mappings."""
        return reduce_frozen(self)

    def selector(self) -> LabelSelector:
        """``label_selector``, checked (the constructor made it a `LabelSelector`)."""
        return cast("LabelSelector", self.label_selector)

    def named_nodes(self) -> frozenset[str]:
        """Every node id this value names, for checking them against the service's nodes."""
        named = set(self.gpu_nodes or ()) | set(self.egress_nodes or ())
        for nodes in self.egress_preference.values():
            named.update(nodes)
        return frozenset(named)
