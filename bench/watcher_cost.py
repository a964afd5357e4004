"""What following the cluster costs a long-running service: the watcher's rounds, many groups on.

Ray keeps every placement group it has made in its group table, removed ones too, so the table
grows with the service's age. Starts a local Ray cluster (head + 2 raylets of 8 logical GPUs),
makes and removes ``--groups`` groups named as the service names its own (2,000 by default),
then times, in one run:

1. a quiet round of the cluster watcher (nothing moved: Ray's node table and free resources
   are read, its group table is not);
2. one read of Ray's group table;
3. a round just after a group was placed (the table is read again, and gone through): what
   every round cost before the watcher kept the table between rounds.

Prints the medians and the share of one core the watcher takes at its default four rounds a
second: quiet rounds, against rounds that all read the table.

    .venv/bin/python bench/watcher_cost.py [--groups N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

ROUNDS = 40
ROUNDS_PER_S = 4
MAX_GROUPS = 100_000


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=2_000, help="groups made and removed first")
    args = parser.parse_args()
    if not 0 <= args.groups <= MAX_GROUPS:
        parser.error(f"--groups must be between 0 and {MAX_GROUPS:,}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray loads here
    from placement_actors.domain.deployments import group_name  # noqa: PLC0415

    with on_ray.LocalCluster(head_gpus=0, worker_gpus=(8, 8), cpus_per_node=4):
        made = time.perf_counter()
        for start in range(0, args.groups, 500):
            groups = [
                on_ray.create_group([{"GPU": 1}], "PACK", name=group_name(f"churn-{i}", 0))
                for i in range(start, min(start + 500, args.groups))
            ]
            for group in groups:
                on_ray.remove_group(group)
        made = time.perf_counter() - made
        watcher = on_ray.ClusterWatcher(
            known=list(on_ray.alive_nodes()),
            on_joined=lambda *_: None,
            on_lost=lambda _: None,
            on_rescheduling=lambda *_: None,
            on_gpu_use=lambda *_: None,
        )
        time.sleep(1.0)  # Ray gives the removed groups' GPUs back
        for _ in range(4):
            watcher.poll()
        quiet = [timed(watcher.poll) for _ in range(ROUNDS)]
        table = [timed(on_ray.group_table) for _ in range(ROUNDS // 4)]
        moved = []
        for i in range(ROUNDS // 8):
            group = on_ray.build_pg([{"GPU": 1}], "PACK", name=f"bench-moved-{i}")
            moved.append(timed(watcher.poll))
            on_ray.remove_group(group)
            time.sleep(0.3)
            watcher.poll()
        rows = len(on_ray.group_table())
    q, t, m = (statistics.median(v) * 1000 for v in (quiet, table, moved))
    print(f"python {sys.version.split()[0]}; local Ray cluster, {rows:,} groups in Ray's table")
    print(f"(made and removed {args.groups:,} in {made:.1f} s); medians")
    print(f"{'a quiet round of the watcher':<44}{q:>9.2f} ms")
    print(f"{'one read of the group table':<44}{t:>9.2f} ms")
    print(f"{'a round just after a group was placed':<44}{m:>9.2f} ms")
    print(
        f"share of a core at {ROUNDS_PER_S} rounds/s: quiet rounds {q * ROUNDS_PER_S / 10:.1f}%,"
        f" rounds that all read the table {m * ROUNDS_PER_S / 10:.1f}% ({m / q:.0f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
