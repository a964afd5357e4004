"""Following the cluster as it changes: nodes that join or die, groups Ray reschedules, GPUs in use.

A `ClusterWatcher` polls Ray's node table and free resources, and its placement-group table when
they show it may have changed, from a thread of its own. It reports each change once, through
callbacks (the wiring turns them into messages to the DeploymentPlacementActor, so the actor's
mailbox never waits on Ray).

Measured on Ray 2.60: a node removed gracefully is marked dead within ~0.05 s, a crashed one
after the health check (~16 s); a group pinned to a dead node goes to ``RESCHEDULING`` at once
and never becomes ready again by itself. Ray gives a removed group's GPUs back in its free
resources about 0.1 s after its table says the group is gone: GPUs in use are reported only
once a reading has held for `SETTLE_S`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from placement_actors.backends.ray.cluster import (
    alive_nodes,
    free_resources,
    gpus_in_use,
    is_egress,
    node_topology,
)
from placement_actors.backends.ray.groups import GroupTable, group_gpus, group_table, groups_in
from placement_actors.backends.ray.lease import ServiceLease
from placement_actors.domain.deployments import GROUP_NAME_ROOT, replica_of_group
from placement_actors.domain.errors import PlacementError
from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.limits import MAX_NODE_GPUS
from placement_actors.domain.topology import NodeTopology

__all__ = [
    "JOIN_WAIT_S",
    "LOSS_WATCH_S",
    "RESEND_S",
    "SETTLE_S",
    "ClusterWatcher",
    "GpuUse",
    "read_gpu_use",
]

logger = logging.getLogger(__name__)

SETTLE_S = 0.5
"""How long a node's reading of the GPUs in use must stay the same before it is reported."""

JOIN_WAIT_S = 1.0
"""The longest a GPU node that joined waits for its first reading to settle before it is told
(with the most its readings showed in use meanwhile)."""

RESEND_S = 5.0
"""A report is made again after this long even when nothing changed: the service reads a
reading against its own ledger at the time, which may have changed since (GPUs it freed)."""

GpuUse = tuple[dict[str, int], dict[str, dict[str, int]]]
"""GPUs in use by node id, and the GPUs each of the service's groups holds by node id."""

_NodeUse = tuple[int, tuple[tuple[str, int], ...]]
"""One node's reading: GPUs in use there, and (group name, GPUs) of the service's groups."""

_NOTHING: _NodeUse = (0, ())


def read_gpu_use(
    nodes: Mapping[str, Mapping[str, Any]],
    *,
    available: Mapping[str, Mapping[str, float]] | None = None,
    table: GroupTable | None = None,
) -> GpuUse:
    """The GPUs in use on ``nodes`` (alive nodes' records) and those the service's groups hold.

    ``available`` (Ray's free resources by node) and ``table`` (`group_table`) are read now
    unless given; given, ``available`` must have been read before ``table``.
    """
    # Ray's free resources first, then its groups: a group made in between is counted as the
    # service's before its GPUs show as taken. One removed in between shows its GPUs taken and
    # no group: that reading, like one taken while Ray's free resources lag a removal (about
    # 0.1 s), is gone before it has held for `SETTLE_S`.
    return _in_use(available, nodes), _service_groups(table)


def _in_use(
    available: Mapping[str, Mapping[str, float]] | None, nodes: Mapping[str, Mapping[str, Any]]
) -> dict[str, int]:
    """GPUs in use by alive node, as Ray's free resources say (``None``: read now)."""
    used = gpus_in_use(available, nodes=nodes)
    return {n: count for n, count in used.items() if count <= MAX_NODE_GPUS}


def _service_groups(table: GroupTable | None) -> dict[str, dict[str, int]]:
    """Name -> {node id: GPUs} of each live group named as the service names its groups."""
    return {
        name: {n: gpus for n, gpus in held.items() if gpus <= MAX_NODE_GPUS}
        for name, held in group_gpus(GROUP_NAME_ROOT, table).items()
        if replica_of_group(name) is not None  # a name the service could have given
    }


