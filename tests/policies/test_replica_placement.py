import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement_actors import CapacityError, NodeAssignment, NodeTopology, NotEnoughGpusError
from placement_actors.domain.limits import MAX_REPLICA_NODES
from placement_actors.policies.gpu_ledger import GpuLedger
from placement_actors.policies.node_choice import even_split_nodes
from placement_actors.policies.replica_placement import (
    LocalRequest,
    fits_on_counts,
    reserve_local_replicas,
)


def ledger_of(*gpus: int) -> GpuLedger:
    return GpuLedger(NodeTopology(node_id=f"n{i}", num_gpus=n) for i, n in enumerate(gpus))


def histogram(*gpus: int) -> list[int]:
    counts = [0] * (max(gpus, default=0) + 1)
    for n in gpus:
        counts[n] += 1
    return counts


@pytest.mark.parametrize(
    ("gpus", "nodes", "expected"),
    [
        (8, (8,), 1),  # one node holds it
        (8, (4, 4), 2),  # 2 x 4
        (8, (4, 2, 2), None),  # 2 x 4 needs two nodes of 4; 4 x 2 four of 2; 8 x 1 eight nodes
        (8, (2, 2, 2, 2), 4),  # 4 x 2
        (6, (4, 4), 2),  # 2 x 3
        (7, (4, 4), None),  # 7 is prime: only 7 x 1, and there are 2 nodes
        (10**18, (8,) * 100, None),  # bounded by the node count, not by the number
        (2 * MAX_REPLICA_NODES + 2, (2,) * 1000, None),  # would need more nodes than allowed
    ],
    ids=[
        "one-node",
        "two-halves",
        "no-even-split",
        "four-quarters",
        "thirds",
        "prime",
        "huge",
        "too-wide",
    ],
)
def test_even_split_nodes_finds_the_fewest_equal_shares(
    gpus: int, nodes: tuple[int, ...], expected: int | None
) -> None:
    assert even_split_nodes(gpus, histogram(*nodes)) == expected


@pytest.mark.parametrize(
    ("gpus", "nodes", "says"),
    [
        (
            16,
            (4, 4, 8),
            (
                "no allowed node has 16 GPUs, the largest has 8; no even split fits either: "
                "2 nodes of 8 GPUs, but only 1 allowed node has 8 or more; "
                "4 nodes of 4, but only 3 nodes have 4 or more; "
                "8 nodes of 2, but only 3 nodes have 2 or more"
            ),
        ),
        (
            7,
            (4, 4),
            (
                "no allowed node has 7 GPUs, the largest has 4; no even split fits either: "
                "7 nodes of 1 GPU, but only 2 allowed nodes have 1 or more"
            ),
        ),
        (
            2 * MAX_REPLICA_NODES + 2,
            (2,) * 3,
            f"the largest has 2; an even split would need more than {MAX_REPLICA_NODES} nodes",
        ),
        (
            10**18,
            (8, 8),
            f"the largest has 8; an even split would need more than {MAX_REPLICA_NODES} nodes",
        ),
    ],
    ids=["no-split-of-three-nodes", "prime", "too-wide", "huge"],
)
def test_a_replica_that_never_fits_says_which_even_splits_fall_short(
    gpus: int, nodes: tuple[int, ...], says: str
) -> None:
    with pytest.raises(NotEnoughGpusError) as caught:
        reserve_local_replicas(
            ledger_of(*nodes), LocalRequest(deployment="d", gpus=gpus, replicas=1)
        )
    assert "(not even on an empty cluster: no allowed node has" in str(caught.value)
    assert says in str(caught.value)
    assert not caught.value.retryable
    assert all("a whole replica needs" in r.reason for r in caught.value.rejections)


def test_a_replica_no_split_of_the_capacity_holds_is_refused_before_any_work() -> None:
    ledger = ledger_of(8, 8)
    with pytest.raises(NotEnoughGpusError, match="not even on an empty cluster") as caught:
        reserve_local_replicas(ledger, LocalRequest(deployment="d", gpus=10**18, replicas=1))
    assert not caught.value.retryable
    assert ledger.total_free() == 16


def test_more_replicas_than_the_capacity_holds_are_refused_before_any_work() -> None:
    ledger = ledger_of(8, 8)
    with pytest.raises(NotEnoughGpusError, match="at most 16 such replicas") as caught:
        reserve_local_replicas(ledger, LocalRequest(deployment="d", gpus=1, replicas=2**63))
    assert not caught.value.retryable


def test_a_refusal_names_the_first_twenty_nodes_and_counts_every_one_by_free_gpus() -> None:
    ledger = ledger_of(*([2] * 500), *([4] * 100))
    ledger.reserve("n0", 1, "other")  # n0 keeps 1 of its 2 GPUs free
    with pytest.raises(NotEnoughGpusError) as caught:
        reserve_local_replicas(ledger, LocalRequest(deployment="d", gpus=3 * 509, replicas=1))
    assert len(caught.value.rejections) == 20
    assert caught.value.rejections_omitted == 580
    # 1 node with 1 free, 499 with 2, 100 with 4: all 600 counted, though 20 are named.
    assert caught.value.refusing_by_free == ((1, 1), (2, 499), (4, 100))


def test_the_deployments_own_holdings_are_not_counted_as_someone_elses() -> None:
    ledger = ledger_of(4, 4)
    mine = ledger.reserve("n0", 4, "d")
    own = (NodeAssignment(replica_index=0, node="n0", gpus=mine),)
    request = LocalRequest(deployment="d", gpus=4, replicas=3, indexes=(1, 2), own=own)
    with pytest.raises(NotEnoughGpusError) as caught:
        reserve_local_replicas(ledger, request)
    assert not caught.value.retryable  # only the deployment itself holds anything


def test_own_gpus_on_a_node_it_may_no_longer_use_do_not_shrink_what_the_others_could_hold() -> None:
    # Replica 1 is placed again away from suspect node n0, where replica 0 still runs; n1 has
    # room for it, but another deployment holds that room: retry once it is released.
    ledger = ledger_of(8, 8)
    own = (
        NodeAssignment(replica_index=0, node="n0", gpus=ledger.reserve("n0", 4, "d")),
        NodeAssignment(replica_index=2, node="n1", gpus=ledger.reserve("n1", 4, "d")),
    )
    ledger.reserve("n1", 4, "other")
    request = LocalRequest(
        deployment="d", gpus=4, replicas=3, indexes=(1,), avoid=frozenset({"n0"}), own=own
    )
    with pytest.raises(NotEnoughGpusError) as caught:
        reserve_local_replicas(ledger, request)
    assert caught.value.retryable  # n1 could hold it: 8 GPUs, 4 of them the deployment's own
    ledger.release("n1", (4, 5, 6, 7), "other")
    (placed,) = reserve_local_replicas(ledger, request)
    assert placed.node == "n1"


@settings(max_examples=300, deadline=None)
@given(
    nodes=st.lists(st.integers(0, 8), min_size=1, max_size=8),
    gpus=st.integers(1, 12),
    replicas=st.integers(1, 6),
)
def test_counting_on_free_gpus_agrees_with_best_fit_on_a_ledger(
    nodes: list[int], gpus: int, replicas: int
) -> None:
    ledger = ledger_of(*nodes)
    try:
        for index in range(replicas):
            reserve_local_replicas(
                ledger, LocalRequest(deployment=f"r{index}", gpus=gpus, replicas=1)
            )
        fitted = True
    except CapacityError:
        fitted = False
    assert fits_on_counts(histogram(*nodes), gpus, replicas) == fitted
