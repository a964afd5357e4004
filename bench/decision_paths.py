"""P1: every decision path through the actor, on 100 to 10,000 nodes, against the actor floor.

Each round sends a `Place` and its `Release` to a DeploymentPlacementActor (no Ray: the ledger
decision and the actor hop are what is measured) on nodes of 8 GPUs, every other one half used,
labelled by zone (four zones, in turn).
The floor is the same number of asks to a stock pykka actor (a plain `pykka.ThreadingActor`,
with pykka's own inbox and futures) that answers at once, measured in turns
with each path (floor, path, floor, path, ...): absolute times on a shared machine move by 3x
between runs and drift within one, ratios taken side by side do not.

    .venv/bin/python bench/decision_paths.py            # the table
    .venv/bin/python bench/decision_paths.py --check    # exit 1 if a path misses its bound
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from placement_actors import (
    ApiKey,
    Deployment,
    DeploymentPlacementActor,
    GpuStrategy,
    NodeTopology,
    NotEnoughGpusError,
    Place,
    PlaceMany,
    PlacementConstraints,
    Release,
)
from placement_actors.actors.mailbox import KeepServingActor

SIZES = (100, 1_000, 10_000)
ROUNDS = 500
REPEATS = 5
BATCH = 100
"""`Place` messages in the `PlaceMany` row."""
BOUND = 2.0
"""Each path at 10,000 nodes: at most this many times its cost at 100 nodes, and the floor's."""


class Floor(pykka.ThreadingActor):
    """Answers every message at once: what an ask costs with no work behind it."""

    def on_receive(self, message: Any) -> Any:  # noqa: ANN401 - echoes anything
        return message


class ServingFloor(KeepServingActor):
    """The same, with the placement actors' mailbox and reply futures (`KeepServingActor`)."""

    def __init__(self) -> None:
        super().__init__()
        self._handlers = {int: lambda message: message}


def node_id(i: int) -> str:
    return f"node-{i:05d}"


def service(nodes: int, *, ignore_head_node: bool = False) -> pykka.ActorRef[Any]:
    topology = [
        NodeTopology(node_id=node_id(i), num_gpus=8, is_head=i == 0, labels={"zone": f"z{i % 4}"})
        for i in range(nodes)
    ]
    ref = DeploymentPlacementActor.start(
        topology=topology,
        egress_nodes=[node_id(i) for i in range(nodes)],
        ignore_head_node=ignore_head_node,
    )
    for i in range(1, nodes, 2):  # every other node half used (never the head, node 0)
        ref.ask(
            Place(
                Deployment(name=f"bg-{i}", model="m", gpus=4),
                PlacementConstraints(gpu_nodes=(node_id(i),)),
            )
        )
    return ref


@dataclass(frozen=True, slots=True)
class Path:
    """One decision path: the `Place` it sends (and whether it is refused)."""

    name: str
    place: Callable[[int], Place]
    refused: bool = False
    ignore_head_node: bool = False


def local(**kwargs: Any) -> Deployment:  # noqa: ANN401 - Deployment fields
    return Deployment(**{"name": "probe", "model": "m", "gpus": 1, **kwargs})


PATHS = (
    Path("no constraints", lambda _: Place(local())),
    Path("head exclusion", lambda _: Place(local()), ignore_head_node=True),
    Path(
        "gpu_nodes: 10 nodes",
        lambda _: Place(
            local(), PlacementConstraints(gpu_nodes=tuple(node_id(i) for i in range(2, 22, 2)))
        ),
    ),
    Path(
        "gpu_nodes: every node",
        lambda n: Place(
            local(), PlacementConstraints(gpu_nodes=tuple(node_id(i) for i in range(n)))
        ),
    ),
    Path(
        "gpu_nodes: half the nodes",
        lambda n: Place(
            local(), PlacementConstraints(gpu_nodes=tuple(node_id(i) for i in range(0, n, 2)))
        ),
    ),
    Path(
        "label_selector: a quarter of the nodes",
        lambda _: Place(local(), PlacementConstraints(label_selector={"zone": "z2"})),
    ),
    Path(
        "label_selector: all but a quarter",
        lambda _: Place(local(), PlacementConstraints(label_selector={"zone": "!z3"})),
    ),
    Path("spread", lambda _: Place(local(), PlacementConstraints(strategy=GpuStrategy.SPREAD))),
    Path("split over 2 nodes", lambda _: Place(local(gpus=16))),
    Path(
        "remote: egress_nodes every node",
        lambda n: Place(
            Deployment(name="probe", model="gpt-4o", api_key=ApiKey("sk-bench")),
            PlacementConstraints(egress_nodes=tuple(node_id(i) for i in range(n))),
        ),
    ),
    Path(
        "remote: egress_nodes half the nodes",
        lambda n: Place(
            Deployment(name="probe", model="gpt-4o", api_key=ApiKey("sk-bench")),
            PlacementConstraints(egress_nodes=tuple(node_id(i) for i in range(0, n, 2))),
        ),
    ),
    Path(
        "refusal with reasons",
        lambda n: Place(local(gpus=8, replicas=n)),  # more than the free GPUs: refused at once
        refused=True,
    ),
    Path(
        # GPUs enough are free, but 4 on each node of zone z1 (the half-used nodes): the refusal
        # also searches for a move set (the replicas there are pinned: none is found).
        "refusal, free GPUs scattered",
        lambda _: Place(
            local(gpus=8),
            PlacementConstraints(label_selector={"zone": "z1"}, keep_whole=True),
        ),
        refused=True,
    ),
)


