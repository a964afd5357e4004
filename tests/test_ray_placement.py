"""The NeMo Curator-compatible functions: a Curator-style script runs unchanged on our package."""

import _thread
import inspect
import numbers
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import ray

from placement_actors import (
    BackendError,
    BundleStrategy,
    InvalidSpecError,
    NodeTopology,
    NoGpuNodesError,
    NotEnoughGpusError,
    PlacementGroupTimeoutError,
)
from placement_actors import ray_placement as rp
from placement_actors.backends import ray as on_ray
from placement_actors.backends.ray import groups
from placement_actors.domain.errors import CapacityError
from placement_actors.domain.group_status import GroupStatus
from placement_actors.policies.bundle_shapes import NODE_ID_LABEL
from placement_actors.ray_placement import (
    ReplicaBundleSpec,
    build_pg,
    build_replica_pg,
    get_bundle_node_ip,
    get_free_port_in_bundle,
    plan_replica_bundle_shape,
    remove_named_pgs_with_prefix,
)
from placement_actors.settings import IGNORE_HEAD_NODE_ENV

CURATOR_NAMES = {
    "PLACEMENT_GROUP_READY_TIMEOUT_S",
    "ReplicaBundleSpec",
    "_get_gpu_topology",
    "build_pg",
    "build_replica_pg",
    "get_bundle_node_ip",
    "get_free_port_in_bundle",
    "plan_replica_bundle_shape",
    "remove_named_pgs_with_prefix",
}
"""The names code imports from ``nemo_curator.core.serve.placement`` (Curator's own Dynamo
backend imports ``_get_gpu_topology`` too)."""


