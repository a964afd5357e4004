from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement_actors import InvalidSpecError, NodeTopology
from placement_actors.policies.gpu_ledger import GpuLedger


def ledger_of(**gpus: int) -> GpuLedger:
    return GpuLedger(NodeTopology(node_id=name, num_gpus=n) for name, n in gpus.items())


def test_a_new_ledger_has_every_gpu_free() -> None:
    ledger = ledger_of(a=4, b=8)
    assert ledger.free_ordinals("a") == (0, 1, 2, 3)
    assert ledger.free_count("b") == 8
    assert ledger.holders("a") == {}


def test_reserve_hands_out_the_lowest_free_ordinals() -> None:
    ledger = ledger_of(a=4)
    assert ledger.reserve("a", 2, "x") == (0, 1)
    assert ledger.reserve("a", 1, "y") == (2,)
    assert ledger.holders("a") == {0: "x", 1: "x", 2: "y"}
    assert ledger.free_ordinals("a") == (3,)


def test_released_ordinals_are_reused_in_order() -> None:
    ledger = ledger_of(a=4)
    ledger.reserve("a", 2, "x")
    ledger.reserve("a", 2, "y")
    ledger.release("a", (0, 1), "x")
    assert ledger.reserve("a", 1, "z") == (0,)


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (1, "c"),  # c has 2 free: fewest left after taking 1 (1 left)
        (2, "c"),  # c: 0 left
        (3, "a"),  # a and b have 4 free; ties by node id
        (4, "a"),
        (5, "d"),  # only d (8 free) fits
        (9, None),
    ],
    ids=str,
)
def test_best_fit_picks_the_node_left_with_fewest_free_gpus(
    gpus: int, expected: str | None
) -> None:
    ledger = ledger_of(a=4, b=4, c=2, d=8)
    assert ledger.best_fit(gpus) == expected


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (1, "d"),  # d has the most free GPUs
        (8, "d"),
        (9, None),
    ],
    ids=str,
)
def test_least_loaded_picks_the_node_with_most_free_gpus(gpus: int, expected: str | None) -> None:
    ledger = ledger_of(a=4, b=4, c=2, d=8)
    assert ledger.least_loaded(gpus) == expected


def test_queries_honour_allowed_and_avoided_nodes() -> None:
    ledger = ledger_of(a=4, b=4, c=2, d=8)
    assert ledger.best_fit(1, allowed=frozenset({"a", "d"})) == "a"
    assert ledger.best_fit(1, avoid=frozenset({"c"})) == "a"
    assert ledger.least_loaded(1, avoid=frozenset({"d"})) == "a"
    assert ledger.least_loaded(1, allowed=frozenset({"a", "b"}), avoid=frozenset({"a"})) == "b"
    assert ledger.best_fit(1, allowed=frozenset()) is None


def test_index_follows_reservations() -> None:
    ledger = ledger_of(a=4, b=8)
    ledger.reserve("b", 7, "x")  # b now has 1 free, a has 4
    assert ledger.best_fit(1) == "b"
    assert ledger.least_loaded(1) == "a"
    assert ledger.max_free() == 4
    ledger.release("b", range(7), "x")
    assert ledger.max_free() == 8


@pytest.mark.parametrize(
    ("node", "gpus"),
    [("a", 5), ("a", 0), ("zz", 1)],
    ids=["more-than-free", "zero", "unknown-node"],
)
def test_impossible_reservation_raises_and_changes_nothing(node: str, gpus: int) -> None:
    ledger = ledger_of(a=4)
    with pytest.raises(InvalidSpecError):
        ledger.reserve(node, gpus, "x")
    assert ledger.free_count("a") == 4


def test_releasing_someone_elses_gpus_raises_and_changes_nothing() -> None:
    ledger = ledger_of(a=4)
    ledger.reserve("a", 2, "x")
    with pytest.raises(InvalidSpecError, match="does not hold"):
        ledger.release("a", (0, 2), "y")
    assert ledger.holders("a") == {0: "x", 1: "x"}


