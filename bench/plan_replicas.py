"""100 replicas planned together through both actors, against Ray's own time for 100 groups.

Starts a local Ray cluster (head + one raylet with 128 logical GPUs), then:

1. Ray alone: create 100 one-GPU placement groups and wait until all are ready.
2. The service: one `Place` of a 100-replica deployment; time until the reply (the actors answer
   before Ray has scheduled anything) and until every replica's master port has resolved (groups
   ready, IP and a free port probed in every bundle).
"""

from __future__ import annotations

import time

import ray
from ray.util import placement_group, remove_placement_group

from placement_actors import (
    Deployment,
    Place,
    PlacementResult,
    Release,
    start_on_ray,
)
from placement_actors.backends import ray as on_ray

REPLICAS = 100


def ray_alone() -> float:
    start = time.perf_counter()
    groups = [placement_group([{"CPU": 1, "GPU": 1}], name=f"bench-{i}") for i in range(REPLICAS)]
    ray.get([g.ready() for g in groups], timeout=120)
    elapsed = time.perf_counter() - start
    for group in groups:
        remove_placement_group(group)
    return elapsed


def through_the_service() -> tuple[float, float]:
    actor = start_on_ray()
    try:
        deployment = Deployment(name="bench", model="m", replicas=REPLICAS)
        start = time.perf_counter()
        result = actor.ask(Place(deployment), timeout=120)
        replied = time.perf_counter() - start
        assert isinstance(result, PlacementResult)
        for replica in result.replicas:
            replica.master.port.get(timeout=120)
        resolved = time.perf_counter() - start
        actor.ask(Release("bench"), timeout=120)
    finally:
        actor.stop()  # and its planner: a live actor thread would keep the script running
    return replied, resolved


def main() -> None:
    with on_ray.LocalCluster(head_gpus=0, worker_gpus=(128,)):
        ray_alone()  # warm up: first worker processes, first scheduling round
        through_the_service()
        baseline = min(ray_alone() for _ in range(3))
        runs = [through_the_service() for _ in range(3)]
    replied = min(r for r, _ in runs)
    resolved = min(r for _, r in runs)
    print(f"{REPLICAS} one-GPU replicas on a local cluster (best of 3 after a warm-up run)")
    print(f"  Ray alone, create + all ready:           {baseline * 1000:8.1f} ms")
    print(f"  Place reply (futures handed out):        {replied * 1000:8.1f} ms")
    print(f"  every master IP and port resolved:       {resolved * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
