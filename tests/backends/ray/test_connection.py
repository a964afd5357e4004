"""Connecting a process to Ray: one cluster, whichever way its address is written."""

from typing import Any

import pytest

from placement_actors import BackendError
from placement_actors.backends import ray as on_ray


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
