import pytest

from placement_actors import ApiKey, InvalidSpecError, ProviderKind
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
