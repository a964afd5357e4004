"""Fixtures shared by the suite: actor clean-up, and one local Ray cluster per test session."""

import os
import threading
import time
from collections.abc import Iterator

import pykka
import pytest

# One explicit auth mode for the test cluster and every driver the tests start.
os.environ["RAY_AUTH_MODE"] = "disabled"

TEST_CLUSTER_WORKERS = {"gpu-a": 4, "gpu-b": 4, "gpu-c": 8, "gpu-bulk": 64}
"""Worker raylets of the test cluster and their logical GPUs; the head has 2 GPUs."""
HEAD_GPUS = 2


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    before = set(_actor_threads())  # one that an earlier test left is reported there, once
    yield
    pykka.ActorRegistry.stop_all(timeout=10)
    deadline = time.monotonic() + 10
    while (stuck := _actor_threads() - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    names = sorted(t.name for t in stuck)
    assert not stuck, f"actor threads still running after every actor stopped: {names}"


def _actor_threads() -> set[threading.Thread]:
    """The running pykka actor threads: they are not daemons, so one left running would hang
    the interpreter's exit, and CI with it."""
    return {
        t
        for t in threading.enumerate()
        if isinstance(getattr(getattr(t, "_target", None), "__self__", None), pykka.Actor)
    }


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """A head and four worker raylets with logical GPUs, started once for the whole session."""
    from placement_actors.backends.ray import LocalCluster  # noqa: PLC0415 - Ray tests only

    with LocalCluster(
        head_gpus=HEAD_GPUS,
        worker_gpus=tuple(TEST_CLUSTER_WORKERS.values()),
        worker_names=tuple(TEST_CLUSTER_WORKERS),
        egress_workers=(0,),
        cpus_per_node=8,
    ) as cluster:
        yield cluster


@pytest.fixture
def ray_nodes(ray_cluster: object) -> Iterator[dict[str, str]]:
    """Friendly name -> Ray node id; after the test, no placement group or record may be left."""
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray tests only

    del ray_cluster
    yield {name: node_id for node_id, name in on_ray.node_names().items()}
    pykka.ActorRegistry.stop_all(timeout=10)
    alive = {n: s for n, s in on_ray.group_states().items() if s.is_live}
    for name in alive:
        on_ray.remove_named_pgs_with_prefix(name)
    records = sorted(on_ray.GcsCheckpoints().load(""))
    on_ray.GcsCheckpoints().clear()
    assert alive == {}, f"the test left placement groups alive: {alive}"
    assert records == [], f"the test left checkpoint records: {records}"