def test_duplicate_node_ids_are_rejected() -> None:
    with pytest.raises(InvalidSpecError, match="twice"):
        GpuLedger([NodeTopology(node_id="a", num_gpus=1), NodeTopology(node_id="a", num_gpus=2)])


operations = st.lists(
    st.tuples(st.booleans(), st.sampled_from("abcd"), st.integers(1, 8), st.sampled_from("xyz")),
    max_size=60,
)


@given(operations)
def test_free_and_held_always_partition_capacity(ops: list[tuple[bool, str, int, str]]) -> None:
    ledger = ledger_of(a=2, b=4, c=8, d=1)
    for is_reserve, node, gpus, holder in ops:
        if is_reserve:
            if ledger.free_count(node) >= gpus:
                ledger.reserve(node, gpus, holder)
        else:
            mine = [o for o, h in ledger.holders(node).items() if h == holder][:gpus]
            ledger.release(node, mine, holder)
        for name in ledger.node_ids():
            free, held = ledger.free_ordinals(name), ledger.holders(name)
            assert sorted((*free, *held)) == list(range(ledger.capacity(name)))
            assert not set(free) & set(held)
        # the index agrees with a full scan
        scan = min(
            (n for n in ledger.node_ids() if ledger.free_count(n) >= 1),
            key=lambda n: (ledger.free_count(n), n),
            default=None,
        )
        assert ledger.best_fit(1) == scan
        assert ledger.max_free() == max(ledger.free_count(n) for n in ledger.node_ids())
    assert sum(Counter(ledger.holders(n).values()).total() for n in ledger.node_ids()) == sum(
        ledger.capacity(n) - ledger.free_count(n) for n in ledger.node_ids()
    )


def test_renumbering_takes_free_ordinals_and_swaps_held_ones() -> None:
    ledger = GpuLedger([NodeTopology(node_id="n", num_gpus=4)])
    assert ledger.reserve("n", 1, "x") == (0,)
    assert ledger.reserve("n", 2, "y") == (1, 2)
    # the cluster says y really has devices 0 and 3: 3 was free, 0 was x's
    moves = ledger.renumber("n", "y", (1, 2), (0, 3))
    assert moves == {"x": {0: 1}}
    assert ledger.holders("n") == {0: "y", 1: "x", 3: "y"}
    assert ledger.free_ordinals("n") == (2,)
    assert ledger.total_free() == 1


@pytest.mark.parametrize(
    ("old", "new"),
    [((0,), (0, 1)), ((1,), (0,)), ((0,), (4,)), ((0, 0), (1, 2))],
    ids=["more-than-held", "not-the-holders", "beyond-the-node", "ordinal-twice"],
)
def test_renumbering_refuses_what_the_holder_does_not_hold(
    old: tuple[int, ...], new: tuple[int, ...]
) -> None:
    ledger = GpuLedger([NodeTopology(node_id="n", num_gpus=4)])
    ledger.reserve("n", 1, "x")
    with pytest.raises(InvalidSpecError):
        ledger.renumber("n", "x", old, new)
    assert ledger.holders("n") == {0: "x"}


def test_nodes_join_and_leave_the_ledger_with_their_indexes() -> None:
    ledger = GpuLedger([NodeTopology(node_id="a", num_gpus=2)])
    ledger.add_node(NodeTopology(node_id="b", num_gpus=8))
    assert ledger.best_fit(8) == "b"
    assert ledger.total_capacity() == 10
    ledger.reserve("b", 3, "x")
    assert ledger.remove_node("b") == {0: "x", 1: "x", 2: "x"}
    assert ledger.best_fit(1) == "a"
    assert (ledger.total_capacity(), ledger.total_free()) == (2, 2)
    assert "b" not in ledger
    with pytest.raises(InvalidSpecError):
        ledger.add_node(NodeTopology(node_id="a", num_gpus=1))
