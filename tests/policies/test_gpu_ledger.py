from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement_actors import InvalidSpecError, LabelSelector, NodeTopology
from placement_actors.policies import scopes
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
    assert ledger.holder_names("a") == {"x", "y"}


def test_released_ordinals_are_reused_in_order() -> None:
    ledger = ledger_of(a=4)
    ledger.reserve("a", 2, "x")
    ledger.reserve("a", 2, "y")
    ledger.release("a", (0, 1), "x")
    assert ledger.reserve("a", 1, "z") == (0,)


def test_hold_takes_the_named_ordinals_that_are_free_and_leaves_the_rest() -> None:
    ledger = ledger_of(a=4, b=4)
    ledger.reserve("a", 1, "y")  # ordinal 0
    assert ledger.hold("a", (0, 2, 3, 7), "x") == (2, 3)  # 0 is y's; the node has no 7
    assert ledger.holders("a") == {0: "y", 2: "x", 3: "x"}
    assert ledger.free_ordinals("a") == (1,)
    assert list(ledger.with_free(1)) == ["a"]  # its free count moved in the index
    assert list(ledger.with_free(4)) == ["b"]
    assert ledger.best_fit(2) == "b"
    assert ledger.hold("a", (), "x") == ()


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


NODES = [f"n{i:02d}" for i in range(12)]
list_steps = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.sampled_from(NODES), st.integers(1, 8)),
        st.tuples(st.just("release"), st.sampled_from(NODES), st.integers(1, 8)),
        st.tuples(st.just("join"), st.sampled_from([*NODES, "m1", "m2"]), st.integers(0, 12)),
        st.tuples(st.just("leave"), st.sampled_from([*NODES, "m1", "m2"]), st.just(0)),
        st.tuples(
            st.just("ask"),
            st.frozensets(st.sampled_from([*NODES, "m1", "stranger"]), max_size=10),
            st.integers(1, 10),
        ),
    ),
    max_size=40,
)


@given(list_steps, st.frozensets(st.sampled_from(NODES), max_size=2))
def test_queries_on_node_lists_of_every_size_agree_with_a_plain_scan(
    steps: list[tuple[str, object, int]],
    avoid: frozenset[str],
) -> None:
    """Short lists are walked, long ones get an index of their own, most nodes use the ledger's.

    The threshold is lowered so every kind of list occurs on a dozen nodes; the answers must be
    the same whichever way a list is read, through reservations, nodes joining and leaving, and
    more lists than are kept indexed.
    """
    with pytest.MonkeyPatch.context() as patch:  # lists of 3 or more indexed, 2 kept at once
        patch.setattr(scopes, "SCOPE_INDEX_MIN", 3)
        patch.setattr(scopes, "SCOPE_INDEXES", 2)
        run_against_a_scan(steps, avoid)


def run_against_a_scan(steps: list[tuple[str, object, int]], avoid: frozenset[str]) -> None:
    ledger = GpuLedger(NodeTopology(node_id=n, num_gpus=8) for n in NODES)
    asked: list[tuple[frozenset[str], int]] = []
    for kind, what, number in steps:
        if kind == "reserve" and isinstance(what, str) and what in ledger:
            if ledger.free_count(what) >= number:
                ledger.reserve(what, number, "x")
        elif kind == "release" and isinstance(what, str) and what in ledger:
            mine = [o for o, h in ledger.holders(what).items() if h == "x"][:number]
            ledger.release(what, mine, "x")
        elif kind == "join" and isinstance(what, str) and what not in ledger:
            ledger.add_node(NodeTopology(node_id=what, num_gpus=number))
        elif kind == "leave" and isinstance(what, str) and what in ledger and len(ledger) > 1:
            ledger.remove_node(what)
        elif kind == "ask" and isinstance(what, frozenset):
            asked = [*asked[-2:], (what, number)]
        for allowed, gpus in [(None, 1), *asked]:  # every list asked lately, after each step
            assert_agrees_with_a_scan(ledger, allowed, avoid, gpus)


