import pytest

from placement_actors import GpuStrategy, NodeTopology, Rejection
from placement_actors.policies.gpu_ledger import GpuLedger
from placement_actors.policies.node_choice import choose_gpu_node, gpu_fit, gpu_rejections


def ledger_of(**gpus: int) -> GpuLedger:
    return GpuLedger(NodeTopology(node_id=name, num_gpus=n) for name, n in gpus.items())


@pytest.mark.parametrize(
    ("capacity", "free", "gpus", "reason"),
    [
        (0, 0, 1, "has no GPUs"),
        (4, 4, 8, "has 4 GPUs in all; a whole replica needs 8"),
        (8, 2, 4, "2 of 8 GPUs free, 4 needed"),
        (8, 4, 4, None),  # exactly enough
    ],
    ids=["no-gpus", "too-small", "too-busy", "fits"],
)
def test_gpu_fit_gives_each_reason(capacity: int, free: int, gpus: int, reason: str | None) -> None:
    rejection = gpu_fit("n", capacity=capacity, free=free, gpus=gpus)
    if reason is None:
        assert rejection is None
    else:
        assert rejection == Rejection(node_id="n", reason=reason, requested=gpus, available=free)


def test_rejections_list_only_nodes_that_cannot_take_the_replica() -> None:
    ledger = ledger_of(a=4, b=8, c=2)
    reasons = gpu_rejections(ledger, 4, ["c", "b", "a"])
    assert [r.node_id for r in reasons] == ["c"]


@pytest.mark.parametrize(
    ("strategy", "used", "expected"),
    [
        (GpuStrategy.PACK, frozenset(), "c"),  # c (2 free) is the tightest fit
        (GpuStrategy.PACK, frozenset({"c"}), "c"),  # pack ignores what the deployment uses
        (GpuStrategy.SPREAD, frozenset(), "d"),  # d (8 free) is least loaded
        (GpuStrategy.SPREAD, frozenset({"d"}), "a"),  # a and b tie at 4 free: node id
        (GpuStrategy.SPREAD, frozenset({"a", "b", "c", "d"}), "d"),  # all used: share the emptiest
    ],
    ids=["pack", "pack-ignores-used", "spread", "spread-skips-used", "spread-falls-back"],
)
def test_strategy_decides_the_node(
    strategy: GpuStrategy, used: frozenset[str], expected: str
) -> None:
    ledger = ledger_of(a=4, b=4, c=2, d=8)
    assert choose_gpu_node(ledger, 1, strategy=strategy, used=used) == expected


def test_no_node_is_chosen_when_none_fits() -> None:
    ledger = ledger_of(a=4)
    assert choose_gpu_node(ledger, 5) is None
    assert choose_gpu_node(ledger, 1, strategy=GpuStrategy.SPREAD, allowed=frozenset()) is None
