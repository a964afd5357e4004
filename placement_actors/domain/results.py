"""What a placement decision produces, and why a node was passed over."""

from __future__ import annotations

import enum
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from placement_actors.domain.deployments import Deployment
from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.frozen import reduce_frozen
from placement_actors.domain.limits import MAX_NODE_GPUS, MAX_NODE_ID
from placement_actors.domain.validation import check_count, check_text

__all__ = [
    "BundleEndpoint",
    "BundleStrategy",
    "DefragmentationPlan",
    "Eventual",
    "Known",
    "NodeAssignment",
    "PlacementResult",
    "Rejection",
    "ReplicaBundleSpec",
    "ReplicaMove",
    "ReplicaPlacement",
]

_T_co = TypeVar("_T_co", covariant=True)


class Eventual(Protocol[_T_co]):
    """A value that arrives later: blocking ``get(timeout=...)`` for threads, ``await`` for asyncio.

    The actors hand out `placement_actors.actors.futures.CallbackFuture` values, whose ``await``
    never blocks the event loop.
    """

    def get(self, *, timeout: float | None = None) -> _T_co:
        """Wait up to ``timeout`` seconds for the value; raise the error it failed with."""
        ...

    def __await__(self) -> Generator[Any, None, _T_co]:
        """Wait in a coroutine."""
        ...


class BundleStrategy(enum.StrEnum):
    """How Ray places a replica's bundles: all on one node, or each on a different node.

    A `str` enum: a member equals and formats as its name (``BundleStrategy.STRICT_PACK ==
    "STRICT_PACK"``), so code that compares strategies with Ray's strings keeps working.
    """

    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """One node's reason for not taking a replica (as a scheduler reports per node).

    Attributes:
        node_id: the node.
        reason: a short sentence, e.g. ``"2 free GPUs, 4 needed"``.
        requested: the amount asked for (GPUs for a local replica, 1 egress slot for a remote one).
        available: what the node had to offer.
    """

    node_id: str
    reason: str
    requested: int
    available: int


