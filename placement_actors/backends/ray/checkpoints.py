"""`GcsCheckpoints`: the service's records in Ray's GCS key-value store.

The GCS key-value store is where Ray's own controllers (Ray Serve's, for one) checkpoint their
state: it outlives every actor and driver, and with GCS fault tolerance the head too. Keys live
in the service's namespace under a root of their own, so nothing else of Ray's is touched.
"""

from __future__ import annotations

from ray.experimental import internal_kv

from placement_actors.backends.ray.connection import NAMESPACE
from placement_actors.domain.errors import BackendError

__all__ = ["CHECKPOINT_ROOT", "GcsCheckpoints"]

CHECKPOINT_ROOT = "checkpoints/"
"""The key root of every record the service writes."""


class GcsCheckpoints:
    """A `placement_actors.backends.protocol.CheckpointStore` in Ray's GCS key-value store.

    The process must be connected to Ray. Each call is one round trip to the GCS (about a
    millisecond on a local cluster).

    Args:
        namespace: the key-value namespace (the service's Ray namespace by default).
        root: prefixed to every key.
    """

    def __init__(self, *, namespace: str = NAMESPACE, root: str = CHECKPOINT_ROOT) -> None:
        """Keep where the records go; nothing is read or written yet."""
        self._namespace = namespace
        self._root = root

    def save(self, key: str, value: bytes) -> None:
        """Write ``value`` under ``key``, replacing what was there."""
        try:
            internal_kv._internal_kv_put(  # noqa: SLF001 - Ray's checkpoint store, as Serve uses
                self._root + key, value, overwrite=True, namespace=self._namespace
            )
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"cannot write checkpoint {key}: {exc}"
            raise BackendError(msg, operation="write checkpoint") from exc

    def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is no error."""
        try:
            internal_kv._internal_kv_del(self._root + key, namespace=self._namespace)  # noqa: SLF001
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"cannot delete checkpoint {key}: {exc}"
            raise BackendError(msg, operation="delete checkpoint") from exc

    def load(self, prefix: str) -> dict[str, bytes]:
        """Every key starting with ``prefix`` (without the root) and its value."""
        try:
            keys = internal_kv._internal_kv_list(self._root + prefix, namespace=self._namespace)  # noqa: SLF001
            found: dict[str, bytes] = {}
            for raw in keys:
                value = internal_kv._internal_kv_get(raw, namespace=self._namespace)  # noqa: SLF001
                if value is not None:  # deleted between the listing and the read
                    found[raw.decode()[len(self._root) :]] = value
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"cannot read checkpoints: {exc}"
            raise BackendError(msg, operation="read checkpoints") from exc
        return found

    def clear(self) -> int:
        """Delete every record under the root; returns how many (for tests and operators)."""
        found = self.load("")
        for key in found:
            self.delete(key)
        return len(found)
