"""What the actors need from a cluster backend.

Every method returns at once: readiness and probe results come back through callbacks, which the
actors turn into messages to themselves, so no actor handler ever waits on the cluster.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.results import ReplicaBundleSpec
from placement_actors.domain.topology import NodeTopology

__all__ = [
    "BundleProbe",
    "CheckpointStore",
    "ClusterBackend",
    "MemoryCheckpoints",
    "ProbeCallback",
    "ReadyCallback",
]


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
        node: str | None = None,
    ) -> None:
        """Find the bundle's node IP, a free port (not in ``exclude_ports``) and its GPU ids.

        With ``gpus``, the probe runs in the bundle and asks for its ``gpus`` GPUs, so it sees
        the ids Ray gave the bundle. Without, and with the ``node`` the bundle is pinned to, the
        backend may answer from that node without entering the bundle (no GPU ids then).
        """
        ...

    def remove_groups_with_prefix(self, prefix: str) -> int:
        """Remove every live group whose name starts with ``prefix``; returns how many."""
        ...

    def find_group(self, name: str, group_id: str) -> object | None:
        """The live group named ``name`` whose cluster id is ``group_id``, else ``None``.

        How a restarted service takes its earlier run's groups back (see
        `placement_actors.policies.recovery`).
        """
        ...


class CheckpointStore(Protocol):
    """Where the service writes down what it must not lose across a restart.

    On Ray: `placement_actors.backends.ray.checkpoints.GcsCheckpoints` (the GCS key-value
    store, which outlives the service's actors). Every method raises
    `placement_actors.domain.errors.BackendError` when the store cannot be reached.
    """

    def save(self, key: str, value: bytes) -> None:
        """Write ``value`` under ``key``, replacing what was there."""
        ...

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is no error."""
        ...

    def load(self, prefix: str) -> dict[str, bytes]:
        """Every key starting with ``prefix`` and its value."""
        ...


class MemoryCheckpoints:
    """A `CheckpointStore` in this process's memory: for a service without a cluster store.

    It lives as long as the object: pass the same one to a service started again in the same
    process to recover it. Thread-safe.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._lock = threading.Lock()
        self._kept: dict[str, bytes] = {}

    def save(self, key: str, value: bytes) -> None:
        """Write ``value`` under ``key``."""
        with self._lock:
            self._kept[key] = bytes(value)

    def delete(self, key: str) -> None:
        """Delete ``key`` if it is there."""
        with self._lock:
            self._kept.pop(key, None)

    def load(self, prefix: str) -> dict[str, bytes]:
        """Every key starting with ``prefix`` and its value."""
        with self._lock:
            return {k: v for k, v in self._kept.items() if k.startswith(prefix)}
