"""`RayBackend`: the cluster the actors use, on Ray; every method returns at once."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any

from ray.util.placement_group import PlacementGroup

from placement_actors.backends.protocol import BundleProbe, ProbeCallback, ReadyCallback
from placement_actors.backends.ray import bundles, cluster, groups, port_agents
from placement_actors.domain.errors import BackendError, InvalidSpecError
from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.results import ReplicaBundleSpec
from placement_actors.domain.topology import NodeTopology

__all__ = ["RayBackend"]

logger = logging.getLogger(__name__)


def _pg(group: object) -> PlacementGroup:
    if not isinstance(group, PlacementGroup):
        msg = f"not a Ray placement group: {type(group).__name__}"
        raise InvalidSpecError(msg, field="group")
    return group


def _watch(pg: PlacementGroup, callback: ReadyCallback) -> None:
    try:
        future = pg.ready().future()
    except Exception as exc:  # noqa: BLE001 - the Ray error-mapping boundary, reported not raised
        callback(BackendError(f"cannot watch placement group: {exc}", operation="watch group"))
        return

    def done(settled: Any) -> None:  # noqa: ANN401 - a concurrent.futures.Future
        error = settled.exception()
        callback(None if error is None else error)

    future.add_done_callback(done)


class RayBackend:
    """`placement_actors.backends.protocol.ClusterBackend` on Ray; every method returns at once.

    Each method is a call of the one implementation in `groups`, `bundles` or `cluster`, which
    the blocking public functions use too. The process must be connected to Ray
    (`placement_actors.backends.ray.connection.connect` or `LocalCluster`) first.
    """

    def __init__(self) -> None:
        """No threads yet: the readiness watcher starts with the first group."""
        self._lock = threading.Lock()
        self._watching: concurrent.futures.ThreadPoolExecutor | None = None

    def topology(self) -> tuple[NodeTopology, ...]:
        """The alive GPU nodes."""
        return cluster.get_cluster_topology()

    def create_group(self, spec: ReplicaBundleSpec, *, name: str) -> object:
        """Ask Ray for the group; Ray answers before scheduling it."""
        return groups.create_group(
            spec.bundles, spec.strategy, name=name, bundle_label_selector=spec.bundle_label_selector
        )

    def group_id(self, group: object) -> str:
        """Ray's placement-group id, in hex."""
        return str(_pg(group).id.hex())

    def when_ready(self, group: object, callback: ReadyCallback) -> None:
        """Call ``callback`` from Ray's thread when the group is ready (or its wait failed).

        Returns at once: Ray's readiness check (a small task in the group) is submitted from
        this backend's own thread, so a caller that creates many groups in a row does not wait
        for those submissions; a submission that fails is reported to ``callback`` as an error.
        """
        pg = _pg(group)
        try:
            self._watcher().submit(_watch, pg, callback)
        except RuntimeError as exc:  # the interpreter is shutting down: no new threads
            msg = f"cannot watch placement group: {exc}"
            raise BackendError(msg, operation="watch group") from exc

    def _watcher(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._watching is None:
                self._watching = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="placement-group-watch"
                )
            return self._watching

    def scheduling_state(self, group: object) -> GroupStatus:
        """What Ray says of the group now."""
        return groups.status_of(_pg(group))

    def remove_group(self, group: object) -> None:
        """Remove the group (quietly if it is gone already)."""
        groups.remove_group(_pg(group))

    def probe_bundle(
        self,
        group: object,
        bundle_index: int,
        *,
        exclude_ports: frozenset[int],
        callback: ProbeCallback,
        gpus: int = 0,
        node: str | None = None,
    ) -> None:
        """Find the bundle's endpoint; ``callback`` gets its `BundleProbe` or the failure.

        With ``gpus``, or without ``node``, a probe task in the bundle (it learns Ray's GPU ids);
        otherwise one call to ``node``'s port agent (`port_agents`): no task, no worker start.
        Should the agent fail (its process ended with its owner's, its node is going), the
        bundle is probed with a task after all, and the next call starts a new agent.
        """
        pg = _pg(group)
        if gpus or node is None:
            bundles.probe_bundle(
                pg, bundle_index, exclude_ports=exclude_ports, callback=callback, gpus=gpus
            )
            return

        def answered(outcome: BundleProbe | BaseException) -> None:
            if isinstance(outcome, BaseException):  # the agent is gone: a task in the bundle
                logger.warning("port agent of %s failed (%s); probing in the bundle", node, outcome)
                bundles.probe_bundle(
                    pg, bundle_index, exclude_ports=exclude_ports, callback=callback
                )
                return
            callback(outcome)

        port_agents.probe_with_agent(node, exclude_ports=exclude_ports, callback=answered)

    def remove_groups_with_prefix(self, prefix: str) -> int:
        """Remove every live group of this namespace named ``prefix...``."""
        return groups.remove_named_pgs_with_prefix(prefix)

    def find_group(self, name: str, group_id: str) -> object | None:
        """This namespace's live group ``name`` if its id is ``group_id``."""
        return groups.find_group(name, group_id)