def per_round_us(ask: Callable[[Any], Any], messages: tuple[Any, ...], *, refused: bool) -> float:
    start = time.perf_counter()
    for _ in range(ROUNDS):
        for message in messages:
            try:
                ask(message)
            except NotEnoughGpusError:
                if not refused:
                    raise
    return (time.perf_counter() - start) / ROUNDS * 1e6


def measure(path: Path, nodes: int) -> tuple[float, float]:
    """The path's cost per round and the floor's, measured in turns (the machine's load moves)."""
    ref, floor = service(nodes, ignore_head_node=path.ignore_head_node), Floor.start()
    try:
        place = path.place(nodes)
        costs, floors = [], []
        for _ in range(REPEATS):
            floors.append(per_round_us(floor.ask, (1, 2), refused=False))
            costs.append(per_round_us(ref.ask, (place, Release("probe")), refused=path.refused))
        return statistics.median(costs), statistics.median(floors)
    finally:
        ref.stop()
        floor.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a path misses its bound")
    parser.add_argument("--only", default="", help="measure only paths whose name has this text")
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}; Place + Release through the actor, median of "
        f"{REPEATS} runs of {ROUNDS}; floor: two asks to an actor that answers at once, "
        "measured in turns with each path"
    )
    mailbox, floor = mailbox_cost()
    print(
        f"the placement actors' mailbox, answering at once: {mailbox:.0f} us per round, "
        f"{mailbox / floor:.2f}x the floor ({floor:.0f} us)\n"
    )
    head = f"{'path':<40}" + "".join(f"{n:>10,}" for n in SIZES)
    print(f"{head}{'10k/100':>9}{'floor@10k':>11}{'10k/floor':>11}")
    misses = []
    for path in (p for p in PATHS if args.only in p.name):
        measured = {n: measure(path, n) for n in SIZES}
        cost = {n: measured[n][0] for n in SIZES}
        floor = measured[SIZES[-1]][1]
        growth, over_floor = cost[SIZES[-1]] / cost[SIZES[0]], cost[SIZES[-1]] / floor
        cells = "".join(f"{cost[n]:>8.0f}us" for n in SIZES)
        print(f"{path.name:<40}{cells}{growth:>8.2f}x{floor:>9.0f}us{over_floor:>10.2f}x")
        if growth > BOUND or over_floor > BOUND:
            misses.append(path.name)
    if not args.only:
        per_place, floor = batched(SIZES[-1])
        print(
            f"\nPlaceMany of {BATCH} one-GPU Places at {SIZES[-1]:,} nodes: {per_place:.0f} us per "
            f"Place, {per_place / (floor / 2):.2f}x one ask to the floor ({floor / 2:.0f} us)"
        )
    if misses:
        print(f"over {BOUND:g}x: {', '.join(misses)}")
    return 1 if args.check and misses else 0


def mailbox_cost() -> tuple[float, float]:
    """Two asks to a `KeepServingActor` that answers at once, and to the floor, in turns."""
    serving, floor = ServingFloor.start(), Floor.start()
    try:
        costs, floors = [], []
        for _ in range(REPEATS * 2):
            floors.append(per_round_us(floor.ask, (1, 2), refused=False))
            costs.append(per_round_us(serving.ask, (1, 2), refused=False))
        return statistics.median(costs), statistics.median(floors)
    finally:
        serving.stop()
        floor.stop()


def batched(nodes: int) -> tuple[float, float]:
    """Per `Place` in one `PlaceMany` of `BATCH`, and the floor per round, measured in turns."""
    ref, floor = service(nodes), Floor.start()
    batch = PlaceMany(tuple(Place(local(name=f"batch-{i}")) for i in range(BATCH)))
    costs, floors = [], []
    try:
        for _ in range(REPEATS):
            floors.append(per_round_us(floor.ask, (1, 2), refused=False))
            start = time.perf_counter()
            ref.ask(batch)
            costs.append((time.perf_counter() - start) / BATCH * 1e6)
            for i in range(BATCH):
                ref.ask(Release(f"batch-{i}"))
        return statistics.median(costs), statistics.median(floors)
    finally:
        ref.stop()
        floor.stop()


if __name__ == "__main__":
    sys.exit(main())
