import pytest

from placement_actors import (
    ApiKey,
    Deployment,
    EgressStrategy,
    InvalidSpecError,
    LabelSelector,
    NodeTopology,
    NoEgressNodesError,
    NoGpuNodesError,
    NotEnoughGpusError,
    PlacementConstraints,
    ProviderKind,
)
from placement_actors.policies import label_index
from placement_actors.policies.egress_ledger import EgressLedger
from placement_actors.policies.gpu_ledger import GpuLedger
from placement_actors.policies.placement_decision import (
    PlacementRules,
    decide_placement,
    egress_key,
)


def ledgers() -> tuple[GpuLedger, EgressLedger]:
    gpus = GpuLedger(NodeTopology(node_id=n, num_gpus=g) for n, g in (("a", 4), ("b", 8)))
    return gpus, EgressLedger(["e1", "e2"])


def local(name: str = "d", *, gpus: int = 1, replicas: int = 1) -> Deployment:
    return Deployment(name=name, model="meta-llama/x", gpus=gpus, replicas=replicas)


def test_one_call_places_every_local_replica_and_reserves_it() -> None:
    gpu_ledger, egress_ledger = ledgers()
    assignments = decide_placement(
        gpu_ledger, egress_ledger, local(gpus=4, replicas=3), PlacementConstraints()
    )
    assert [(a.replica_index, a.node, len(a.gpus)) for a in assignments] == [
        (0, "a", 4),  # best fit: a is left with 0
        (1, "b", 4),
        (2, "b", 4),
    ]
    assert gpu_ledger.total_free() == 0


def test_one_call_places_remote_replicas_on_distinct_egress_nodes() -> None:
    gpu_ledger, egress_ledger = ledgers()
    api = Deployment(name="api", model="gpt-4o", replicas=2, api_key=ApiKey("sk-x"))
    assignments = decide_placement(gpu_ledger, egress_ledger, api, PlacementConstraints())
    assert sorted(a.node for a in assignments) == ["e1", "e2"]
    assert egress_key(api) == (ProviderKind.OPENAI, ApiKey("sk-x"))
    packed = decide_placement(
        gpu_ledger,
        egress_ledger,
        Deployment(name="api2", model="gpt-4o", replicas=2, api_key=ApiKey("sk-y")),
        PlacementConstraints(egress_strategy=EgressStrategy.PACK),
    )
    assert len({a.node for a in packed}) == 1  # a new key: one node, one rate limiter


@pytest.mark.parametrize(
    ("deployment", "constraints", "error", "match"),
    [
        (local(), PlacementConstraints(gpu_nodes=("z",)), InvalidSpecError, "'z'"),
        (local(gpus=16), PlacementConstraints(), NotEnoughGpusError, "not even on an empty"),
        (
            Deployment(name="api", model="gpt-4o", replicas=3),
            PlacementConstraints(),
            InvalidSpecError,
            "limit of 2",
        ),
        (
            Deployment(name="api", model="gpt-4o"),
            PlacementConstraints(egress_nodes=("a",)),
            NoEgressNodesError,
            "no allowed node has egress",
        ),
    ],
    ids=["unknown-node", "never-fits", "remote-over-limit", "no-egress-allowed"],
)
def test_a_refusal_reserves_nothing(
    deployment: Deployment,
    constraints: PlacementConstraints,
    error: type[Exception],
    match: str,
) -> None:
    gpu_ledger, egress_ledger = ledgers()
    with pytest.raises(error, match=match):
        decide_placement(
            gpu_ledger,
            egress_ledger,
            deployment,
            constraints,
            rules=PlacementRules(max_remote_replicas=2),
        )
    assert gpu_ledger.total_free() == 12
    assert [egress_ledger.load(n) for n in egress_ledger.node_ids()] == [0, 0]


def test_lost_replicas_are_placed_again_by_the_same_call() -> None:
    gpu_ledger, egress_ledger = ledgers()
    deployment = local(gpus=4, replicas=2)
    first = decide_placement(gpu_ledger, egress_ledger, deployment, PlacementConstraints())
    lost = first[1]
    gpu_ledger.release(lost.node, lost.gpus, "d")
    again = decide_placement(
        gpu_ledger,
        egress_ledger,
        deployment,
        PlacementConstraints(),
        indexes=[1],
        own=first[:1],
    )
    assert [a.replica_index for a in again] == [1]
    assert gpu_ledger.total_free() == 4


def test_head_nodes_are_kept_off_by_the_rules() -> None:
    gpu_ledger = GpuLedger(
        (NodeTopology(node_id="h", num_gpus=8, is_head=True), NodeTopology(node_id="w", num_gpus=2))
    )
    rules = PlacementRules(avoid=frozenset({"h"}))
    with pytest.raises(NotEnoughGpusError) as caught:
        decide_placement(
            gpu_ledger, EgressLedger([]), local(gpus=4), PlacementConstraints(), rules=rules
        )
    reasons = {r.node_id: r.reason for r in caught.value.rejections}
    assert reasons["h"] == "is a head node (head exclusion is on)"
    assert not caught.value.retryable  # 2 GPUs on the only allowed node, whatever is released


