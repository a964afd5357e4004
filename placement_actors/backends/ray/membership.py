"""Following the cluster as it changes: nodes that join or die, groups Ray reschedules.

A `ClusterWatcher` polls Ray's node table and the placement-group table from a thread of its own
and reports each change once, through callbacks (the wiring turns them into messages to the
DeploymentPlacementActor, so the actor's mailbox never waits on Ray). Measured on Ray 2.60: a
node removed gracefully is marked dead within ~0.05 s, a crashed one after the health check
(~16 s); a group pinned to a dead node goes to ``RESCHEDULING`` at once and never becomes ready
again by itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from placement_actors.backends.ray.cluster import alive_nodes, is_egress, node_topology
from placement_actors.backends.ray.groups import groups_in
from placement_actors.domain.deployments import GROUP_NAME_ROOT
from placement_actors.domain.errors import PlacementError
from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.topology import NodeTopology

__all__ = ["ClusterWatcher"]

logger = logging.getLogger(__name__)


class ClusterWatcher:
    """Reports nodes that join or die and groups Ray reschedules, each once, from its own thread.

    Args:
        known: the node ids the service already knows (alive when it started).
        on_joined: called with a node that joined and whether it is an egress node.
        on_lost: called with the id of a node that died or left.
        on_rescheduling: called with the name and Ray's id of one of the service's groups that
            Ray is rescheduling (it was ready, and a node under it is gone).
        alive: polled before each round; the watcher stops when it returns ``False`` (the actor
            it reports to has stopped).
        interval_s: seconds between two rounds.
        nodes: reads the alive nodes' ``ray.nodes()`` records by node id (Ray's, by default).
        rescheduling: reads the service's groups Ray is rescheduling, name by Ray's group id
            (Ray's, by default).
    """

    def __init__(
        self,
        *,
        known: Iterable[str],
        on_joined: Callable[[NodeTopology, bool], None],
        on_lost: Callable[[str], None],
        on_rescheduling: Callable[[str, str], None],
        alive: Callable[[], bool] = lambda: True,
        interval_s: float = 0.25,
        nodes: Callable[[], Mapping[str, Mapping[str, Any]]] = alive_nodes,
        rescheduling: Callable[[], Mapping[str, str]] = lambda: groups_in(
            GroupStatus.RESCHEDULING, GROUP_NAME_ROOT
        ),
    ) -> None:
        """Remember the known nodes; nothing is polled until `start`."""
        self._known = set(known)
        self._refused: set[str] = set()  # joined nodes the service cannot take in (told once)
        self._on_joined = on_joined
        self._on_lost = on_lost
        self._on_rescheduling = on_rescheduling
        self._alive = alive
        self._interval_s = interval_s
        self._nodes = nodes
        self._rescheduling = rescheduling
        self._reported: set[str] = set()
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
        joined = set()
        for node_id in sorted(set(nodes) - self._known):
            record = nodes[node_id]
            try:
                topology = node_topology(record)
            except PlacementError as exc:  # one odd node must not hide the others' changes
                if node_id not in self._refused:
                    logger.warning("node %s cannot be placed on: %s", node_id, exc)
                    self._refused.add(node_id)
                continue
            self._on_joined(topology, is_egress(record))
            joined.add(node_id)
        for node_id in sorted(self._known - set(nodes)):
            self._on_lost(node_id)
        self._known = (self._known & set(nodes)) | joined
        self._refused &= set(nodes)
        moving = self._rescheduling()
        for group_id in sorted(set(moving) - self._reported):
            self._on_rescheduling(moving[group_id], group_id)
        self._reported = set(moving)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if not self._alive():
                return
            try:
                self.poll()
            except Exception:  # the Ray boundary: a failed round is logged, the next one retries
                logger.exception("watching the cluster failed; trying again")