def _distinct_ordinals(gpus: tuple[object, ...]) -> bool:
    return (
        len(gpus) <= MAX_NODE_GPUS
        and all(type(o) is int and o >= 0 for o in gpus)
        and len(set(gpus)) == len(gpus)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeAssignment:
    """Where one replica (or one node's share of it) runs.

    Attributes:
        replica_index: 0-based index of the replica within its deployment.
        node: the node id.
        gpus: the GPU ordinals reserved on that node, ascending; empty for a remote replica.
    """

    replica_index: int
    node: str
    gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        """Check the index, the node id and the ordinals (distinct, non-negative)."""
        gpus: object = self.gpus
        if type(gpus) is list:
            gpus = tuple(gpus)
            object.__setattr__(self, "gpus", gpus)
        # One quick pass for the common, valid case (a split replica makes thousands of these);
        # the precise reason is worked out only when it fails.
        fine = (
            type(self.replica_index) is int
            and self.replica_index >= 0
            and type(self.node) is str
            and 0 < len(self.node) <= MAX_NODE_ID
            and isinstance(gpus, tuple)
            and (not gpus or _distinct_ordinals(gpus))
            and not self.node.isspace()
        )
        if not fine:
            self._refuse()

    def _refuse(self) -> None:
        check_count(self.replica_index, "replica_index")
        check_text(self.node, "node", longest=MAX_NODE_ID)
        if not self.node.strip():
            msg = "a node assignment needs a node id"
            raise InvalidSpecError(msg, field="node")
        if not isinstance(self.gpus, tuple) or len(self.gpus) > MAX_NODE_GPUS:
            msg = f"gpus must be a tuple of at most {MAX_NODE_GPUS} GPU ordinals"
            raise InvalidSpecError(msg, field="gpus")
        for ordinal in self.gpus:
            check_count(ordinal, "gpus")
        msg = "gpus must not name an ordinal twice"
        raise InvalidSpecError(msg, field="gpus")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementResult:
    """The answer to a `Place`: where each replica of the deployment runs.

    Attributes:
        deployment: the deployment that was placed.
        assignments: one entry per replica and node, ordered by replica index (a replica split
            over several nodes has one entry per node).
        replicas: for local replicas reserved on Ray, each replica's placement group and the
            futures of its bundles' IPs and ports; empty when no planner is attached.
    """

    deployment: Deployment
    assignments: tuple[NodeAssignment, ...]
    replicas: tuple[ReplicaPlacement, ...] = ()

    def nodes(self) -> tuple[str, ...]:
        """The distinct nodes used, in first-use order."""
        return tuple(dict.fromkeys(a.node for a in self.assignments))

    def total_gpus(self) -> int:
        """GPUs reserved for the whole deployment."""
        return sum(len(a.gpus) for a in self.assignments)


@dataclass(frozen=True, slots=True)  # positional too: ``ReplicaBundleSpec(bundles, strategy, ...)``
class ReplicaBundleSpec:
    """The Ray placement-group shape of one replica.

    Attributes:
        bundles: one resource mapping per bundle (``{"CPU": 1, "GPU": n}``); each is its own
            read-only copy, never shared with another bundle.
        strategy: `BundleStrategy.STRICT_PACK` for one node, `BundleStrategy.STRICT_SPREAD` for a
            replica split evenly over ``nnodes`` nodes.
        nnodes: how many nodes the replica spans.
        per_node_gpus: GPUs in each bundle.
        bundle_label_selector: one node-label selector per bundle, or ``None`` for no selection.
    """

    bundles: tuple[Mapping[str, float], ...] = field(hash=False)
    strategy: BundleStrategy
    nnodes: int
    per_node_gpus: int
    bundle_label_selector: tuple[Mapping[str, str], ...] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        """Copy every bundle and selector into its own read-only mapping; check the arithmetic.

        ``strategy`` may be given by name (``"STRICT_PACK"``); it is stored as a `BundleStrategy`.
        """
        try:
            object.__setattr__(self, "strategy", BundleStrategy(self.strategy))
            bundles = tuple(MappingProxyType(dict(b)) for b in self.bundles)
            selectors = (
                None
                if self.bundle_label_selector is None
                else tuple(MappingProxyType(dict(s)) for s in self.bundle_label_selector)
            )
        except (TypeError, ValueError) as exc:
            msg = f"malformed bundle spec: {exc}"
            raise InvalidSpecError(msg, field="bundles") from exc
        object.__setattr__(self, "bundles", bundles)
        object.__setattr__(self, "bundle_label_selector", selectors)
        if selectors is not None and len(selectors) != len(bundles):
            msg = "bundle_label_selector needs one selector per bundle"
            raise InvalidSpecError(msg, field="bundle_label_selector")
        check_count(self.nnodes, "nnodes", minimum=1)
        check_count(self.per_node_gpus, "per_node_gpus", minimum=1)
        if len(bundles) != self.nnodes:
            msg = f"inconsistent bundle spec: {len(bundles)} bundles for {self.nnodes} nodes"
            raise InvalidSpecError(msg, field="bundles")

    def __reduce__(self) -> tuple[Any, tuple[type[Any], dict[str, object]]]:
        """Pickle through plain copies of the read-only mappings."""
        return reduce_frozen(self)

    @property
    def is_multi_node(self) -> bool:
        """Whether the replica spans more than one node."""
        return self.nnodes > 1

    @property
    def total_gpus(self) -> int:
        """GPUs over all bundles (the tensor-parallel size)."""
        return self.nnodes * self.per_node_gpus


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleEndpoint:
    """Where one bundle of a replica landed, as it becomes known.

    Attributes:
        node: the node id the bundle is pinned to.
        node_ip: resolves to the node's routable IP address once the group is ready.
        port: resolves to a free port on that node, reserved for this replica.
        gpu_ids: when the service learns GPU ids (``learn_gpu_ids``), resolves to the GPU ids
            Ray gave the bundle, ascending: what ``ray.get_gpu_ids()`` and
            ``CUDA_VISIBLE_DEVICES`` show a worker in it (found from inside the bundle), and the
            ledger's ordinals of the bundle are set to them. Otherwise resolves to ``()``: not
            known (a worker in the bundle sees its GPUs as Ray sets them all the same).
    """

    node: str
    node_ip: Eventual[str] = field(compare=False)
    port: Eventual[int] = field(compare=False)
    gpu_ids: Eventual[tuple[int, ...]] = field(compare=False, default_factory=lambda: Known(()))


@dataclass(frozen=True, slots=True)
class Known(Generic[_T_co]):
    """An `Eventual` that is known already (picklable, immutable)."""

    value: _T_co

    def get(self, *, timeout: float | None = None) -> _T_co:
        """The value, at once."""
        del timeout
        return self.value

    def __await__(self) -> Generator[Any, None, _T_co]:
        """The value, at once."""
        if False:  # pragma: no cover - makes this a generator
            yield
        return self.value


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaPlacement:
    """A replica's Ray placement group, answered before Ray has made it ready.

    Attributes:
        deployment: the deployment's name.
        replica_index: which replica.
        group_name: the detached, named placement group holding the replica.
        spec: the group's bundle shape.
        bundles: per bundle, its node and the futures of its IP and port; bundle 0 is rank 0.
        attempt: which of the planner's groups this is (a replica planned again after a failure
            gets a new group of the same name and a new attempt).
        group_id: the cluster's own id of the group (Ray's placement-group id), which tells a
            group from a later one of the same name.
    """

    deployment: str
    replica_index: int
    group_name: str
    spec: ReplicaBundleSpec
    bundles: tuple[BundleEndpoint, ...]
    attempt: int = 0
    group_id: str = ""

    @property
    def master(self) -> BundleEndpoint:
        """Bundle 0: its IP and port are the master address and port (torch.distributed, vLLM)."""
        return self.bundles[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaMove:
    """Moving one running replica, whole, from one node to another.

    A refusal that such moves would fix carries them (`NotEnoughGpusError.moves`), and
    `GetDefragmentationPlan` answers a list of them. Nothing moves until a move is sent as
    ``MoveReplica.of(move)`` (a new placement group on ``to_node``, then the old GPUs given back).

    Attributes:
        deployment: the deployment the replica belongs to.
        replica_index: the replica.
        gpus: GPUs it holds (on ``from_node``, and would hold on ``to_node``).
        from_node: where it runs now.
        to_node: where it would run.
    """

    deployment: str
    replica_index: int
    gpus: int
    from_node: str
    to_node: str

    def __str__(self) -> str:
        """``llama/r0 (2 GPUs) gpu-a -> gpu-b``."""
        return (
            f"{self.deployment}/r{self.replica_index} ({self.gpus} GPUs) "
            f"{self.from_node} -> {self.to_node}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DefragmentationPlan:
    """Moves that would give nodes back whole for large replicas: `GetDefragmentationPlan`'s reply.

    Attributes:
        gpus: the free GPUs each freed node would have, at least.
        moves: the moves, in the order to carry them out.
        freed_nodes: the nodes that would have ``gpus`` free once every move is made.
    """

    gpus: int
    moves: tuple[ReplicaMove, ...]
    freed_nodes: tuple[str, ...]
