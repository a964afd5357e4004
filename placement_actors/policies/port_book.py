"""Ports handed out to replicas, per host address.

The raylets of one machine all report the same host address, so two "nodes" may share a host:
ports are unique per host address, not per node id. A port given out stays taken until its holder
is released, so no two live replicas are ever told the same port on one host.
"""

from __future__ import annotations

import threading

__all__ = ["PortBook"]


class PortBook:
    """Ports handed out, per host address; thread-safe. A port is never given twice on one host."""

    def __init__(self) -> None:
        """Start empty."""
        self._lock = threading.Lock()
        self._given: dict[str, dict[int, str]] = {}

    def given(self, host: str | None = None) -> frozenset[int]:
        """Ports given on ``host`` (on every host when ``None``)."""
        with self._lock:
            if host is not None:
                return frozenset(self._given.get(host, ()))
            return frozenset(p for ports in self._given.values() for p in ports)

    def claim(self, host: str, port: int, holder: str) -> bool:
        """Record ``port`` on ``host`` for ``holder``; ``False`` if someone holds it already."""
        with self._lock:
            ports = self._given.setdefault(host, {})
            if port in ports:
                return False
            ports[port] = holder
            return True

    def release(self, holder: str) -> int:
        """Forget every port ``holder`` was given; returns how many."""
        with self._lock:
            freed = 0
            for ports in self._given.values():
                for port in [p for p, h in ports.items() if h == holder]:
                    del ports[port]
                    freed += 1
            return freed