LOSS_WATCH_S = 2.0
"""After a node is lost, Ray's group table is read every round for this long: Ray marks the
groups on the node rescheduling as it marks the node dead, not necessarily before its node
table says so."""

_Layout = frozenset[tuple[str, str, float | None]]


def _layout(available: Mapping[str, Mapping[str, float]]) -> _Layout:
    """Each node's free GPUs and which bundles are placed on it, from Ray's free resources.

    What of them moves when a group is made, removed or rescheduled, or GPUs are taken or given
    back; not how much of a bundle tasks use.
    """
    return frozenset(
        (node, key, value if key == "GPU" else None)
        for node, free in available.items()
        for key, value in free.items()
        if key == "GPU" or key.startswith("bundle_group_")
    )


class _RayTables:
    """Ray's free resources, read every round, and its group table, read when it may have moved.

    The group table lists every group Ray has made, removed ones too (reading it took 20 to 60 ms
    per 1,000 groups here), so a service that has made many would spend a core reading it four
    times a second. It is read again when the free GPUs or the bundles placed on some node
    moved, every round for `LOSS_WATCH_S` after a node was lost, and at least every
    `RESEND_S`; what the rounds need of it (the service's groups Ray reschedules, and the GPUs
    the service's groups hold) is drawn from it once per read, so a round that keeps it does
    not go through it again. Ray's free resources are read before its group table (see
    `read_gpu_use`).
    """

    def __init__(
        self,
        free: Callable[[], Mapping[str, Mapping[str, float]]],
        table: Callable[[], GroupTable],
    ) -> None:
        self._free = free
        self._read_table = table
        self._layout: _Layout | None = None
        self._moving: dict[str, str] = {}
        self._groups: dict[str, dict[str, int]] = {}
        self._read_at = -math.inf
        self._watch_until = -math.inf
        self._available: Mapping[str, Mapping[str, float]] = {}

    def read(self, now: float, *, lost: bool) -> float:
        """Read Ray for a round begun at ``now``; returns when the table in use began to be read.

        A table kept from an earlier round was read while the free GPUs and bundles were as
        they are now: a reading made of both is the one that round made, and bears its time.
        """
        if lost:  # first: a round whose reads fail still watches after the loss
            self._watch_until = now + LOSS_WATCH_S
        self._available = self._free()
        layout = _layout(self._available)
        if layout != self._layout or now < self._watch_until or now - self._read_at >= RESEND_S:
            table = list(self._read_table())
            self._moving = groups_in(GroupStatus.RESCHEDULING, GROUP_NAME_ROOT, table)
            self._groups = _service_groups(table)
            self._layout, self._read_at = layout, now
        return self._read_at

    def rescheduling(self) -> dict[str, str]:
        return dict(self._moving)

    def gpu_use(self, nodes: Mapping[str, Mapping[str, Any]]) -> GpuUse:
        return _in_use(self._available, nodes), {n: dict(h) for n, h in self._groups.items()}


@dataclass(slots=True)
class _Joining:
    """A GPU node that joined, not told yet: since when, and the most its readings showed."""

    node: NodeTopology
    egress: bool
    since: float
    most: int = 0


def _by_node(reading: GpuUse) -> dict[str, _NodeUse]:
    """A reading, node by node."""
    in_use, groups = reading
    found: dict[str, _NodeUse] = {node: (count, ()) for node, count in in_use.items()}
    for name in sorted(groups):
        for node, gpus in groups[name].items():
            count, shares = found.get(node, _NOTHING)
            found[node] = (count, (*shares, (name, gpus)))
    return found