def assert_agrees_with_a_scan(
    ledger: GpuLedger, allowed: frozenset[str] | None, avoid: frozenset[str], gpus: int
) -> None:
    nodes = [n for n in ledger.node_ids() if (allowed is None or n in allowed) and n not in avoid]
    free = {n: ledger.free_count(n) for n in nodes}
    capacity = {n: ledger.capacity(n) for n in nodes}
    fits = [n for n in nodes if free[n] >= gpus]
    assert ledger.total_free(allowed, avoid) == sum(free.values())
    assert ledger.total_capacity(allowed, avoid) == sum(capacity.values())
    by_free = ledger.free_histogram(allowed, avoid)  # as long as the largest node ever was
    assert by_free == [sum(1 for n in nodes if free[n] == k) for k in range(len(by_free))]
    assert sum(by_free) == len(nodes)
    by_capacity = ledger.capacity_histogram(allowed, avoid)
    assert by_capacity == [
        sum(1 for n in nodes if capacity[n] == k) for k in range(len(by_capacity))
    ]
    assert sum(by_capacity) == len(nodes)
    assert ledger.max_free(allowed, avoid) == max(free.values(), default=0)
    assert ledger.max_capacity(allowed, avoid) == max(capacity.values(), default=0)
    assert list(ledger.candidates(gpus, allowed=allowed, avoid=avoid)) == sorted(
        fits, key=lambda n: (free[n], n)
    )
    assert list(ledger.candidates(gpus, allowed=allowed, avoid=avoid, most_free=True)) == sorted(
        fits, key=lambda n: (-free[n], n)
    )
    assert list(ledger.refusing(gpus, allowed, avoid)) == [n for n in nodes if free[n] < gpus]
    in_list = [n for n in ledger.node_ids() if allowed is None or n in allowed]
    for k in (0, gpus, ledger.max_capacity()):
        assert list(ledger.with_free(k, allowed)) == [
            n for n in in_list if ledger.free_count(n) == k
        ]


def test_a_long_node_list_is_read_from_its_own_index_not_node_by_node() -> None:
    """Half of 1,000 nodes: the list's index answers, and follows every reservation."""
    ledger = GpuLedger(NodeTopology(node_id=f"n{i:04d}", num_gpus=8) for i in range(1_000))
    half = frozenset(f"n{i:04d}" for i in range(0, 1_000, 2))
    assert ledger.best_fit(8, allowed=half) == "n0000"
    ledger.reserve("n0998", 5, "x")
    assert ledger.best_fit(3, allowed=half) == "n0998"
    assert ledger.total_free(half) == 500 * 8 - 5
    assert ledger.free_histogram(half)[3] == 1
    ledger.reserve("n0999", 7, "x")  # not on the list: its index does not move
    assert ledger.best_fit(1, allowed=half) == "n0998"
    assert next(ledger.refusing(4, half)) == "n0998"


selector_forms = st.sampled_from(["a", "!a", "in(a,b)", "!in(a,b)", "c", "in(b,c)"])


@given(
    st.lists(
        st.dictionaries(st.sampled_from(["zone", "tier"]), st.sampled_from("abc"), max_size=2),
        min_size=1,
        max_size=12,
    ),
    st.dictionaries(st.sampled_from(["zone", "tier", "rack"]), selector_forms, max_size=3),
    st.none() | st.frozensets(st.sampled_from([f"n{i}" for i in range(14)]), max_size=8),
)
def test_a_selector_picks_the_same_nodes_as_reading_every_nodes_labels(
    labels: list[dict[str, str]], selector: dict[str, str], within: frozenset[str] | None
) -> None:
    ledger = GpuLedger(
        NodeTopology(node_id=f"n{i}", num_gpus=1, labels=node) for i, node in enumerate(labels)
    )
    chosen = LabelSelector(selector)
    expected = {
        f"n{i}"
        for i, node in enumerate(labels)
        if chosen.picks(node) and (within is None or f"n{i}" in within)
    }
    assert ledger.selected(chosen, within) == expected
    assert ledger.selected(chosen, within) is ledger.selected(chosen, within)  # remembered
    ledger.add_node(NodeTopology(node_id="late", num_gpus=1, labels={"zone": "a", "tier": "b"}))
    late = chosen.picks({"zone": "a", "tier": "b"}) and within is None
    assert ledger.selected(chosen, within) == expected | ({"late"} if late else set())
