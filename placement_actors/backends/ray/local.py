"""A Ray cluster of several raylets on this machine, with logical GPUs: `make run` and the tests."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import ray

from placement_actors.backends.ray.cluster import EGRESS_LABEL, NAME_LABEL
from placement_actors.backends.ray.connection import NAMESPACE
from placement_actors.domain.errors import BackendError, InvalidSpecError

__all__ = ["LocalCluster"]


@dataclass(kw_only=True)
class LocalCluster:
    """A Ray cluster of several raylets on this machine, with logical GPUs (no GPU needed).

    Use as a context manager: it starts the head and one raylet per entry of ``worker_gpus``,
    connects this process to it in the service's namespace, and on exit disconnects and stops
    exactly this cluster (never ``ray stop``, which would kill every Ray process of the user).

    Attributes:
        head_gpus: logical GPUs of the head.
        worker_gpus: logical GPUs of each worker raylet.
        worker_names: friendly names, labelled ``placement-actors.io/name`` on the workers.
        egress_workers: indexes of workers labelled as egress nodes (the head always is).
        cpus_per_node: logical CPUs per raylet (each bundle asks for one); a worker with more
            GPUs than that gets one CPU per GPU, so every GPU can hold a bundle.
        temp_dir: Ray's temporary directory; a fresh one under the system's by default.
    """

    head_gpus: int = 0
    worker_gpus: Sequence[int] = (4, 4, 8)
    worker_names: Sequence[str] = ()
    egress_workers: Sequence[int] = ()
    cpus_per_node: int = 8
    temp_dir: Path | None = None
    _cluster: Any = field(default=None, init=False, repr=False)
    _workers: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _made_temp: bool = field(default=False, init=False, repr=False)
    _saved_env: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)

    def __enter__(self) -> Self:
        """Start the raylets and connect."""
        from ray.cluster_utils import Cluster  # noqa: PLC0415 - test utility, loaded on use

        if self.temp_dir is None:
            # Ray's socket paths must stay short: a short directory under /tmp, not pytest's.
            self.temp_dir = Path(tempfile.mkdtemp(prefix="pa-ray-", dir="/tmp"))
            self._made_temp = True
        self._saved_env = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
        os.environ["RAY_TMPDIR"] = str(self.temp_dir)
        # A throw-away local cluster: token auth needs a token file set up beforehand, so it is
        # off unless the caller chose a mode (the raylets inherit this environment).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        head_labels = {EGRESS_LABEL: "true", NAME_LABEL: "head"}
        try:
            self._cluster = Cluster(
                initialize_head=True,
                connect=False,
                head_node_args={
                    "num_cpus": self.cpus_per_node,
                    "num_gpus": self.head_gpus,
                    "labels": head_labels,
                },
            )
            for index, gpus in enumerate(self.worker_gpus):
                labels = {}
                if index < len(self.worker_names):
                    labels[NAME_LABEL] = self.worker_names[index]
                if index in self.egress_workers:
                    labels[EGRESS_LABEL] = "true"
                node = self._cluster.add_node(
                    num_cpus=max(self.cpus_per_node, gpus), num_gpus=gpus, labels=labels
                )
                self._workers[str(node.node_id)] = node
            self._cluster.wait_for_nodes()
            ray.init(
                address=self._cluster.address,
                namespace=NAMESPACE,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception as exc:
            self.__exit__(None, None, None)
            msg = f"cannot start a local Ray cluster: {exc}"
            raise BackendError(msg, operation="start local cluster") from exc
        return self

    def add_worker(self, *, gpus: int, name: str | None = None, egress: bool = False) -> str:
        """Start one more raylet with ``gpus`` logical GPUs; returns its node id."""
        labels = {EGRESS_LABEL: "true"} if egress else {}
        if name is not None:
            labels[NAME_LABEL] = name
        node = self._cluster.add_node(
            num_cpus=max(self.cpus_per_node, gpus), num_gpus=gpus, labels=labels
        )
        self._cluster.wait_for_nodes()
        self._workers[str(node.node_id)] = node
        return str(node.node_id)

    def remove_worker(self, node_id: str, *, graceful: bool = True) -> None:
        """Stop one worker raylet (``graceful=False``: as if it crashed).

        Raises:
            InvalidSpecError: no worker of this cluster has that node id.
        """
        node = self._workers.pop(node_id, None)
        if node is None:
            msg = f"no worker of this cluster is node {node_id}"
            raise InvalidSpecError(msg, field="node_id")
        self._cluster.remove_node(node, allow_graceful=graceful)

    @property
    def worker_ids(self) -> tuple[str, ...]:
        """The node ids of the worker raylets running now."""
        return tuple(self._workers)

    def gcs_answers(self, timeout_s: float = 2.0) -> bool:
        """Whether this cluster's GCS answers this driver within ``timeout_s``.

        A GCS sent SIGTERM (a supervisor that signals this process's whole group reaches Ray's
        processes too) stops answering at once and lingers; a driver's call would then wait a
        minute, until Ray ends the process with its own error. Clean-up that can do without
        the GCS asks this first.
        """
        if not ray.is_initialized():
            return False
        client = ray._private.worker.global_worker.gcs_client  # type: ignore[attr-defined]  # noqa: SLF001
        try:
            client.internal_kv_get(b"placement-actors:probe", namespace=None, timeout=timeout_s)
        except Exception:  # noqa: BLE001 - any failure to answer is an answer
            return False
        return True

    @property
    def address(self) -> str:
        """The cluster's GCS address, for other drivers."""
        return str(self._cluster.address)

    def __exit__(self, *exc_info: object) -> None:
        """Disconnect, stop this cluster's raylets, restore the environment, delete temp files."""
        if ray.is_initialized():
            ray.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._made_temp and self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
