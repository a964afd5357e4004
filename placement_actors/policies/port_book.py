"""Ports handed out to replicas, per host address, and what to do with a probed port.

The raylets of one machine all report the same host address, so two "nodes" may share a host:
ports are unique per host address, not per node id. A port given out stays taken until its holder
is released, so no two live replicas are ever told the same port on one host.

`judge_probe` is the one rule for a port a probe found on a bundle's node: claim it, probe again
(someone holds it already), or give up after `PROBE_ATTEMPTS`. The PlanningActor and the blocking
`placement_actors.backends.ray.bundles.get_free_port_in_bundle` both follow it.

A `PortBook` is a plain data structure: no lock, no clock. Its owner serialises access (an
actor's thread, or the lock the blocking functions keep beside the process-wide book).
"""

from __future__ import annotations

import enum

from placement_actors.domain.errors import BackendError

__all__ = ["PROBE_ATTEMPTS", "PortBook", "ProbeVerdict", "judge_probe", "no_port_error"]

PROBE_ATTEMPTS = 5
"""How often a bundle's port is probed when the ports found were already given on its host."""


class PortBook:
    """Ports handed out, per host address. A port is never given twice on one host."""

    def __init__(self) -> None:
        """Start empty."""
        self._given: dict[str, dict[int, str]] = {}

    def given(self, host: str | None = None) -> frozenset[int]:
        """Ports given on ``host`` (on every host when ``None``)."""
        if host is not None:
            return frozenset(self._given.get(host, ()))
        return frozenset(p for ports in self._given.values() for p in ports)

    def claim(self, host: str, port: int, holder: str) -> bool:
        """Record ``port`` on ``host`` for ``holder``; ``False`` if someone holds it already."""
        ports = self._given.setdefault(host, {})
        if port in ports:
            return False
        ports[port] = holder
        return True

    def holder(self, host: str, port: int) -> str | None:
        """Who holds ``port`` on ``host``; ``None`` if it is free."""
        return self._given.get(host, {}).get(port)

    def holders(self) -> set[str]:
        """Everyone who holds a port."""
        return {h for ports in self._given.values() for h in ports.values()}

    def release(self, holder: str) -> int:
        """Forget every port ``holder`` was given; returns how many."""
        freed = 0
        for ports in self._given.values():
            for port in [p for p, h in ports.items() if h == holder]:
                del ports[port]
                freed += 1
        return freed


class ProbeVerdict(enum.Enum):
    """What to do with a port a probe found."""

    CLAIMED = "claimed"
    """The port is the holder's now."""
    PROBE_AGAIN = "probe again"
    """Someone holds it on that host: probe once more."""
    GIVE_UP = "give up"
    """Every probe found a port someone holds: fail with `no_port_error`."""


def judge_probe(
    book: PortBook, host: str, port: int, holder: str, *, probes_made: int
) -> ProbeVerdict:
    """Claim ``port`` on ``host`` for ``holder`` if free in ``book``; else say what comes next.

    Args:
        book: the ports given so far.
        host: the bundle node's routable address.
        port: the port the probe found free on the node.
        holder: who would hold it (a placement group's name).
        probes_made: probes made for this bundle so far, this one included.
    """
    if book.claim(host, port, holder):
        return ProbeVerdict.CLAIMED
    return ProbeVerdict.PROBE_AGAIN if probes_made < PROBE_ATTEMPTS else ProbeVerdict.GIVE_UP


def no_port_error(host: str) -> BackendError:
    """The failure after `PROBE_ATTEMPTS` probes found only ports given already."""
    msg = f"no unclaimed port found on {host} after {PROBE_ATTEMPTS} probes"
    return BackendError(msg, operation="probe bundle")
