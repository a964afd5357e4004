"""What the actors need from a cluster backend.

Every method returns at once: readiness and probe results come back through callbacks, which the
actors turn into messages to themselves, so no actor handler ever waits on the cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.results import ReplicaBundleSpec
from placement_actors.domain.topology import NodeTopology

__all__ = ["BundleProbe", "ClusterBackend", "ProbeCallback", "ReadyCallback"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleProbe:
    """What a probe run inside a bundle found: the node's IP, a port free on it, and its GPUs.

    ``gpu_ids`` are the GPU ids Ray assigned to the bundle (what ``ray.get_gpu_ids()`` and
    ``CUDA_VISIBLE_DEVICES`` show a worker in it), ascending; empty when not asked for.
    """

    node_ip: str
    port: int
    gpu_ids: tuple[int, ...] = ()


ReadyCallback = Callable[[BaseException | None], None]
"""Called once, from a backend thread: ``None`` when the group is ready, else the failure."""

ProbeCallback = Callable[[BundleProbe | BaseException], None]
"""Called once, from a backend thread, with the probe's result or its failure."""


class ClusterBackend(Protocol):
    """A cluster that reserves placement groups (on Ray: `backends.ray.backend.RayBackend`).

    Group handles are opaque to the actors: they only pass them back to the backend.
    """

    def topology(self) -> tuple[NodeTopology, ...]:
        """The alive GPU nodes."""
        ...

    def create_group(self, spec: ReplicaBundleSpec, *, name: str) -> object:
        """Ask for a detached, named group of ``spec``'s bundles; returns before it is ready."""
        ...

    def group_id(self, group: object) -> str:
        """The cluster's own id of ``group`` (unique, unlike its name)."""
        ...

    def when_ready(self, group: object, callback: ReadyCallback) -> None:
        """Arrange for ``callback`` to be called when ``group`` is ready or has failed."""
        ...

    def scheduling_state(self, group: object) -> GroupStatus:
        """The backend's word on a group: `GroupStatus.CREATED`, `GroupStatus.INFEASIBLE`, ..."""
        ...

    def remove_group(self, group: object) -> None:
        """Remove ``group`` and free what it holds; removing a removed group is no error."""
        ...

    def probe_bundle(
        self,
        group: object,
        bundle_index: int,
        *,
        exclude_ports: frozenset[int],
        callback: ProbeCallback,
        gpus: int = 0,
    ) -> None:
        """Find the bundle's node IP, a free port (not in ``exclude_ports``) and its GPU ids.

        The probe asks for the bundle's ``gpus`` GPUs, so it sees the ids Ray gave the bundle.
        """
        ...

    def remove_groups_with_prefix(self, prefix: str) -> int:
        """Remove every live group whose name starts with ``prefix``; returns how many."""
        ...