@pytest.fixture(autouse=True)
def _no_head_exclusion_from_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with neither head-exclusion variable set, whatever the shell had."""
    monkeypatch.delenv(IGNORE_HEAD_NODE_ENV, raising=False)
    monkeypatch.delenv(rp.CURATOR_IGNORE_HEAD_NODE_ENV, raising=False)


def alive_records() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]


def landed_on(name: str) -> dict[int, str]:
    return on_ray.bundle_nodes(name)[name]


def curator_topology(*gpus: int, head: int | None = None) -> list[dict[str, Any]]:
    """Curator-style topology entries ``n0, n1, ...`` with ``gpus`` GPUs each."""
    return [{"node_id": f"n{i}", "num_gpus": g, "is_head": i == head} for i, g in enumerate(gpus)]


# --- the public face -----------------------------------------------------------------------------


def test_every_curator_name_is_exported() -> None:
    assert set(rp.__all__) >= CURATOR_NAMES
    assert all(hasattr(rp, name) for name in rp.__all__)


@pytest.mark.parametrize(
    "name",
    [
        "build_pg",
        "build_replica_pg",
        "get_bundle_node_ip",
        "get_free_port_in_bundle",
        "remove_named_pgs_with_prefix",
    ],
)
def test_each_ray_function_is_the_backends_own_implementation_not_a_copy(name: str) -> None:
    assert getattr(rp, name) is getattr(on_ray, name)


def test_the_spec_is_ours_re_exported() -> None:
    assert rp.ReplicaBundleSpec is ReplicaBundleSpec
    assert ReplicaBundleSpec.__module__ == "placement_actors.domain.results"


def test_build_functions_wait_as_long_as_curators_by_default_and_select_no_labels() -> None:
    build = inspect.signature(build_pg).parameters
    assert build["ready_timeout_s"].default == 180.0  # Curator's PLACEMENT_GROUP_READY_TIMEOUT_S
    assert rp.PLACEMENT_GROUP_READY_TIMEOUT_S == 180.0
    assert build["bundle_label_selector"].default is None
    assert inspect.signature(build_replica_pg).parameters["ready_timeout_s"].default == 180.0


def test_start_port_is_optional_and_get_next_free_port_stays_positional() -> None:
    params = list(inspect.signature(get_free_port_in_bundle).parameters.values())
    assert [p.name for p in params[:4]] == [
        "pg",
        "bundle_index",
        "start_port",
        "get_next_free_port",
    ]
    assert params[2].default is None
    assert params[3].default is True
    assert params[3].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


# --- the spec reads like Curator's --------------------------------------------------------------


def test_a_split_spec_reads_like_curators_list_and_compares_equal_to_strings() -> None:
    spec = plan_replica_bundle_shape(8, _topology=curator_topology(4, 4))
    assert spec.strategy == "STRICT_SPREAD"
    assert spec.strategy is BundleStrategy.STRICT_SPREAD
    assert f"{spec.strategy}" == str(spec.strategy) == "STRICT_SPREAD"
    assert spec.strategy in {"STRICT_PACK", "STRICT_SPREAD"}
    assert len(spec.bundles) == 2
    assert spec.bundles[0]["GPU"] == 4
    assert [dict(b) for b in spec.bundles] == [{"CPU": 1, "GPU": 4}, {"CPU": 1, "GPU": 4}]
    assert list(spec.bundles) == [{"CPU": 1, "GPU": 4}] * 2
    assert (spec.nnodes, spec.per_node_gpus, spec.total_gpus) == (2, 4, 8)
    assert spec.is_multi_node
    assert spec.bundle_label_selector is None


def test_the_spec_is_immutable_and_its_bundles_a_tuple() -> None:
    spec = plan_replica_bundle_shape(2, _topology=curator_topology(4))
    assert isinstance(spec.bundles, tuple)
    bundles: object = spec.bundles
    assert bundles != [{"CPU": 1, "GPU": 2}]  # a tuple never equals a list
    with pytest.raises(TypeError):
        spec.bundles[0]["GPU"] = 1  # type: ignore[index]


# --- planning from Curator-style input, no Ray -------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "gpus", "strategy", "nnodes", "per_node"),
    [
        (2, (4, 4), "STRICT_PACK", 1, 2),  # one node holds 2
        (8, (8, 4), "STRICT_PACK", 1, 8),
        (16, (8, 8), "STRICT_SPREAD", 2, 8),  # 16 = 2 x 8
        (16, (4, 4, 4, 4), "STRICT_SPREAD", 4, 4),  # 2 x 8 needs two 8s; 16 = 4 x 4
        (8, (4.0, 4.0), "STRICT_SPREAD", 2, 4),  # Ray's float GPU counts
    ],
    ids=["tp2-pack", "tp8-pack", "tp16-two-nodes", "tp16-four-nodes", "float-gpus"],
)
def test_curator_topology_dicts_plan_the_smallest_layout(
    tp: int, gpus: tuple[int, ...], strategy: str, nnodes: int, per_node: int
) -> None:
    spec = plan_replica_bundle_shape(tp, _topology=curator_topology(*gpus))
    assert (spec.strategy, spec.nnodes, spec.per_node_gpus) == (strategy, nnodes, per_node)


def test_tp_size_zero_is_a_value_error_raised_before_the_cluster_is_read() -> None:
    def never_read() -> Iterator[Mapping[str, Any]]:
        pytest.fail("the topology was read")
        yield {}  # pragma: no cover

    with pytest.raises(ValueError, match="tp_size") as caught:
        plan_replica_bundle_shape(0, _topology=never_read())
    assert isinstance(caught.value, InvalidSpecError)


@pytest.mark.parametrize(
    "topology",
    [[], curator_topology(0, 0), curator_topology(0, head=0)],
    ids=["empty", "cpu-only", "cpu-only-head"],
)
def test_no_gpu_node_is_a_runtime_error(topology: list[dict[str, Any]]) -> None:
    with pytest.raises(RuntimeError) as caught:
        plan_replica_bundle_shape(1, _topology=topology)
    assert isinstance(caught.value, NoGpuNodesError)


def test_an_unsplittable_tp_size_is_a_runtime_error_carrying_what_was_asked() -> None:
    with pytest.raises(RuntimeError) as caught:  # Curator's `except RuntimeError` catches it
        plan_replica_bundle_shape(16, _topology=curator_topology(4, 4, 8))  # 2x8, 4x4 miss
    assert isinstance(caught.value, NotEnoughGpusError)
    assert isinstance(caught.value, CapacityError)
    assert (caught.value.requested, caught.value.largest_node) == (16, 8)


@pytest.mark.parametrize(
    "entry",
    [{"num_gpus": 4}, {"node_id": "n0"}, {"node_id": "n0", "num_gpus": 4, "is_head": "no"}, 7],
    ids=["no-node-id", "no-gpus", "is-head-not-bool", "not-a-mapping"],
)
def test_a_malformed_topology_entry_is_a_value_error(entry: object) -> None:
    with pytest.raises(InvalidSpecError):
        plan_replica_bundle_shape(1, _topology=[entry])  # type: ignore[list-item]


def test_our_node_topology_values_are_accepted_too() -> None:
    spec = plan_replica_bundle_shape(4, _topology=[NodeTopology(node_id="n0", num_gpus=4)])
    assert spec.strategy == "STRICT_PACK"


# --- head exclusion from the environment --------------------------------------------------------


@pytest.mark.parametrize("variable", [IGNORE_HEAD_NODE_ENV, "CURATOR_IGNORE_RAY_HEAD_NODE"])
@pytest.mark.parametrize(
    ("value", "excluded"),
    [("1", True), ("true", True), ("YES", True), (" yes ", True), ("0", False), ("no", False)],
)
def test_either_variable_keeps_the_replica_off_the_head(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, *, excluded: bool
) -> None:
    monkeypatch.setenv(variable, value)
    # head n0 holds 8 GPUs; without it, TP 8 must split over the two 4-GPU workers
    spec = plan_replica_bundle_shape(8, _topology=curator_topology(8, 4, 4, head=0))
    if excluded:
        assert (spec.strategy, spec.nnodes) == ("STRICT_SPREAD", 2)
        assert spec.bundle_label_selector is not None
        assert [dict(s) for s in spec.bundle_label_selector] == [{NODE_ID_LABEL: "!in(n0)"}] * 2
    else:
        assert (spec.strategy, spec.nnodes) == ("STRICT_PACK", 1)
        assert spec.bundle_label_selector is None


def test_without_either_variable_the_head_may_be_used() -> None:
    spec = plan_replica_bundle_shape(8, _topology=curator_topology(8, 4, head=0))
    assert spec.bundle_label_selector is None


def test_head_node_id_marks_the_head_of_entries_without_is_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CURATOR_IGNORE_RAY_HEAD_NODE", "1")
    topology = [{"node_id": "big", "num_gpus": 8}, {"node_id": "small", "num_gpus": 2}]
    with pytest.raises(RuntimeError):
        plan_replica_bundle_shape(8, head_node_id="big", _topology=topology)
    spec = plan_replica_bundle_shape(2, head_node_id="big", _topology=topology)
    assert spec.bundle_label_selector is not None


def test_only_a_head_left_with_exclusion_on_is_a_runtime_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(IGNORE_HEAD_NODE_ENV, "true")
    with pytest.raises(RuntimeError) as caught:
        plan_replica_bundle_shape(1, _topology=curator_topology(8, head=0))
    assert isinstance(caught.value, NoGpuNodesError)


# --- on the real cluster -------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_nodes")
def test_a_curator_style_script_runs_unchanged_on_the_real_cluster() -> None:
    spec = plan_replica_bundle_shape(2)
    assert spec.strategy == "STRICT_PACK"
    assert not spec.is_multi_node
    assert spec.total_gpus == 2
    pg = build_replica_pg(spec, name="curator-t-script-r0")
    try:
        ip = get_bundle_node_ip(pg, 0)
        first = get_free_port_in_bundle(pg, 0)
        second = get_free_port_in_bundle(pg, 0)  # the first is still held
        from_start = get_free_port_in_bundle(pg, 0, 40000)
        next_free = get_free_port_in_bundle(pg, 0, 40000, True)  # noqa: FBT003 - Curator's call
        assert ip
        assert not ip.startswith("127.")
        assert first != second
        assert first not in on_ray.RAY_WORKER_PORTS
        assert second not in on_ray.RAY_WORKER_PORTS
        assert 40000 <= from_start < next_free
        assert {first, second, from_start, next_free} <= on_ray.PROCESS_PORTS.given(ip)
    finally:
        assert remove_named_pgs_with_prefix("curator-t-script") == 1
    assert not {first, second, from_start, next_free} & on_ray.PROCESS_PORTS.given(ip)


@pytest.mark.usefixtures("ray_nodes")
def test_build_pg_takes_the_strategy_as_a_string() -> None:
    bundles = [{"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}]
    try:
        packed = build_pg(
            bundles,
            "STRICT_PACK",
            name="curator-t-str-pack",
            bundle_label_selector=None,
            ready_timeout_s=30,
        )
        spread = build_pg(
            bundles,
            "STRICT_SPREAD",
            name="curator-t-str-spread",
            bundle_label_selector=None,
            ready_timeout_s=30,
        )
        assert packed.bundle_count == spread.bundle_count == 2
        assert len(set(landed_on("curator-t-str-pack").values())) == 1
        assert len(set(landed_on("curator-t-str-spread").values())) == 2
    finally:
        assert remove_named_pgs_with_prefix("curator-t-str-") == 2
    assert remove_named_pgs_with_prefix("curator-t-str-") == 0


@pytest.mark.usefixtures("ray_nodes")
def test_an_unknown_strategy_string_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="strategy"):
        build_pg([{"GPU": 1}], "PACKED", name="curator-t-bad", ready_timeout_s=5)


@pytest.mark.usefixtures("ray_nodes")
def test_build_pg_takes_rays_best_effort_strategies_too_as_curator_does() -> None:
    try:
        for strategy in ("PACK", "SPREAD"):
            pg = build_pg(
                [{"CPU": 1, "GPU": 1}],
                strategy,
                name=f"curator-t-soft-{strategy}",
                ready_timeout_s=30,
            )
            assert pg.bundle_count == 1
    finally:
        assert remove_named_pgs_with_prefix("curator-t-soft-") == 2


def test_a_spec_can_be_built_positionally_as_curators_can() -> None:
    spec = ReplicaBundleSpec([{"CPU": 1, "GPU": 4}], "STRICT_PACK", 1, 4)  # type: ignore[arg-type]
    assert spec.strategy == "STRICT_PACK"
    assert (spec.nnodes, spec.per_node_gpus, spec.total_gpus) == (1, 4, 4)


@pytest.mark.usefixtures("ray_nodes")
def test_a_group_never_ready_is_a_timeout_error_and_is_removed() -> None:
    with pytest.raises(TimeoutError) as caught:
        build_pg([{"GPU": 1000}], "STRICT_PACK", name="curator-t-huge", ready_timeout_s=1)
    assert isinstance(caught.value, PlacementGroupTimeoutError)
    assert not caught.value.retryable  # no node can ever hold it
    assert remove_named_pgs_with_prefix("curator-t-huge") == 0


@pytest.mark.usefixtures("ray_nodes")
def test_a_group_whose_state_cannot_be_read_after_its_timeout_is_still_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreadable(_: object) -> GroupStatus:
        msg = "Ray could not be asked (injected)"
        raise BackendError(msg, operation="read placement group")

    monkeypatch.setattr(groups, "status_of", unreadable)
    with pytest.raises(PlacementGroupTimeoutError) as caught:
        build_pg([{"GPU": 1000}], "STRICT_PACK", name="curator-t-unread", ready_timeout_s=1)
    assert caught.value.scheduling_state is GroupStatus.UNKNOWN
    assert remove_named_pgs_with_prefix("curator-t-unread") == 0  # Ray has it as removed


@pytest.mark.usefixtures("ray_nodes")
def test_a_timed_out_group_ray_will_not_remove_is_still_a_timeout_that_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(_: object) -> None:
        msg = "Ray refused to remove it (injected)"
        raise BackendError(msg, operation="remove placement group")

    monkeypatch.setattr(groups, "remove_group", refused)
    with pytest.raises(PlacementGroupTimeoutError) as caught:
        build_pg([{"GPU": 1000}], "STRICT_PACK", name="curator-t-stuck", ready_timeout_s=1)
    assert any("could not be removed either" in n for n in caught.value.__notes__)
    monkeypatch.undo()
    assert remove_named_pgs_with_prefix("curator-t-stuck") == 1  # it was left, as the note says


@pytest.mark.usefixtures("ray_nodes")
def test_a_wait_interrupted_by_ctrl_c_removes_the_group_before_the_interrupt_goes_on() -> None:
    interrupt = threading.Timer(1.0, _thread.interrupt_main)  # as Ctrl-C in a script's wait
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            build_pg([{"GPU": 1000}], "STRICT_PACK", name="curator-t-ctrl-c", ready_timeout_s=20)
    finally:
        interrupt.cancel()
    assert remove_named_pgs_with_prefix("curator-t-ctrl-c") == 0  # Ray has it as removed


def test_tp_8_fits_one_node_of_the_real_cluster(ray_nodes: dict[str, str]) -> None:
    spec = plan_replica_bundle_shape(8)
    assert (spec.strategy, spec.nnodes, spec.per_node_gpus) == ("STRICT_PACK", 1, 8)
    build_replica_pg(spec, name="curator-t-tp8", ready_timeout_s=30)
    try:
        big = {ray_nodes["gpu-c"], ray_nodes["gpu-bulk"]}
        assert set(landed_on("curator-t-tp8").values()) <= big
    finally:
        remove_named_pgs_with_prefix("curator-t-tp8")


def test_tp_16_fits_the_bulk_node_whole(ray_nodes: dict[str, str]) -> None:
    spec = plan_replica_bundle_shape(16)
    assert (spec.strategy, spec.nnodes) == ("STRICT_PACK", 1)
    build_replica_pg(spec, name="curator-t-tp16-whole", ready_timeout_s=30)
    try:
        assert landed_on("curator-t-tp16-whole") == {0: ray_nodes["gpu-bulk"]}
    finally:
        remove_named_pgs_with_prefix("curator-t-tp16-whole")


def test_tp_16_splits_over_the_two_eight_gpu_nodes(ray_nodes: dict[str, str]) -> None:
    """Planned as if gpu-bulk offered 8 GPUs; only gpu-c and gpu-bulk can hold an 8-GPU bundle."""
    topology = [
        {"node_id": ray_nodes["gpu-c"], "num_gpus": 8, "is_head": False},
        {"node_id": ray_nodes["gpu-bulk"], "num_gpus": 8, "is_head": False},
    ]
    spec = plan_replica_bundle_shape(16, _topology=topology)
    assert (spec.strategy, spec.nnodes, spec.per_node_gpus) == ("STRICT_SPREAD", 2, 8)
    pg = build_replica_pg(spec, name="curator-t-tp16-split", ready_timeout_s=30)
    try:
        nodes = landed_on("curator-t-tp16-split")
        assert set(nodes.values()) == {ray_nodes["gpu-c"], ray_nodes["gpu-bulk"]}
        assert get_bundle_node_ip(pg, 0)
        assert get_bundle_node_ip(pg, 1)
    finally:
        remove_named_pgs_with_prefix("curator-t-tp16-split")


def test_tp_8_splits_over_two_nodes_read_from_ray_nodes_records(ray_nodes: dict[str, str]) -> None:
    small = {ray_nodes["head"], ray_nodes["gpu-a"], ray_nodes["gpu-b"]}  # 2 + 4 + 4 GPUs
    records = [n for n in alive_records() if n["NodeID"] in small]
    spec = plan_replica_bundle_shape(8, _nodes=records)
    assert (spec.strategy, spec.nnodes, spec.per_node_gpus) == ("STRICT_SPREAD", 2, 4)
    pg = build_replica_pg(spec, name="curator-t-tp8-split", ready_timeout_s=30)
    try:
        nodes = landed_on("curator-t-tp8-split")
        assert len(set(nodes.values())) == 2
        assert ray_nodes["head"] not in nodes.values()  # 2 GPUs cannot hold a 4-GPU bundle
        # Every raylet here reports one host address: ports stay distinct across the bundles.
        assert get_bundle_node_ip(pg, 0) == get_bundle_node_ip(pg, 1)
        assert get_free_port_in_bundle(pg, 0) != get_free_port_in_bundle(pg, 1)
    finally:
        remove_named_pgs_with_prefix("curator-t-tp8-split")


@pytest.mark.usefixtures("ray_nodes")
def test_an_unplaceable_tp_size_on_the_real_cluster_is_caught_as_runtime_error() -> None:
    # 128 GPUs: no node has them, 2 x 64 needs two 64s, 16 x 8 needs sixteen 8s ...
    with pytest.raises(RuntimeError) as caught:
        plan_replica_bundle_shape(128)
    assert isinstance(caught.value, NotEnoughGpusError)
    assert not isinstance(caught.value, BackendError)
    assert caught.value.largest_node == 64


@pytest.mark.usefixtures("ray_nodes")
def test_tp_size_zero_is_a_value_error_on_the_real_cluster() -> None:
    with pytest.raises(ValueError, match="tp_size") as caught:
        plan_replica_bundle_shape(0)
    assert isinstance(caught.value, InvalidSpecError)


@pytest.mark.usefixtures("ray_nodes")
def test_an_empty_prefix_is_refused_as_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty prefix") as caught:
        remove_named_pgs_with_prefix("")
    assert isinstance(caught.value, InvalidSpecError)


def test_the_curator_variable_keeps_a_real_replica_off_the_head(
    monkeypatch: pytest.MonkeyPatch, ray_nodes: dict[str, str]
) -> None:
    monkeypatch.setenv("CURATOR_IGNORE_RAY_HEAD_NODE", "1")
    spec = plan_replica_bundle_shape(2)
    assert spec.bundle_label_selector is not None
    assert dict(spec.bundle_label_selector[0]) == {NODE_ID_LABEL: f"!in({ray_nodes['head']})"}
    build_replica_pg(spec, name="curator-t-not-head", ready_timeout_s=30)
    try:
        assert ray_nodes["head"] not in landed_on("curator-t-not-head").values()
    finally:
        remove_named_pgs_with_prefix("curator-t-not-head")


def test_our_variable_with_only_the_head_left_in_ray_nodes_is_a_runtime_error(
    monkeypatch: pytest.MonkeyPatch, ray_nodes: dict[str, str]
) -> None:
    monkeypatch.setenv(IGNORE_HEAD_NODE_ENV, "yes")
    records = [n for n in alive_records() if n["NodeID"] == ray_nodes["head"]]
    with pytest.raises(RuntimeError) as caught:
        plan_replica_bundle_shape(1, _nodes=records)
    assert isinstance(caught.value, NoGpuNodesError)


def test_head_node_id_names_the_head_to_exclude_among_ray_nodes_records(
    monkeypatch: pytest.MonkeyPatch, ray_nodes: dict[str, str]
) -> None:
    monkeypatch.setenv("CURATOR_IGNORE_RAY_HEAD_NODE", "true")
    spec = plan_replica_bundle_shape(2, head_node_id=ray_nodes["gpu-c"], _nodes=alive_records())
    assert spec.bundle_label_selector is not None
    assert dict(spec.bundle_label_selector[0]) == {NODE_ID_LABEL: f"!in({ray_nodes['gpu-c']})"}


# --- what Curator's own callers use --------------------------------------------------------------


def test_the_gpu_topology_reads_as_curators_dicts_and_plans_as_it_is(
    ray_nodes: dict[str, str],
) -> None:
    topology = rp._get_gpu_topology()
    assert all(set(entry) == {"node_id", "num_gpus", "is_head"} for entry in topology)
    by_id = {entry["node_id"]: entry for entry in topology}
    assert by_id[ray_nodes["gpu-a"]] == {
        "node_id": ray_nodes["gpu-a"],
        "num_gpus": 4,
        "is_head": False,
    }
    assert by_id[ray_nodes["head"]]["is_head"]
    assert (
        rp._get_gpu_topology(nodes=[]) == topology
    )  # no records given: Ray is asked, as Curator does
    spec = plan_replica_bundle_shape(16, _topology=topology)  # as Curator's backends pass it
    assert (spec.strategy, spec.nnodes) == ("STRICT_PACK", 1)  # the bulk node holds 16


class Int64:
    """An integer type of another library (as NumPy's ``int64``), read through ``__index__``."""

    def __index__(self) -> int:
        return 4


@numbers.Real.register
class Float32:
    """A float type of another library (as NumPy's ``float32``): a real number, not a float."""

    def __float__(self) -> float:
        return 4.0


@pytest.mark.parametrize("tp_size", [Int64(), 4.0, Float32()])
def test_a_tp_size_read_from_a_config_as_a_numpy_integer_or_a_whole_float_plans(
    tp_size: object,
) -> None:
    spec = plan_replica_bundle_shape(tp_size, _topology=curator_topology(4, 4))  # type: ignore[arg-type]
    assert (spec.nnodes, spec.per_node_gpus) == (1, 4)
    assert type(spec.per_node_gpus) is int


@pytest.mark.parametrize("tp_size", [4.5, True, "4"])
def test_a_tp_size_that_is_not_a_whole_number_is_still_a_value_error(tp_size: object) -> None:
    with pytest.raises(ValueError, match="tp_size"):
        plan_replica_bundle_shape(tp_size, _topology=curator_topology(4, 4))  # type: ignore[arg-type]


@pytest.mark.usefixtures("ray_nodes")
def test_a_ready_timeout_of_none_waits_as_long_as_ray_takes() -> None:
    pg = build_pg(
        [{"CPU": 1, "GPU": 1}],
        "STRICT_PACK",
        name="curator-t-no-timeout",
        bundle_label_selector=None,
        ready_timeout_s=None,
    )
    try:
        assert groups.status_of(pg) is GroupStatus.CREATED
    finally:
        remove_named_pgs_with_prefix("curator-t-no-timeout")


@pytest.mark.usefixtures("ray_nodes")
def test_ports_of_a_group_removed_with_rays_own_call_are_given_again_once_asked_for() -> None:
    bundles, port = [{"CPU": 1, "GPU": 1}], 41_000
    first = build_pg(bundles, "STRICT_PACK", name="curator-t-rays-remove-1")
    given = get_free_port_in_bundle(first, 0, port, False)  # noqa: FBT003 - Curator's call
    assert given == port
    ray.util.remove_placement_group(first)  # as Curator's teardown does: this process is not told
    second = build_pg(bundles, "STRICT_PACK", name="curator-t-rays-remove-2")
    try:
        assert get_free_port_in_bundle(second, 0, port, False) == port  # noqa: FBT003
        assert first.id.hex() not in on_ray.PROCESS_PORTS.holders()
        with pytest.raises(BackendError):  # held by a group that lives: never given twice
            get_free_port_in_bundle(second, 0, port, False)  # noqa: FBT003
    finally:
        remove_named_pgs_with_prefix("curator-t-rays-remove")
