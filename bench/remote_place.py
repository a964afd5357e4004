"""P4: a `Place` from another process costs one round trip more than a `Place` in the driver.

On a local Ray cluster (head + one raylet of 128 logical GPUs), one-GPU deployments, median of
3 rounds of 30 `Place` replies (futures not awaited), measured in one run:

- local: the service started in this driver (`start_on_ray`), asked directly;
- round trip: a plain query (`GetClusterView`) to the hosted service through `PlacementClient`;
- remote: the same `Place` through `PlacementClient` to the hosted service.

The bound: remote <= 1.5 x (local + round trip). ``--check`` exits 1 when it is missed.

    .venv/bin/python bench/remote_place.py [--check]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from placement_actors import Deployment, GetClusterView, Place, Release, start_on_ray

ROUNDS = 3
PER_ROUND = 30
BOUND = 1.5
TIMEOUT = 60


def timed(ask: Callable[[Any], Any], messages: list[Any]) -> list[float]:
    took = []
    for message in messages:
        start = time.perf_counter()
        ask(message)
        took.append(time.perf_counter() - start)
    return took


def places(prefix: str, round_: int) -> list[Place]:
    return [
        Place(Deployment(name=f"{prefix}-{round_}-{i}", model="m", gpus=1))
        for i in range(PER_ROUND)
    ]


def release_all(ask: Callable[[Any], Any], batch: list[Place]) -> None:
    for place in batch:
        ask(Release(place.deployment.name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the bound is missed")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from placement_actors.backends.ray import LocalCluster  # noqa: PLC0415 - Ray loads here
    from placement_actors.service import PlacementClient  # noqa: PLC0415

    local_s: list[float] = []
    remote_s: list[float] = []
    trip_s: list[float] = []
    with LocalCluster(head_gpus=0, worker_gpus=(128,), cpus_per_node=4):
        service = start_on_ray(ready_timeout_s=60)
        ask_local = lambda m: service.ask(m, timeout=TIMEOUT)  # noqa: E731
        for round_ in range(ROUNDS + 1):  # the first round warms up
            batch = places("local", round_)
            took = timed(ask_local, batch)
            if round_:
                local_s.extend(took)
            release_all(ask_local, batch)
        service.stop(timeout=TIMEOUT)
        client = PlacementClient.serve(name="bench-remote-place")
        try:
            ask_remote = lambda m: client.ask(m, timeout=TIMEOUT)  # noqa: E731
            for round_ in range(ROUNDS + 1):
                trips = timed(ask_remote, [GetClusterView()] * PER_ROUND)
                batch = places("remote", round_)
                took = timed(ask_remote, batch)
                if round_:
                    trip_s.extend(trips)
                    remote_s.extend(took)
                release_all(ask_remote, batch)
        finally:
            client.stop_service()
    local, trip, remote = (statistics.median(x) * 1e3 for x in (local_s, trip_s, remote_s))
    ratio = remote / (local + trip)
    print(f"python {sys.version.split()[0]}; medians of {ROUNDS} rounds of {PER_ROUND}")
    print(f"local Place reply            {local:8.2f} ms")
    print(f"query round trip to the host {trip:8.2f} ms")
    print(f"remote Place reply           {remote:8.2f} ms")
    print(f"remote / (local + round trip) {ratio:7.2f}x   (bound {BOUND:g}x)")
    return 1 if args.check and ratio > BOUND else 0


if __name__ == "__main__":
    sys.exit(main())
