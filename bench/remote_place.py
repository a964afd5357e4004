"""P4: a `Place` from another process costs one round trip more than a `Place` in the driver.

On a local Ray cluster (head + one raylet of 128 logical GPUs), one-GPU deployments, median of
3 rounds of 30 `Place` replies (futures not awaited), measured in one run:

- local: the service started in this driver (`start_on_ray`), asked directly;
- round trip: a plain query (`GetClusterView`) to the hosted service through `PlacementClient`;
- remote: the same `Place` through `PlacementClient` to the hosted service;
- busy: the query round trip again, while another client (in another thread) keeps placing and
  releasing 100-replica deployments through the same service (does its `Place` hold us up?).

The bound: remote <= 1.5 x (local + round trip). ``--check`` exits 1 when it is missed.

    .venv/bin/python bench/remote_place.py [--check]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from placement_actors import Deployment, GetClusterView, Place, Release, start_on_ray

ROUNDS = 3
PER_ROUND = 30
BOUND = 1.5
BUSY_BOUND = 0.25
"""A query while another client's 100-replica `Place` is in flight: at most this share of it."""
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


def while_busy(other: Any, ask: Callable[[Any], Any]) -> tuple[list[float], list[float]]:  # noqa: ANN401
    """Query round trips while another client keeps a 100-replica `Place` in flight.

    ``other`` is a second `PlacementClient` of the same service, used from another thread: a
    client's own queries wait behind its own commands, other clients' do not.
    """
    stop = threading.Event()
    places_s: list[float] = []

    def keep_placing() -> None:
        count = 0
        while not stop.is_set():
            name = f"busy-{count}"
            start = time.perf_counter()
            other.ask(Place(Deployment(name=name, model="m", replicas=100)), timeout=TIMEOUT)
            places_s.append(time.perf_counter() - start)
            other.ask(Release(name), timeout=TIMEOUT)
            count += 1

    worker = threading.Thread(target=keep_placing, daemon=True)
    worker.start()
    time.sleep(0.5)
    trips = timed(ask, [GetClusterView()] * (PER_ROUND * ROUNDS))
    stop.set()
    worker.join(timeout=TIMEOUT)
    return trips, places_s


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
            other = PlacementClient.connect(name=client.name)
            busy_s, busy_place_s = while_busy(other, ask_remote)
        finally:
            client.stop_service()
    local, trip, remote = (statistics.median(x) * 1e3 for x in (local_s, trip_s, remote_s))
    ratio = remote / (local + trip)
    print(f"python {sys.version.split()[0]}; medians of {ROUNDS} rounds of {PER_ROUND}")
    print(f"local Place reply            {local:8.2f} ms")
    print(f"query round trip to the host {trip:8.2f} ms")
    print(f"remote Place reply           {remote:8.2f} ms")
    print(f"remote / (local + round trip) {ratio:7.2f}x   (bound {BOUND:g}x)")
    busy = statistics.median(busy_s) * 1e3
    busy_p95 = statistics.quantiles(busy_s, n=20)[-1] * 1e3
    in_flight = statistics.median(busy_place_s) * 1e3
    waited = busy / in_flight
    print(f"while another client places 100 replicas at a time ({in_flight:.0f} ms per Place):")
    print(f"  query round trip             {busy:8.2f} ms median, {busy_p95:.2f} ms p95")
    print(f"  query / Place in flight       {waited:7.2f}x   (bound {BUSY_BOUND:g}x: not waiting)")
    return 1 if args.check and (ratio > BOUND or waited > BUSY_BOUND) else 0


if __name__ == "__main__":
    sys.exit(main())
