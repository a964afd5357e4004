"""Connecting a process to Ray: one cluster, whichever way its address is written."""

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from placement_actors import BackendError
from placement_actors.backends import ray as on_ray
from placement_actors.backends.ray.connection import _check_reachable


def test_the_cluster_this_process_is_on_is_known_by_its_loopback_names_too(
    ray_cluster: Any,
) -> None:
    port = int(ray_cluster.address.rpartition(":")[2])
    for spelling in (f"127.0.0.1:{port}", f"localhost:{port}", ray_cluster.address, "auto", None):
        assert on_ray.connect(spelling) is False  # connected already, to this very cluster


def test_another_address_than_the_cluster_this_process_is_on_is_refused(
    ray_cluster: Any,
) -> None:
    port = int(ray_cluster.address.rpartition(":")[2])
    with pytest.raises(BackendError, match="already connected"):
        on_ray.connect(f"127.0.0.1:{port + 1}")


@contextlib.contextmanager
def answering(answer: bytes, family: int = socket.AF_INET) -> Iterator[int]:
    """A server that reads what comes, answers ``answer`` (nothing: hangs up), and closes."""
    server = socket.socket(family)
    server.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.recv(1024)
                    conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


SETTINGS = bytes(3) + b"\x04" + bytes(5)  # what a gRPC server answers first


@pytest.mark.parametrize(
    "answer",
    [SETTINGS, b"\x15\x03\x03\x00\x02\x02\x46", b""],
    ids=["http2-settings", "tls-alert", "hang-up"],
)
def test_an_address_that_may_be_a_gcs_is_left_to_ray(answer: bytes) -> None:
    with answering(answer) as port:
        _check_reachable(f"127.0.0.1:{port}")  # no error: Ray decides


@pytest.mark.parametrize(
    "answer", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"<!DOCTYPE html>"], ids=["http", "html"]
)
def test_an_address_where_another_server_answers_is_refused_at_once(answer: bytes) -> None:
    with answering(answer) as port, pytest.raises(BackendError, match="not as a Ray cluster's GCS"):
        _check_reachable(f"127.0.0.1:{port}")


def test_a_cluster_with_tls_is_only_connected_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_USE_TLS", "1")
    with answering(b"HTTP/1.1 400 Bad Request\r\n\r\n") as port:
        _check_reachable(f"127.0.0.1:{port}")  # nothing sent but the TCP connection


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_an_ipv6_address_in_brackets_is_reached() -> None:
    try:
        server = answering(SETTINGS, socket.AF_INET6)
        port = server.__enter__()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        _check_reachable(f"[::1]:{port}")  # the host without its brackets: reached
    finally:
        server.__exit__(None, None, None)