def zoned() -> tuple[GpuLedger, EgressLedger]:
    """Four GPU nodes in two zones, and two egress nodes (one per zone) that have no GPUs."""
    zones = {"a1": "a", "a2": "a", "b1": "b", "b2": "b", "ea": "a", "eb": "b"}
    gpus = GpuLedger(
        NodeTopology(node_id=n, num_gpus=0 if n.startswith("e") else 8, labels={"zone": z})
        for n, z in zones.items()
    )
    return gpus, EgressLedger(["ea", "eb"], {"ea": {"zone": "a"}, "eb": {"zone": "b"}})


def test_a_label_selector_keeps_local_replicas_on_the_nodes_it_picks() -> None:
    gpu_ledger, egress_ledger = zoned()
    where = PlacementConstraints(label_selector={"zone": "b"})
    assignments = decide_placement(gpu_ledger, egress_ledger, local(gpus=8, replicas=2), where)
    assert sorted(a.node for a in assignments) == ["b1", "b2"]
    with pytest.raises(NotEnoughGpusError) as caught:  # zone b is full; zone a is not asked
        decide_placement(gpu_ledger, egress_ledger, local("more", gpus=8), where)
    assert {r.node_id for r in caught.value.rejections} == {"b1", "b2", "eb"}  # eb has no GPUs


def test_a_label_selector_narrows_a_node_list_further() -> None:
    gpu_ledger, egress_ledger = zoned()
    where = PlacementConstraints(gpu_nodes=("a1", "b1"), label_selector={"zone": "!a"})
    assignments = decide_placement(gpu_ledger, egress_ledger, local(gpus=2, replicas=2), where)
    assert {a.node for a in assignments} == {"b1"}


def test_a_label_selector_picks_egress_nodes_for_remote_replicas() -> None:
    gpu_ledger, egress_ledger = zoned()
    api = Deployment(name="api", model="gpt-4o", replicas=3, api_key=ApiKey("sk-x"))
    where = PlacementConstraints(label_selector={"zone": "in(a)"})
    assignments = decide_placement(gpu_ledger, egress_ledger, api, where)
    assert [a.node for a in assignments] == ["ea", "ea", "ea"]


def test_a_selector_that_picks_no_node_is_refused_and_says_so() -> None:
    gpu_ledger, egress_ledger = zoned()
    where = PlacementConstraints(egress_nodes=("eb",), label_selector={"zone": "a"})
    api = Deployment(name="api", model="gpt-4o", api_key=ApiKey("sk-x"))
    with pytest.raises(NoEgressNodesError, match="label_selector") as caught:
        decide_placement(gpu_ledger, egress_ledger, api, where)
    assert [(r.node_id, r.reason) for r in caught.value.rejections] == [
        ("eb", "its labels do not match")
    ]
    with pytest.raises(NoGpuNodesError, match=r"label_selector \{'zone': 'c'\} narrows"):
        decide_placement(
            gpu_ledger, egress_ledger, local(), PlacementConstraints(label_selector={"zone": "c"})
        )
    assert gpu_ledger.total_free() == 32  # nothing was reserved


def test_a_refusal_names_a_huge_selector_by_its_start_and_size() -> None:
    gpu_ledger, egress_ledger = zoned()
    wide = "in(" + ",".join(f"{'v' * 250}{i}" for i in range(100)) + ")"
    huge = PlacementConstraints(label_selector={f"k{i}": wide for i in range(64)})
    with pytest.raises(NoGpuNodesError, match="characters") as caught:
        decide_placement(gpu_ledger, egress_ledger, local(), huge)
    assert len(str(caught.value)) < 500  # not the 1.6 MB of the selector


def test_remembered_selector_answers_are_bounded_in_nodes_and_stay_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(label_index, "MAX_REMEMBERED_NODES", 10)
    index = label_index.LabelIndex((f"n{i}", {"zone": f"z{i % 3}"}) for i in range(9))
    for turn in range(20):  # new selectors, one after another: old answers are forgotten
        picked = index.selected(LabelSelector({"zone": f"!in(z0,x{turn})"}))
        assert picked == {f"n{i}" for i in range(9) if i % 3}
    assert index._remembered <= 10


def held_by_answers(index: label_index.LabelIndex) -> int:
    """Node ids remembered answers hold, keys included, and a unit per 32 selector characters."""
    return sum(
        len(found) + len(within or ()) + len(repr(selector)) // 32
        for (within, selector), found in index._answers.items()
    )


def test_what_remembered_answers_hold_is_bounded_by_their_keys_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(label_index, "MAX_REMEMBERED_NODES", 1_000)
    index = label_index.LabelIndex((f"n{i}", {"zone": f"z{i % 3}"}) for i in range(9))
    within = frozenset({"n1", *(f"gone-{i}" for i in range(600))})  # a long node list
    wide = "in(" + ",".join(f"{'v' * 200}{i}" for i in range(100)) + ")"  # a long selector
    for turn in range(30):  # each new, each picking one node
        assert index.selected(LabelSelector({"zone": f"in(z1,x{turn})"}), within) == {"n1"}
        assert index.selected(LabelSelector({f"k{turn}": wide, "zone": "z1"})) == frozenset()
    assert held_by_answers(index) <= 1_000
