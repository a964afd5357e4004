"""Cost of one placement decision on ledgers of 100 to 10,000 nodes (no Ray).

Each round places a 1-GPU deployment through a DeploymentPlacementActor's policies and ledger
directly (no actor hop, so the figure is the decision itself) and releases it again, on a ledger
whose nodes are half full, so best fit has to look past full and partly used nodes.
"""

from __future__ import annotations

import statistics
import sys
import time

from placement_actors import GpuStrategy, NodeTopology
from placement_actors.policies.gpu_ledger import GpuLedger
from placement_actors.policies.node_choice import choose_replica_nodes

ROUNDS = 2000


def ledger_of(nodes: int) -> GpuLedger:
    ledger = GpuLedger(NodeTopology(node_id=f"node-{i:05d}", num_gpus=8) for i in range(nodes))
    for i in range(0, nodes, 2):  # every other node half used
        ledger.reserve(f"node-{i:05d}", 4, "background")
    return ledger


def per_decision_us(nodes: int, gpus: int, strategy: GpuStrategy) -> float:
    ledger = ledger_of(nodes)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(ROUNDS):
            chosen = choose_replica_nodes(ledger, gpus, strategy=strategy)
            assert chosen is not None
            taken = [(node, ledger.reserve(node, share, "bench")) for node, share in chosen]
            for node, ordinals in taken:
                ledger.release(node, ordinals, "bench")
        samples.append((time.perf_counter() - start) / ROUNDS * 1e6)
    return statistics.median(samples)


def main() -> None:
    print(f"python {sys.version.split()[0]}; median of 5 runs of {ROUNDS} decide+reserve+release")
    print(f"{'nodes':>7} {'pack 1 GPU':>12} {'spread 1 GPU':>13} {'pack 8 GPUs':>12}")
    for nodes in (100, 1_000, 10_000):
        pack = per_decision_us(nodes, 1, GpuStrategy.PACK)
        spread = per_decision_us(nodes, 1, GpuStrategy.SPREAD)
        whole = per_decision_us(nodes, 8, GpuStrategy.PACK)
        print(f"{nodes:>7} {pack:>10.1f}us {spread:>11.1f}us {whole:>10.1f}us")


if __name__ == "__main__":
    main()
