"""Connecting a process to Ray, in the service's namespace."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import ray
from ray.exceptions import RayError

from placement_actors.domain.errors import BackendError

__all__ = ["NAMESPACE", "check_namespace", "connect", "connected"]

NAMESPACE = "placement-actors"
"""The Ray namespace the service's detached placement groups and its host actor live in."""


def connect(address: str | None = None, *, namespace: str = NAMESPACE) -> bool:
    """Connect this process to Ray (``None``: the cluster ``RAY_ADDRESS`` names, else a new one).

    A ``host:port`` address is checked with a plain TCP connection first: ``ray.init`` waits for
    minutes on an address where nothing listens. A process already connected keeps its
    connection (to the same cluster).

    Returns:
        ``True`` if this call connected, ``False`` if the process was connected to it already.

    Raises:
        BackendError: Ray could not be reached, or this process is connected to another cluster.
    """
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in {None, "auto", current} and _canonical(address) != current:
            msg = f"this process is already connected to Ray at {current}, not {address}"
            raise BackendError(msg, operation="connect")
        return False
    if address is not None:
        _check_reachable(address)
    try:
        ray.init(
            address=address,
            namespace=namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (RayError, ConnectionError, RuntimeError, ValueError) as exc:
        msg = f"cannot connect to Ray at {address or 'the default address'}: {exc}"
        raise BackendError(msg, operation="connect") from exc
    return True


def check_namespace() -> None:
    """Refuse a connection in another namespace than the service's: its groups would be lost.

    Ray names a placement group (and an actor such as the service's host, and whatever that
    actor makes) in the namespace of the driver that made it, and finds it by name only there.
    The service keeps its records in `NAMESPACE` and takes its groups back by name; groups made
    from another namespace would be placed twice and held for good after a restart.

    Raises:
        BackendError: this process is connected in another namespace.
    """
    current = ray.get_runtime_context().namespace
    if current != NAMESPACE:
        msg = (
            f"this process is connected to Ray in namespace {current!r}; the service names its "
            f"placement groups in {NAMESPACE!r}, where a restarted service finds them: connect "
            f"with ray.init(..., namespace={NAMESPACE!r}), or let placement-actors connect"
        )
        raise BackendError(msg, operation="connect")


def _canonical(address: str) -> str:
    """``address`` as Ray writes a cluster's address (``localhost:6379`` -> this host's IP).

    Ray rewrites loopback and host names when it connects, so one cluster may be named in two
    ways; an address Ray cannot read is left as it is.
    """
    try:
        from ray._private.services import canonicalize_bootstrap_address  # noqa: PLC0415

        return canonicalize_bootstrap_address(address) or address
    except Exception:  # noqa: BLE001 - Ray's own reading of the text; none: compared as given
        return address


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04" + bytes(5)
"""What an HTTP/2 client sends first: the connection preface, then an empty SETTINGS frame."""
_SETTINGS = 4
"""The type of an HTTP/2 SETTINGS frame: a server's first frame."""
_TYPE_AT = 3
"""Where a frame's type is: after its three bytes of length."""
_TLS_RECORDS = frozenset({0x15, 0x16})
"""The first byte of a TLS alert or handshake record: a GCS with TLS may answer so."""


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast where ``ray.init`` would wait: nothing listens, or not a Ray GCS.

    The GCS speaks gRPC, so it answers an HTTP/2 preface with a SETTINGS frame at once; another
    server (the dashboard's port, any web server) answers something else. A server that hangs
    up, answers as TLS does, or says nothing in time is left to Ray, as is every address of a
    cluster with TLS (``RAY_USE_TLS``: only the TCP connection is tried).
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "ray://..." and the like: Ray resolves them itself
    host = host.removeprefix("[").removesuffix("]")  # an IPv6 address: [::1]:6379
    tls = os.environ.get("RAY_USE_TLS", "0").lower() in {"1", "true"}
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            first = None if tls else _first_bytes(sock)  # (a TLS GCS wants a handshake first)
    except OSError as exc:
        msg = f"nothing answers at {address} ({exc.strerror or exc}); is the Ray head running?"
        raise BackendError(msg, operation="connect") from exc
    if (
        first
        and first[0] not in _TLS_RECORDS
        and (len(first) <= _TYPE_AT or first[_TYPE_AT] != _SETTINGS)
    ):
        msg = (
            f"something answers at {address}, but not as a Ray cluster's GCS does; give the "
            "head's GCS port (6379 unless `ray start --port` said otherwise), not the "
            "dashboard's (8265)"
        )
        raise BackendError(msg, operation="connect")


def _first_bytes(sock: socket.socket) -> bytes | None:
    """What a server answers an HTTP/2 preface with (``b""``: it hung up; ``None``: silence)."""
    try:
        sock.sendall(_HTTP2_PREFACE)
        got = b""
        while len(got) <= _TYPE_AT:
            chunk = sock.recv(_TYPE_AT + 1 - len(got))
            if not chunk:
                break
            got += chunk
    except TimeoutError:
        return None
    except OSError:
        return b""  # reset (a TLS server may): left to Ray
    return got


@contextlib.contextmanager
def connected(address: str, *, namespace: str = NAMESPACE) -> Iterator[None]:
    """Connect to the cluster at ``address`` for the ``with`` block; disconnect only if it did."""
    made = connect(address, namespace=namespace)
    try:
        yield
    finally:
        if made:
            ray.shutdown()
