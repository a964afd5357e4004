"""P2: from `Place` to every replica's master IP and port, against the same work in plain Ray.

Starts a local Ray cluster (head + one raylet of 128 logical GPUs), then, in one run:

1. plain Ray: 50 one-GPU placement groups, wait until all are ready, then a task in each bundle
   that returns the node's IP and a free port (what a user writes without this project);
2. the service, as started by default: one `Place` of 50 one-GPU replicas, until every master
   IP and port has resolved (each node's port agent gives the ports: no task per bundle);
3. the service with ``learn_gpu_ids=True`` (a probe task holds each bundle's GPUs to learn
   Ray's GPU ids), the same `Place`;
4. the `Place` reply for 100 replicas (futures handed out) against Ray's own time to accept 100
   groups (the ``placement_group()`` calls, which return before Ray schedules anything).

Each is measured 5 times, interleaved, after one warm-up of each; medians are compared.

    .venv/bin/python bench/resolution.py            # the table
    .venv/bin/python bench/resolution.py --check    # exit 1 if a bound is missed
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time

import pykka
import ray
from ray.util import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from placement_actors import Deployment, Place, PlacementResult, Release, start_on_ray
from placement_actors.backends import ray as on_ray

REPLICAS = 50
ACCEPT = 100
ROUNDS = 5
RESOLVE_BOUND = 0.5
"""The service's resolution time: at most this share of plain Ray's."""
REPLY_BOUND = 1.1
"""The `Place` reply for 100 replicas: at most this many times Ray's time to accept 100 groups."""


def node_ip_and_port() -> tuple[str, int]:
    """What a plain-Ray user runs in each bundle: the node's IP and a port free there."""
    ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        return str(ip), int(sock.getsockname()[1])


def all_gpus_free() -> None:
    """Wait until Ray has every GPU back, so that no section starts behind a removal."""
    total = ray.cluster_resources().get("GPU", 0)  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + 30
    while ray.available_resources().get("GPU", 0) < total and time.monotonic() < deadline:  # type: ignore[no-untyped-call]
        time.sleep(0.01)


def plain_ray() -> float:
    probe = ray.remote(node_ip_and_port)
    all_gpus_free()
    start = time.perf_counter()
    groups = [placement_group([{"CPU": 1, "GPU": 1}]) for _ in range(REPLICAS)]
    ray.get([g.ready() for g in groups], timeout=120)
    refs = [
        probe.options(
            num_cpus=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=g, placement_group_bundle_index=0
            ),
        ).remote()
        for g in groups
    ]
    ray.get(refs, timeout=120)
    elapsed = time.perf_counter() - start
    for group in groups:
        remove_placement_group(group)
    return elapsed


def ray_accepts() -> tuple[float, float]:
    """Ray's time to take 100 groups: the calls alone, and until every group is ready."""
    all_gpus_free()
    start = time.perf_counter()
    groups = [placement_group([{"CPU": 1, "GPU": 1}]) for _ in range(ACCEPT)]
    calls = time.perf_counter() - start
    ray.get([g.ready() for g in groups], timeout=120)
    ready = time.perf_counter() - start
    for group in groups:
        remove_placement_group(group)
    return calls, ready


class Service:
    """The service started in this driver, one `Place` at a time."""

    def __init__(self, *, learn_gpu_ids: bool) -> None:
        self.actor = start_on_ray(learn_gpu_ids=learn_gpu_ids, watch_s=None)
        self.round = 0

    def place(self, replicas: int, *, resolve: bool) -> float:
        self.round += 1
        name = f"bench-{self.round}"
        all_gpus_free()
        start = time.perf_counter()
        result = self.actor.ask(Place(Deployment(name=name, model="m", replicas=replicas)))
        assert isinstance(result, PlacementResult)
        if resolve:
            for replica in result.replicas:
                replica.master.node_ip.get(timeout=120)
                replica.master.port.get(timeout=120)
        elapsed = time.perf_counter() - start
        if not resolve:  # wait, so that the next round starts on a quiet cluster
            for replica in result.replicas:
                replica.master.port.get(timeout=120)
        self.actor.ask(Release(name), timeout=120)
        return elapsed

    def stop(self) -> None:
        self.actor.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a bound is missed")
    args = parser.parse_args()
    names = ("plain Ray", "service", "Ray calls", "Ray ready", "reply", "service, learn_gpu_ids")
    runs: dict[str, list[float]] = {name: [] for name in names}
    with on_ray.LocalCluster(head_gpus=0, worker_gpus=(128,)):
        # One service per Ray namespace at a time: the default one first, interleaved with
        # plain Ray; then one that learns GPU ids, for comparison.
        agents = Service(learn_gpu_ids=False)
        try:
            for warm_up in (True, *([False] * ROUNDS)):
                calls, ready = ray_accepts()
                found = {
                    "plain Ray": plain_ray(),
                    "service": agents.place(REPLICAS, resolve=True),
                    "Ray calls": calls,
                    "Ray ready": ready,
                    "reply": agents.place(ACCEPT, resolve=False),
                }
                for name, value in found.items():
                    runs[name].extend([] if warm_up else [value])
        finally:
            agents.stop()
        probes = Service(learn_gpu_ids=True)
        try:
            for warm_up in (True, *([False] * ROUNDS)):
                value = probes.place(REPLICAS, resolve=True)
                runs["service, learn_gpu_ids"].extend([] if warm_up else [value])
        finally:
            probes.stop()
            pykka.ActorRegistry.stop_all()
    median = {name: statistics.median(values) for name, values in runs.items()}
    resolve = median["service"] / median["plain Ray"]
    slow = median["service, learn_gpu_ids"] / median["plain Ray"]
    reply = median["reply"] / median["Ray ready"]
    calls = median["reply"] / median["Ray calls"]
    ms = {name: f"{value * 1e3:8.1f} ms" for name, value in median.items()}
    print(f"P2: medians of {ROUNDS} interleaved rounds after a warm-up, one local cluster")
    print(f"  {REPLICAS} one-GPU replicas, until every master IP and port is known:")
    print(f"    plain Ray (groups, ready, a task per bundle) {ms['plain Ray']}")
    print(f"    the service (port agents)                    {ms['service']}")
    print(
        f"      / plain Ray                                {resolve:8.2f}x"
        f"  (bound {RESOLVE_BOUND}x)"
    )
    print(f"    the service, learn_gpu_ids=True              {ms['service, learn_gpu_ids']}")
    print(f"      / plain Ray                                {slow:8.2f}x")
    print(f"  {ACCEPT} one-GPU replicas, the Place reply (futures handed out):")
    print(f"    Ray: create {ACCEPT} groups, wait for all        {ms['Ray ready']}")
    print(f"    Ray: the {ACCEPT} create calls alone             {ms['Ray calls']}")
    print(f"    the Place reply                              {ms['reply']}")
    print(f"      / Ray create + ready                       {reply:8.2f}x  (bound {REPLY_BOUND}x)")
    print(f"      / Ray create calls alone                   {calls:8.2f}x")
    missed = resolve > RESOLVE_BOUND or reply > REPLY_BOUND
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
