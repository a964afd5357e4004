import heapq

import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement_actors import ApiKey, EgressStrategy, InvalidSpecError, ProviderKind
from placement_actors.policies import scopes
from placement_actors.policies.egress_ledger import EgressLedger

OPENAI_A = (ProviderKind.OPENAI, ApiKey("key-a"))
OPENAI_B = (ProviderKind.OPENAI, ApiKey("key-b"))


def test_choose_prefers_the_least_loaded_node_then_node_id() -> None:
    ledger = EgressLedger(["e2", "e1", "e3"])
    ledger.add("e1", OPENAI_B)
    assert ledger.choose(allowed=ledger.node_ids(), preferred=()) == "e2"


def test_choose_prefers_nodes_already_serving_the_same_key_even_when_busier() -> None:
    ledger = EgressLedger(["e1", "e2"])
    ledger.add("e2", OPENAI_A)
    ledger.add("e2", OPENAI_B)
    assert ledger.choose(allowed=ledger.node_ids(), preferred=ledger.serving(OPENAI_A)) == "e2"


def test_preferred_nodes_outside_the_allowed_set_are_ignored() -> None:
    ledger = EgressLedger(["e1", "e2"])
    assert ledger.choose(allowed=["e1"], preferred={"e2"}) == "e1"


def test_non_egress_nodes_are_never_chosen() -> None:
    ledger = EgressLedger(["e1"])
    assert ledger.choose(allowed=["gpu-a"], preferred=()) is None


def test_remove_undoes_add() -> None:
    ledger = EgressLedger(["e1"])
    ledger.add("e1", OPENAI_A)
    ledger.remove("e1", OPENAI_A)
    assert ledger.load("e1") == 0
    assert ledger.serving(OPENAI_A) == frozenset()


def test_removing_what_is_not_there_raises() -> None:
    ledger = EgressLedger(["e1"])
    with pytest.raises(InvalidSpecError):
        ledger.remove("e1", OPENAI_A)
    with pytest.raises(InvalidSpecError):
        ledger.add("gpu-a", OPENAI_A)


def reference_choose_many(
    ledger: EgressLedger,
    count: int,
    allowed: list[str],
    preferred: frozenset[str],
    strategy: EgressStrategy,
) -> list[str]:
    """The rule stated plainly, on a heap over every allowed node (what the index must equal)."""
    candidates = dict.fromkeys(n for n in allowed if n in ledger)
    spread = strategy is EgressStrategy.SPREAD
    heap = [(0, n not in preferred, ledger.load(n), n) for n in candidates]
    heapq.heapify(heap)
    chosen: list[str] = []
    while heap and len(chosen) < count:
        uses, _, load, node = heap[0]
        chosen.append(node)
        heapq.heapreplace(heap, (uses + 1 if spread else 0, False, load + 1, node))
    return chosen


NODES = [f"e{i}" for i in range(12)]


@given(
    loads=st.lists(st.sampled_from(NODES), max_size=40),
    gone=st.sets(st.sampled_from(NODES), max_size=4),
    allowed=st.none() | st.sets(st.sampled_from([*NODES, "gpu-x"]), max_size=12),
    preferred=st.sets(st.sampled_from([*NODES, "gpu-y"]), max_size=6),
    count=st.integers(min_value=0, max_value=30),
    strategy=st.sampled_from(list(EgressStrategy)),
)
def test_the_load_index_chooses_exactly_what_the_plain_rule_chooses(
    *,
    loads: list[str],
    gone: set[str],
    allowed: set[str] | None,
    preferred: set[str],
    count: int,
    strategy: EgressStrategy,
) -> None:
    ledger = EgressLedger(NODES)
    key = (ProviderKind.OPENAI, ApiKey("key-a"))
    for node in loads:  # some load, some of it released again, some nodes gone
        ledger.add(node, key)
    for node in loads[::3]:
        ledger.remove(node, key)
    for node in gone:
        ledger.remove_node(node)
    ledger.add_node("e99")
    everyone = ledger.node_ids()
    chosen = ledger.choose_many(
        count,
        allowed=None if allowed is None else frozenset(allowed),
        preferred=frozenset(preferred),
        strategy=strategy,
    )
    expected = reference_choose_many(
        ledger,
        count,
        everyone if allowed is None else sorted(allowed),
        frozenset(preferred),
        strategy,
    )
    assert chosen == expected


@given(
    steps=st.lists(
        st.tuples(
            st.sets(st.sampled_from([*NODES, "gpu-x"]), min_size=3, max_size=6),
            st.integers(min_value=0, max_value=8),
            st.booleans(),
        ),
        max_size=12,
    ),
    strategy=st.sampled_from(list(EgressStrategy)),
)
def test_node_lists_with_indexes_of_their_own_choose_what_the_plain_rule_chooses(
    steps: list[tuple[set[str], int, bool]], strategy: EgressStrategy
) -> None:
    """Lists of 3 or more get their own load index here (2 kept at once); it follows each change.

    Each step chooses on a list, records the choice (or, every other time, gives one replica
    back), and now and then a node leaves or joins, as a service's ledger sees it.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scopes, "SCOPE_INDEX_MIN", 3)
        patch.setattr(scopes, "SCOPE_INDEXES", 2)
        ledger = EgressLedger(NODES)
        placed: list[str] = []
        for number, (allowed, count, churn) in enumerate(steps):
            chosen = ledger.choose_many(count, allowed=frozenset(allowed), strategy=strategy)
            assert chosen == reference_choose_many(
                ledger, count, sorted(allowed), frozenset(), strategy
            )
            ledger.add_many(chosen, OPENAI_A)
            placed.extend(chosen)
            if churn and placed:
                node = placed.pop(0)
                if node in ledger:
                    ledger.remove(node, OPENAI_A)
            if number % 4 == 3:  # a node comes and goes now and then
                ledger.remove_node(NODES[number % len(NODES)])
                placed = [n for n in placed if n in ledger]
                ledger.add_node(f"new-{number}")