class ClusterWatcher:
    """Reports nodes that join or die and groups Ray reschedules, each once, from its own thread.

    Args:
        known: the node ids the service already knows (alive when it started).
        on_joined: called with a node that joined, whether it is an egress node, and the GPUs
            in use there by anyone. Work of other Ray users that waited for room lands on a
            new node as it registers, and must not be offered to the service meanwhile: with
            ``on_gpu_use``, a GPU node is told once its first reading has settled
            (``settle_s``), with that reading's count, or after `JOIN_WAIT_S` if its reading
            keeps moving, with the most it showed in use. A node gone before that is never
            told; a node without GPUs (and every node, without ``on_gpu_use``) is told at
            once, with 0.
        on_lost: called with the id of a node that died or left.
        on_rescheduling: called with the name and Ray's id of one of the service's groups that
            Ray is rescheduling (it was ready, and a node under it is gone).
        alive: polled before each round; the watcher stops when it returns ``False`` (the actor
            it reports to has stopped).
        interval_s: seconds between two rounds.
        nodes: reads the alive nodes' ``ray.nodes()`` records by node id (Ray's, by default).
        rescheduling: reads the service's groups Ray is rescheduling, name by Ray's group id
            (``None``: Ray's, from its group table; see ``table``).
        on_gpu_use: called with the GPUs in use on each node and those each group named like
            the service's holds there (`GpuUse`), the nodes left out because their reading
            still moves, and when the reading began (on ``clock``, before Ray's group table it
            was made of was read; see ``table``). Each
            node's reading counts once it has stayed the same for ``settle_s`` (a node whose
            tasks come and go does not hold up the others); the call is made when what it
            would say changes, and every `RESEND_S` anyway. ``None``: not read.
        gpu_use: reads them, given the alive nodes' records (``None``: Ray's, from its free
            resources and group table).
        free: reads Ray's free resources by node id, each round Ray is read.
        table: reads Ray's placement-group table, once for both readers, and only when it may
            have changed: when some node's free GPUs or placed bundles moved, for
            `LOSS_WATCH_S` after a node was lost, and every `RESEND_S`. A reading made with a
            table kept from an earlier round bears that round's time.
        on_lease_lost: called once, with who holds it now, when another service took the
            lease after it was ended from outside (the service should stop: two would take
            each other's deployments).
        lease: the service's lease, made sure of every `RESEND_S` (`ServiceLease.keep`: taken
            again if someone ended it from outside).
        settle_s: how long a node's reading must hold before it is reported.
        clock: the monotonic clock ``settle_s`` is measured on (``time.monotonic``, the clock
            the service stamps what it frees with).
    """

    def __init__(
        self,
        *,
        known: Iterable[str],
        on_joined: Callable[[NodeTopology, bool, int], None],
        on_lost: Callable[[str], None],
        on_rescheduling: Callable[[str, str], None],
        alive: Callable[[], bool] = lambda: True,
        interval_s: float = 0.25,
        nodes: Callable[[], Mapping[str, Mapping[str, Any]]] = alive_nodes,
        rescheduling: Callable[[], Mapping[str, str]] | None = None,
        on_gpu_use: Callable[[GpuUse, frozenset[str], float], None] | None = None,
        gpu_use: Callable[[Mapping[str, Mapping[str, Any]]], GpuUse] | None = None,
        free: Callable[[], Mapping[str, Mapping[str, float]]] = free_resources,
        table: Callable[[], GroupTable] = group_table,
        lease: ServiceLease | None = None,
        on_lease_lost: Callable[[str], None] | None = None,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Remember the known nodes; nothing is polled until `start`."""
        self._known = set(known)
        self._refused: set[str] = set()  # joined nodes the service cannot take in (told once)
        self._joining: dict[str, _Joining] = {}  # GPU nodes told once their reading settled
        self._on_joined = on_joined
        self._on_lost = on_lost
        self._on_rescheduling = on_rescheduling
        self._alive = alive
        self._interval_s = interval_s
        self._nodes = nodes
        self._rescheduling = rescheduling
        self._reported: set[str] = set()
        self._on_gpu_use = on_gpu_use
        self._gpu_use = gpu_use
        self._ray = _RayTables(free, table)
        self._lease = lease
        self._on_lease_lost = on_lease_lost
        self._lease_kept_at = -math.inf
        self._settle_s = settle_s
        self._clock = clock
        self._use_seen: dict[str, tuple[_NodeUse, float]] = {}  # each node's, and since when
        self._use_settled: dict[str, _NodeUse] = {}
        self._quiet: set[str] = set()  # alive nodes settled with nothing in use
        self._use_told: tuple[dict[str, _NodeUse], frozenset[str]] | None = None
        self._use_told_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="placement-actors-cluster-watcher", daemon=True
        )

    def start(self) -> ClusterWatcher:
        """Start polling; returns the watcher."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def poll(self) -> None:
        """One round: compare Ray's tables with what was seen, and report each change once."""
        nodes = self._nodes()
        self._take_in(nodes, self._clock())
        lost = sorted(self._known - set(nodes))
        for node_id in lost:
            self._on_lost(node_id)
        self._known &= set(nodes)
        self._refused &= set(nodes)
        began = self._clock()  # what the service frees from now on may still show in a reading
        try:
            self._read_ray(nodes, began, lost=bool(lost))
        except Exception:
            self._tell_overdue(began)  # a join waits for a reading, but not for ever
            raise
        if self._lease is not None and began - self._lease_kept_at >= RESEND_S:
            self._lease_kept_at = began
            held = self._lease.keep()
            taken_by = self._lease.lost_to
            if not held and taken_by and self._on_lease_lost and self._alive():
                told, self._on_lease_lost = self._on_lease_lost, None  # once
                told(taken_by)

    def _read_ray(
        self, nodes: Mapping[str, Mapping[str, Any]], began: float, *, lost: bool
    ) -> None:
        """The round's reading of Ray's tables: groups Ray reschedules, GPUs in use."""
        read_at = began
        if self._rescheduling is None or (self._on_gpu_use is not None and self._gpu_use is None):
            read_at = self._ray.read(began, lost=lost)
        moving = (self._rescheduling or self._ray.rescheduling)()
        for group_id in sorted(set(moving) - self._reported):
            self._on_rescheduling(moving[group_id], group_id)
        self._reported = set(moving)
        if self._on_gpu_use is not None:
            if self._gpu_use is not None:
                reading, read_at = self._gpu_use(nodes), began
            else:
                reading = self._ray.gpu_use(nodes)
            self._follow_gpu_use(self._on_gpu_use, reading, nodes, began, read_at)

    def _take_in(self, nodes: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Find the nodes that joined: tell each at once, or wait for its reading to settle.

        A GPU node, with GPUs in use followed, waits in ``_joining`` (see ``on_joined``); it
        is told by `_follow_gpu_use`, after this round's reading.
        """
        self._joining = {n: j for n, j in self._joining.items() if n in nodes}
        for node_id in sorted(nodes.keys() - self._known - self._joining.keys()):
            record = nodes[node_id]
            try:
                topology = node_topology(record)
            except PlacementError as exc:  # one odd node must not hide the others' changes
                if node_id not in self._refused:
                    logger.warning("node %s cannot be placed on: %s", node_id, exc)
                    self._refused.add(node_id)
                continue
            if self._on_gpu_use is not None and topology.num_gpus:
                self._joining[node_id] = _Joining(topology, is_egress(record), now)
            else:
                self._on_joined(topology, is_egress(record), 0)
                self._known.add(node_id)

    def _tell_joined(
        self, current: Mapping[str, _NodeUse], unsettled: AbstractSet[str], now: float
    ) -> None:
        """Tell the joining nodes whose first reading settled, or that waited `JOIN_WAIT_S`."""
        for node_id in sorted(self._joining):
            joining = self._joining[node_id]
            joining.most = max(joining.most, current.get(node_id, _NOTHING)[0])
            waited = now - joining.since
            if waited >= JOIN_WAIT_S and node_id in unsettled:
                self._admit(node_id, joining.most)
            elif waited >= self._settle_s and node_id not in unsettled:
                self._admit(node_id, self._use_settled.get(node_id, _NOTHING)[0])

    def _tell_overdue(self, now: float) -> None:
        """Tell the joining nodes that waited `JOIN_WAIT_S`, in a round Ray could not be read."""
        for node_id in sorted(self._joining):
            joining = self._joining[node_id]
            if now - joining.since >= JOIN_WAIT_S:
                logger.warning(
                    "node %s joined, and its GPUs in use cannot be read: taken in with the "
                    "most read before (%d)",
                    node_id,
                    joining.most,
                )
                self._admit(node_id, joining.most)

    def _admit(self, node_id: str, in_use: int) -> None:
        """Tell a joining node, with ``in_use`` GPUs in use (it waits on if that fails)."""
        joining = self._joining[node_id]
        self._on_joined(joining.node, joining.egress, min(in_use, joining.node.num_gpus))
        del self._joining[node_id]
        self._known.add(node_id)

    def _follow_gpu_use(
        self,
        report: Callable[[GpuUse, frozenset[str], float], None],
        reading: GpuUse,
        nodes: Mapping[str, Mapping[str, Any]],
        began: float,
        read_at: float,
    ) -> None:
        """Take in a reading of the GPUs in use; report the nodes' settled ones when they change.

        ``began``: when this round began; ``read_at``: when the Ray tables it was made of
        began to be read (the time the report bears).
        """
        current = _by_node(reading)
        unsettled = self._settle(current, set(nodes), began)
        self._tell_joined(current, unsettled, began)
        settled = {n: v for n, v in self._use_settled.items() if n not in unsettled}
        told = (settled, unsettled)
        if told == self._use_told and began - self._use_told_at < RESEND_S:
            return
        # Told once (until RESEND_S), even if the report fails: the round logs it.
        self._use_told, self._use_told_at = told, began
        in_use: dict[str, int] = {}
        held: dict[str, dict[str, int]] = {}
        for node, (count, shares) in settled.items():
            if count:
                in_use[node] = count
            for name, gpus in shares:
                held.setdefault(name, {})[node] = gpus
        report((in_use, held), unsettled, read_at)

    def _settle(
        self, current: Mapping[str, _NodeUse], alive: AbstractSet[str], now: float
    ) -> frozenset[str]:
        """Take in one reading, node by node; returns the nodes whose reading still moves.

        A node first seen (the first reading, or a node that joined) is unsettled for
        ``settle_s`` too, even with nothing in use: one early reading does not give back what
        the service found held when it started.
        """
        unsettled = set()
        for node in self._quiet - alive:  # gone with nothing in use
            del self._use_seen[node]
        self._quiet &= alive
        seen_nodes = self._use_seen.keys()
        for node in (seen_nodes - self._quiet) | current.keys() | (alive - seen_nodes):
            value = current.get(node, _NOTHING)
            seen = self._use_seen.get(node)
            if seen is None or seen[0] != value:
                self._use_seen[node] = seen = (value, now)
                self._quiet.discard(node)
            if now - seen[1] < self._settle_s:
                unsettled.add(node)
            elif value != _NOTHING:
                self._use_settled[node] = value
            else:  # settled with nothing in use: looked at again only when that changes
                self._use_settled.pop(node, None)
                if node in alive:
                    self._quiet.add(node)
                else:
                    del self._use_seen[node]
        return frozenset(unsettled)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if not self._alive():
                return
            try:
                self.poll()
            except Exception:  # the Ray boundary: a failed round is logged, the next one retries
                logger.exception("watching the cluster failed; trying again")
