"""The PlanningActor and the hand-off from the DeploymentPlacementActor, on a real Ray cluster."""

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
import ray
from ray.util import remove_placement_group
from ray.util.placement_group import PlacementGroup

from placement_actors import (
    AnswerNow,
    BackendError,
    BundleStrategy,
    ClusterView,
    DefragmentationPlan,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    GetDefragmentationPlan,
    GetPlacement,
    GetPlacementFailure,
    GetReplicaGroups,
    GpuStrategy,
    GroupState,
    GroupStatus,
    InvalidSpecError,
    MoveReplica,
    NodeAssignment,
    NodeTopology,
    NotEnoughGpusError,
    Place,
    PlacedMany,
    PlaceMany,
    Placement,
    PlacementCancelledError,
    PlacementConstraints,
    PlacementError,
    PlacementFailure,
    PlacementGroupFailed,
    PlacementGroupTimedOut,
    PlacementGroupTimeoutError,
    PlacementResult,
    PlanningActor,
    PlanReplica,
    Release,
    Released,
    RemoveReplicaGroups,
    ReplicaFailed,
    ReplicaGroupsRemoved,
    ReplicaGroupsView,
    ReplicaMoved,
    ReplicaPlacement,
    group_name,
)
from placement_actors.actors.messages import (
    BundleGpusKnown,
    GroupRescheduling,
    NodeLost,
    ReplicaLost,
    Subscribe,
)
from placement_actors.backends import ray as on_ray
from placement_actors.backends.protocol import BundleProbe, MemoryCheckpoints
from placement_actors.domain.checkpoints import DeploymentCheckpoint, GroupCheckpoint, decode
from placement_actors.domain.deployments import group_prefix
from placement_actors.policies.bundle_shapes import NODE_ID_LABEL
from placement_actors.policies.recovery import AdoptedReplica, RecoveredDeployment

TIMEOUT = 30

pytestmark = pytest.mark.usefixtures("ray_nodes")


@dataclasses.dataclass
class Service:
    placement: pykka.ActorRef[DeploymentPlacementActor]
    planner: pykka.ActorRef[PlanningActor]

    def place(self, deployment: Deployment, **constraints: object) -> PlacementResult:
        message = Place(deployment, PlacementConstraints(**constraints))  # type: ignore[arg-type]
        result = self.placement.ask(message, timeout=TIMEOUT)
        assert isinstance(result, PlacementResult)
        return result

    def view(self) -> ClusterView:
        view = self.placement.ask(GetClusterView(), timeout=TIMEOUT)
        assert isinstance(view, ClusterView)
        return view

    def groups(self) -> ReplicaGroupsView:
        groups = self.planner.ask(GetReplicaGroups(), timeout=TIMEOUT)
        assert isinstance(groups, ReplicaGroupsView)
        return groups


def start_service(
    topology: tuple[NodeTopology, ...] | None = None, ready_timeout_s: float = 30
) -> Service:
    planner = PlanningActor.start(backend=on_ray.RayBackend(), ready_timeout_s=ready_timeout_s)
    placement = DeploymentPlacementActor.start(
        topology=topology if topology is not None else on_ray.get_cluster_topology(),
        egress_nodes=on_ray.get_egress_nodes(),
        planner=planner,
        ignore_head_node=True,
    )
    return Service(placement=placement, planner=planner)


@pytest.fixture
def service() -> Iterator[Service]:
    started = start_service()
    yield started
    for name in started.view().deployments:
        started.placement.ask(Release(name), timeout=TIMEOUT)


def llama(name: str = "llama", *, gpus: int = 1, replicas: int = 1) -> Deployment:
    return Deployment(name=name, model="meta-llama/Llama-3.1-8B", gpus=gpus, replicas=replicas)


def status(name: str) -> GroupStatus:
    """What Ray says of the group named ``name`` (the live one, if the name was used again)."""
    return on_ray.group_states(name)[name]


def hold_gpus(node: str, gpus: int, *, name: str) -> PlacementGroup:
    """Take ``gpus`` GPUs of ``node`` with a group of our own, as another Ray user would."""
    return on_ray.build_pg(
        [{"GPU": gpus}],
        BundleStrategy.STRICT_PACK,
        name=name,
        bundle_label_selector=[{NODE_ID_LABEL: node}],
        ready_timeout_s=20,
    )


def test_place_answers_with_futures_that_resolve_to_master_ip_and_port(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    result = service.place(llama(gpus=2), gpu_nodes=(ray_nodes["gpu-a"],))
    (replica,) = result.replicas
    assert replica.group_name == group_name("llama", 0)
    assert replica.spec.strategy is BundleStrategy.STRICT_PACK
    ip = replica.master.node_ip.get(timeout=TIMEOUT)
    port = replica.master.port.get(timeout=TIMEOUT)
    assert ip
    assert 0 < port < 65536
    assert on_ray.group_states(replica.group_name) == {replica.group_name: GroupStatus.CREATED}
    assert on_ray.bundle_nodes(replica.group_name) == {replica.group_name: {0: ray_nodes["gpu-a"]}}
    assert service.groups().groups[0].state is GroupState.READY


def test_release_removes_the_groups_and_frees_the_ledger(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    result = service.place(llama(replicas=2))
    for replica in result.replicas:
        replica.master.port.get(timeout=TIMEOUT)
    released = service.placement.ask(Release("llama"), timeout=TIMEOUT)
    assert released.gpus_freed == 2  # type: ignore[union-attr]
    states = on_ray.group_states(group_name("llama", 0)[:-2])
    assert states == {
        group_name("llama", 0): GroupStatus.REMOVED,
        group_name("llama", 1): GroupStatus.REMOVED,
    }
    assert all(not node.held for node in service.view().nodes)
    assert service.groups().groups == ()
    del ray_nodes


def test_a_multi_node_replica_spreads_over_the_nodes_the_ledger_chose(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    pair = (ray_nodes["gpu-a"], ray_nodes["gpu-b"])
    result = service.place(llama("tp8", gpus=8), gpu_nodes=pair)  # no single node has 8
    (replica,) = result.replicas
    assert replica.spec.strategy is BundleStrategy.STRICT_SPREAD
    assert replica.spec.is_multi_node
    assert {a.node for a in result.assignments} == set(pair)
    ports = [b.port.get(timeout=TIMEOUT) for b in replica.bundles]
    assert len(set(ports)) == 2  # the two raylets share one host address
    landed = on_ray.bundle_nodes(replica.group_name)[replica.group_name]
    assert set(landed.values()) == set(pair)
    assert [b.node for b in replica.bundles] == [landed[i] for i in range(2)]


def test_head_exclusion_keeps_replicas_off_a_head_with_gpus(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    result = service.place(llama(replicas=4), strategy=GpuStrategy.SPREAD)
    assert ray_nodes["head"] not in {a.node for a in result.assignments}
    for replica in result.replicas:
        replica.master.port.get(timeout=TIMEOUT)
        landed = on_ray.bundle_nodes(replica.group_name)[replica.group_name]
        assert ray_nodes["head"] not in landed.values()
        assert replica.spec.bundle_label_selector is not None
        assert dict(replica.spec.bundle_label_selector[0]) == {
            NODE_ID_LABEL: replica.bundles[0].node
        }


def test_an_infeasible_group_fails_its_futures_is_removed_and_frees_the_ledger(
    ray_nodes: dict[str, str],
) -> None:
    """The ledger believes gpu-a has 16 GPUs; Ray knows it has 4 and calls the group infeasible."""
    topology = tuple(
        dataclasses.replace(n, num_gpus=16) if n.node_id == ray_nodes["gpu-a"] else n
        for n in on_ray.get_cluster_topology()
    )
    svc = start_service(topology, ready_timeout_s=1.5)
    result = svc.place(llama("wrong", gpus=16), gpu_nodes=(ray_nodes["gpu-a"],))
    (replica,) = result.replicas
    with pytest.raises(PlacementGroupTimeoutError) as caught:
        replica.master.port.get(timeout=TIMEOUT)
    assert caught.value.scheduling_state is GroupStatus.INFEASIBLE
    assert not caught.value.retryable
    with pytest.raises(PlacementGroupTimeoutError):
        replica.master.node_ip.get(timeout=TIMEOUT)
    assert status(replica.group_name) is GroupStatus.REMOVED
    assert svc.groups().groups[0].state is GroupState.FAILED
    assert _eventually(lambda: not svc.view().node(ray_nodes["gpu-a"]).held)
    svc.placement.ask(Release("wrong"), timeout=TIMEOUT)


def test_a_group_without_room_yet_times_out_as_retryable(ray_nodes: dict[str, str]) -> None:
    holder = hold_gpus(ray_nodes["gpu-b"], 4, name="t-outside-holder")
    try:
        svc = start_service(ready_timeout_s=1.5)
        result = svc.place(llama("late", gpus=4), gpu_nodes=(ray_nodes["gpu-b"],))
        with pytest.raises(PlacementGroupTimeoutError) as caught:
            result.replicas[0].master.port.get(timeout=TIMEOUT)
        assert caught.value.scheduling_state is GroupStatus.NO_RESOURCES
        assert caught.value.retryable
        svc.placement.ask(Release("late"), timeout=TIMEOUT)
    finally:
        remove_placement_group(holder)


def test_resending_place_after_a_replica_failed_places_it_again(
    ray_nodes: dict[str, str],
) -> None:
    holder = hold_gpus(ray_nodes["gpu-b"], 4, name="t-outside-holder-2")
    svc = start_service(ready_timeout_s=1.5)
    message_nodes = (ray_nodes["gpu-b"],)
    first = svc.place(llama("retry", gpus=4), gpu_nodes=message_nodes)
    with pytest.raises(PlacementGroupTimeoutError):
        first.replicas[0].master.port.get(timeout=TIMEOUT)
    assert _eventually(
        lambda: (
            svc.view().deployments == ("retry",) and not svc.view().node(ray_nodes["gpu-b"]).held
        )
    )
    remove_placement_group(holder)
    second = svc.place(llama("retry", gpus=4), gpu_nodes=message_nodes)
    assert second.replicas[0].master.port.get(timeout=TIMEOUT) > 0
    svc.placement.ask(Release("retry"), timeout=TIMEOUT)


def test_sixty_replicas_planned_together_all_resolve_with_distinct_ports(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    result = service.place(llama("fleet", replicas=60), gpu_nodes=(ray_nodes["gpu-bulk"],))
    assert len(result.replicas) == 60
    endpoints = {
        (r.master.node_ip.get(timeout=TIMEOUT), r.master.port.get(timeout=TIMEOUT))
        for r in result.replicas
    }
    assert len(endpoints) == 60  # one host address: every port distinct
    assert {g.state for g in service.groups().groups} == {GroupState.READY}


def test_the_planner_answers_while_a_group_is_still_pending(ray_nodes: dict[str, str]) -> None:
    planner = PlanningActor.start(backend=on_ray.RayBackend(), ready_timeout_s=60)
    placement = planner.ask(
        PlanReplica(
            deployment="pending",
            replica_index=0,
            assignments=(
                NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=tuple(range(64))),
            ),
        ),
        timeout=TIMEOUT,
    )
    assert isinstance(placement, ReplicaPlacement)
    # the group cannot be scheduled for a minute; the mailbox still answers at once
    view = planner.ask(GetReplicaGroups(), timeout=5)
    assert [g.state for g in view.groups] == [GroupState.PENDING]  # type: ignore[union-attr]
    removed = planner.ask(RemoveReplicaGroups("pending"), timeout=TIMEOUT)
    assert removed.removed == 1  # type: ignore[union-attr]
    with pytest.raises(PlacementCancelledError):
        placement.master.port.get(timeout=TIMEOUT)


def test_planner_reaping_leaves_other_deployments_alone(ray_nodes: dict[str, str]) -> None:
    planner = PlanningActor.start(backend=on_ray.RayBackend())
    node = ray_nodes["gpu-bulk"]
    placements = {
        name: planner.ask(
            PlanReplica(
                deployment=name,
                replica_index=0,
                assignments=(NodeAssignment(replica_index=0, node=node, gpus=(0,)),),
            ),
            timeout=TIMEOUT,
        )
        for name in ("dep-1", "dep-10")
    }
    for placed in placements.values():
        assert isinstance(placed, ReplicaPlacement)
        placed.master.port.get(timeout=TIMEOUT)
    planner.ask(RemoveReplicaGroups("dep-1"), timeout=TIMEOUT)
    assert status(group_name("dep-10", 0)) is GroupStatus.CREATED
    assert status(group_name("dep-1", 0)) is GroupStatus.REMOVED
    planner.ask(RemoveReplicaGroups("dep-10"), timeout=TIMEOUT)


def test_planning_the_same_replica_twice_answers_the_same_placement(
    ray_nodes: dict[str, str],
) -> None:
    planner = PlanningActor.start(backend=on_ray.RayBackend())
    chosen = (NodeAssignment(replica_index=0, node=ray_nodes["gpu-bulk"], gpus=(0,)),)
    message = PlanReplica(deployment="twice", replica_index=0, assignments=chosen)
    first = planner.ask(message, timeout=TIMEOUT)
    assert planner.ask(message, timeout=TIMEOUT) is first
    other = dataclasses.replace(message, assignments=(dataclasses.replace(chosen[0], gpus=(0, 1)),))
    with pytest.raises(InvalidSpecError):
        planner.ask(other, timeout=TIMEOUT)
    planner.ask(RemoveReplicaGroups("twice"), timeout=TIMEOUT)


def _eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``check`` until it holds: events reach the ledger asynchronously, by design."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_removing_some_replicas_keeps_the_others(ray_nodes: dict[str, str]) -> None:
    planner = PlanningActor.start(backend=on_ray.RayBackend())
    node = ray_nodes["gpu-bulk"]
    placements = [
        planner.ask(
            PlanReplica(
                deployment="some",
                replica_index=i,
                assignments=(NodeAssignment(replica_index=i, node=node, gpus=(i,)),),
            ),
            timeout=TIMEOUT,
        )
        for i in (1, 10)
    ]
    for placed in placements:
        assert isinstance(placed, ReplicaPlacement)
        placed.master.port.get(timeout=TIMEOUT)
    removed = planner.ask(RemoveReplicaGroups("some", (1,)), timeout=TIMEOUT)
    assert removed.removed == 1  # type: ignore[union-attr]
    assert status(group_name("some", 1)) is GroupStatus.REMOVED
    assert status(group_name("some", 10)) is GroupStatus.CREATED
    planner.ask(RemoveReplicaGroups("some"), timeout=TIMEOUT)


def test_groups_live_in_the_service_namespace_and_are_found_by_name(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    result = service.place(llama("named"), gpu_nodes=(ray_nodes["gpu-a"],))
    result.replicas[0].master.port.get(timeout=TIMEOUT)
    assert ray.get_runtime_context().namespace == on_ray.NAMESPACE
    found = ray.util.get_placement_group(result.replicas[0].group_name)
    assert found.bundle_specs == [{"CPU": 1.0, "GPU": 1.0}]


def test_a_late_event_about_a_removed_group_leaves_its_successor_alone(
    ray_nodes: dict[str, str],
) -> None:
    planner = PlanningActor.start(backend=on_ray.RayBackend(), ready_timeout_s=1)
    node = ray_nodes["gpu-bulk"]
    too_big = PlanReplica(
        deployment="again",
        replica_index=0,
        assignments=(NodeAssignment(replica_index=0, node=node, gpus=tuple(range(100))),),
    )
    first = planner.ask(too_big, timeout=TIMEOUT)
    assert isinstance(first, ReplicaPlacement)
    with pytest.raises(PlacementGroupTimeoutError):
        first.master.port.get(timeout=TIMEOUT)
    holder = hold_gpus(
        node, 64, name="t-bulk-holder"
    )  # keeps the successor pending while the late events arrive
    fits = dataclasses.replace(
        too_big,
        assignments=(NodeAssignment(replica_index=0, node=node, gpus=(0,)),),
        ready_timeout_s=60,
    )
    second = planner.ask(fits, timeout=TIMEOUT)
    assert isinstance(second, ReplicaPlacement)
    assert second is not first
    # what the first group's callbacks and timer could still deliver
    planner.tell(
        PlacementGroupFailed(group_name=first.group_name, attempt=1, error=OSError("late"))
    )
    planner.tell(PlacementGroupTimedOut(group_name=first.group_name, attempt=1))
    view = planner.ask(GetReplicaGroups(), timeout=TIMEOUT)
    assert [g.state for g in view.groups] == [GroupState.PENDING]  # type: ignore[union-attr]
    remove_placement_group(holder)
    assert second.master.port.get(timeout=TIMEOUT) > 0
    planner.ask(RemoveReplicaGroups("again"), timeout=TIMEOUT)


def test_a_replica_failure_about_an_older_group_frees_nothing(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    result = service.place(llama("kept", gpus=2), gpu_nodes=(ray_nodes["gpu-a"],))
    (replica,) = result.replicas
    replica.master.port.get(timeout=TIMEOUT)
    late = ReplicaFailed(
        deployment="kept",
        replica_index=0,
        group_name=replica.group_name,
        attempt=replica.attempt - 1,
        error=PlacementCancelledError(group=replica.group_name),
    )
    service.placement.tell(late)
    assert len(service.view().node(ray_nodes["gpu-a"]).held) == 2
    current = dataclasses.replace(late, attempt=replica.attempt)
    service.placement.tell(current)
    assert service.view().node(ray_nodes["gpu-a"]).held == ()


def test_releasing_an_unknown_name_reaps_groups_an_earlier_run_left(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    leftover = group_name("leftover", 0)
    on_ray.build_pg(
        [{"CPU": 1, "GPU": 1}],
        BundleStrategy.STRICT_PACK,
        name=leftover,
        bundle_label_selector=[{NODE_ID_LABEL: ray_nodes["gpu-bulk"]}],
        ready_timeout_s=20,
    )
    released = service.placement.ask(Release("leftover"), timeout=TIMEOUT)
    assert released.was_placed is False  # type: ignore[union-attr]
    assert status(leftover) is GroupStatus.REMOVED


def test_stopping_the_planner_fails_the_futures_it_still_owes(ray_nodes: dict[str, str]) -> None:
    planner = PlanningActor.start(backend=on_ray.RayBackend(), ready_timeout_s=60)
    placement = planner.ask(
        PlanReplica(
            deployment="owed",
            replica_index=0,
            assignments=(
                NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=tuple(range(64))),
            ),
        ),
        timeout=TIMEOUT,
    )
    assert isinstance(placement, ReplicaPlacement)
    planner.stop(timeout=TIMEOUT)
    with pytest.raises(BackendError, match="planner stopped"):
        placement.master.port.get(timeout=TIMEOUT)
    # the detached group outlives the planner, as it should; a later service reaps it
    assert on_ray.remove_named_pgs_with_prefix(group_name("owed", 0)) == 1


async def test_a_ticker_keeps_ticking_while_a_slow_placement_group_is_awaited(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    holder = hold_gpus(
        ray_nodes["gpu-b"], 4, name="t-async-holder"
    )  # gpu-b is full until the holder goes
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    result = await service.placement.ask(
        Place(llama("awaited", gpus=4), PlacementConstraints(gpu_nodes=(ray_nodes["gpu-b"],))),
        block=False,
    )
    assert isinstance(result, PlacementResult)
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, remove_placement_group, holder)
    start = time.monotonic()
    port = await asyncio.wait_for(result.replicas[0].master.port, TIMEOUT)
    waited = time.monotonic() - start
    task.cancel()
    assert port > 0
    assert waited >= 0.45  # Ray made the group ready only after the holder went
    assert ticks >= 10  # a blocked loop would have ticked about once


class DeafBackend(on_ray.RayBackend):
    """Ray's readiness callback never arrives (a lost event)."""

    def when_ready(self, group: object, callback: Any) -> None:
        del group, callback


def test_a_group_whose_ready_event_was_lost_resolves_at_its_deadline(
    ray_nodes: dict[str, str],
) -> None:
    planner = PlanningActor.start(backend=DeafBackend(), ready_timeout_s=2)
    placement = DeploymentPlacementActor.start(
        topology=on_ray.get_cluster_topology(), planner=planner, ignore_head_node=True
    )
    service = Service(placement=placement, planner=planner)
    try:
        result = service.place(llama("deaf"), gpu_nodes=(ray_nodes["gpu-a"],))
        # Ray made the group ready; the planner heard nothing until the deadline, then asked.
        assert result.replicas[0].master.port.get(timeout=TIMEOUT) > 0
        assert service.groups().groups[0].state is GroupState.READY
    finally:
        placement.ask(Release("deaf"), timeout=TIMEOUT)
        placement.stop(timeout=TIMEOUT)
        planner.stop(timeout=TIMEOUT)


def test_a_timeout_event_before_the_groups_deadline_is_ignored(
    ray_nodes: dict[str, str],
) -> None:
    # As when a deadline fires just as the group is re-armed: its event arrives early.
    planner = PlanningActor.start(backend=DeafBackend(), ready_timeout_s=30)
    try:
        placed = planner.ask(
            PlanReplica(
                deployment="early",
                replica_index=0,
                assignments=(NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(0,)),),
            ),
            timeout=TIMEOUT,
        )
        assert isinstance(placed, ReplicaPlacement)
        planner.tell(PlacementGroupTimedOut(group_name=placed.group_name, attempt=placed.attempt))
        view = planner.ask(GetReplicaGroups(), timeout=TIMEOUT)
        assert isinstance(view, ReplicaGroupsView)
        assert [g.state for g in view.groups] == [GroupState.PENDING]
    finally:
        planner.ask(RemoveReplicaGroups("early"), timeout=TIMEOUT)
        planner.stop(timeout=TIMEOUT)


class GatedBackend(on_ray.RayBackend):
    """Ray's group creation held at a gate: a planner busy with slow Ray calls, on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def create_group(self, spec: Any, *, name: str) -> object:
        self.entered.set()
        assert self.gate.wait(TIMEOUT)
        return super().create_group(spec, name=name)


def test_answer_now_queries_are_answered_while_a_place_waits_for_the_planner(
    ray_nodes: dict[str, str],
) -> None:
    backend = GatedBackend()
    planner = PlanningActor.start(backend=backend)
    placement = DeploymentPlacementActor.start(
        topology=on_ray.get_cluster_topology(), planner=planner, ignore_head_node=True
    )
    node = ray_nodes["gpu-a"]
    try:
        placing = placement.ask(
            Place(llama("slow"), PlacementConstraints(gpu_nodes=(node,))), block=False
        )
        assert backend.entered.wait(TIMEOUT)  # the planner is inside Ray's create call
        releasing = placement.ask(Release("slow"), block=False)
        in_order = placement.ask(GetPlacement("slow"), block=False)  # a plain query waits
        # Wrapped, the view comes back although the Place has not: its GPU is already reserved.
        view = placement.ask(AnswerNow(GetClusterView()), timeout=TIMEOUT)
        assert isinstance(view, ClusterView)
        assert [h.deployment for h in view.node(node).held] == ["slow"]
        assert "slow" not in view.deployments
        now = placement.ask(AnswerNow(GetPlacement("slow")), timeout=TIMEOUT)
        assert isinstance(now, Placement)
        assert now.result is None
        assert not placing.done()  # type: ignore[attr-defined]
        assert not releasing.done()  # type: ignore[attr-defined]
        assert not in_order.done()  # type: ignore[attr-defined]
        backend.gate.set()
        assert isinstance(placing.get(timeout=TIMEOUT), PlacementResult)
        assert isinstance(releasing.get(timeout=TIMEOUT), Released)  # after the Place, in order
        after_release = in_order.get(timeout=TIMEOUT)  # and the plain query after the Release
        assert isinstance(after_release, Placement)
        assert after_release.result is None
        after = placement.ask(GetClusterView(), timeout=TIMEOUT)
        assert isinstance(after, ClusterView)
        assert after.node(node).held == ()
        assert status(group_name("slow", 0)) is GroupStatus.REMOVED
    finally:
        backend.gate.set()
        placement.stop(timeout=TIMEOUT)
        planner.stop(timeout=TIMEOUT)


def test_a_plain_query_sent_after_a_place_sees_it_placed() -> None:
    backend = GatedBackend()
    planner = PlanningActor.start(backend=backend)
    placement = DeploymentPlacementActor.start(
        topology=on_ray.get_cluster_topology(), planner=planner, ignore_head_node=True
    )
    try:
        placement.tell(Place(llama("told")))
        assert backend.entered.wait(TIMEOUT)
        asked = placement.ask(GetPlacement("told"), block=False)
        backend.gate.set()
        found = asked.get(timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.result is not None  # the told Place was carried out before the query
    finally:
        backend.gate.set()
        placement.ask(Release("told"), timeout=TIMEOUT)
        placement.stop(timeout=TIMEOUT)
        planner.stop(timeout=TIMEOUT)


class RefusingBackend(on_ray.RayBackend):
    """Ray, refusing the next group creation or removal (once each) when told to."""

    refuse_create = False
    refuse_create_at = 0  # refuse the creation of this number, counting from here
    refuse_remove = 0  # how many removals to refuse (True: one)
    refuse_remove_of = ""  # refuse every removal of the groups whose names hold this text
    refuse_listing = False

    def create_group(self, spec: Any, *, name: str) -> object:
        self.refuse_create_at -= 1
        if self.refuse_create or self.refuse_create_at == 0:
            self.refuse_create = False
            msg = "Ray refused the group (injected)"
            raise BackendError(msg, operation="create placement group")
        return super().create_group(spec, name=name)

    def remove_group(self, group: object) -> None:
        named = str(ray.util.placement_group_table(group).get("name", ""))
        if self.refuse_remove_of and self.refuse_remove_of in named:
            msg = f"Ray refused to remove {named} (injected)"
            raise BackendError(msg, operation="remove placement group")
        if self.refuse_remove:
            self.refuse_remove -= 1
            msg = "Ray refused to remove the group (injected)"
            raise BackendError(msg, operation="remove placement group")
        super().remove_group(group)

    def remove_groups_with_prefix(self, prefix: str) -> int:
        if self.refuse_listing:
            self.refuse_listing = False
            msg = "Ray could not list the groups (injected)"
            raise BackendError(msg, operation="list placement groups")
        return super().remove_groups_with_prefix(prefix)


@contextlib.contextmanager
def served(backend: on_ray.RayBackend, planner_timeout_s: float = 30.0) -> Iterator[Service]:
    """Both actors on ``backend``; afterwards every deployment released and both stopped."""
    planner = PlanningActor.start(backend=backend)
    placement = DeploymentPlacementActor.start(
        topology=on_ray.get_cluster_topology(),
        planner=planner,
        ignore_head_node=True,
        planner_timeout_s=planner_timeout_s,
    )
    service = Service(placement=placement, planner=planner)
    try:
        yield service
    finally:
        for name in service.view().deployments:
            placement.ask(Release(name), timeout=TIMEOUT)
        placement.stop(timeout=TIMEOUT)
        planner.stop(timeout=TIMEOUT)


def other_of(placed: PlacementResult, nodes: tuple[str, str]) -> tuple[str, str]:
    """The node of a one-node replica among ``nodes``, and the other one."""
    (source,) = {x.node for x in placed.assignments}
    return source, nodes[1] if source == nodes[0] else nodes[0]


class SlowThenRefusing(RefusingBackend):
    """Ray, slow to make groups while ``gate`` is shut, refusing every removal after the first
    ``removals_allowed`` while ``refusing`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.refusing = False
        self.removals_allowed = 0

    def create_group(self, spec: Any, *, name: str) -> object:
        assert self.gate.wait(TIMEOUT)
        return super().create_group(spec, name=name)

    def remove_group(self, group: object) -> None:
        if self.refusing and self.removals_allowed <= 0:
            msg = "Ray refused to remove the group (injected)"
            raise BackendError(msg, operation="remove placement group")
        self.removals_allowed -= 1
        super().remove_group(group)


def held_by(service: Service, name: str) -> dict[str, int]:
    """GPUs the ledger holds for ``name``, by node."""
    held: dict[str, int] = {}
    for node in service.view().nodes:
        count = sum(h.deployment == name for h in node.held)
        if count:
            held[node.node_id] = count
    return held


def on_ray_for(name: str) -> dict[str, int]:
    """Bundles Ray's live groups of ``name`` have, by node (one GPU each here)."""
    found: dict[str, int] = {}
    for bundles in on_ray.bundle_nodes(group_prefix(name)).values():
        for node in bundles.values():
            found[node] = found.get(node, 0) + 1
    return found


def test_a_move_whose_new_group_the_planner_makes_too_late_keeps_its_gpus_held_until_it_goes(
    ray_nodes: dict[str, str],
) -> None:
    backend = SlowThenRefusing()
    both = (ray_nodes["gpu-a"], ray_nodes["gpu-b"])
    with served(backend, planner_timeout_s=1.0) as service:
        placed = service.place(llama("late-move"), gpu_nodes=both)
        _, target = other_of(placed, both)
        backend.gate.clear()  # the new group is made after the planner's 1 s
        backend.refusing, backend.removals_allowed = True, 1  # the old group's removal only
        threading.Timer(1.5, backend.gate.set).start()
        with pytest.raises(BackendError, match="did not answer"):
            service.placement.ask(MoveReplica("late-move", 0, target), timeout=TIMEOUT)
        # The new group stands on Ray (made late) and will not go for now: its GPU stays held
        # on the ledger, so it cannot be promised to another deployment.
        assert _eventually(lambda: on_ray_for("late-move") == {target: 1}, TIMEOUT)
        assert held_by(service, "late-move").get(target) == 1
        backend.refusing = False  # Ray is back: the next message removes it; the replica is
        service.placement.ask(GetPlacement("late-move"), timeout=TIMEOUT)  # placed again
        found = service.placement.ask(GetPlacement("late-move"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.missing == ()
        assert _eventually(
            lambda: held_by(service, "late-move") == on_ray_for("late-move"), TIMEOUT
        )
        assert sum(held_by(service, "late-move").values()) == 1


class SlowRemovals(on_ray.RayBackend):
    """Ray, removing a deployment's groups only once ``gate`` opens (a GCS slow to answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def remove_groups_with_prefix(self, prefix: str) -> int:
        assert self.gate.wait(TIMEOUT)
        return super().remove_groups_with_prefix(prefix)


def test_a_release_the_planner_answers_too_late_is_carried_out_and_its_gpus_held_till_then(
    ray_nodes: dict[str, str],
) -> None:
    backend = SlowRemovals()
    node = ray_nodes["gpu-b"]
    with served(backend, planner_timeout_s=1.0) as service:
        placed = service.place(llama("late-release", gpus=2), gpu_nodes=(node,))
        assert placed.replicas[0].master.port.get(timeout=TIMEOUT) > 0
        backend.gate.clear()
        try:
            with pytest.raises(BackendError, match="late-release is released, and its GPUs"):
                service.placement.ask(Release("late-release"), timeout=TIMEOUT)
            gone = service.placement.ask(GetPlacement("late-release"), timeout=TIMEOUT)
            assert isinstance(gone, Placement)
            assert gone.result is None  # released: not a result whose groups may be gone
            # While the planner has not removed its group, its GPUs are promised to no one.
            assert held_by(service, "late-release") == {node: 2}
            with pytest.raises(BackendError, match="still stand"):
                service.place(llama("late-release", gpus=2), gpu_nodes=(node,))
        finally:
            backend.gate.set()
        # The planner removed its group after all; the next messages give its GPUs back.
        assert _eventually(lambda: on_ray_for("late-release") == {}, TIMEOUT)
        assert _eventually(lambda: held_by(service, "late-release") == {}, TIMEOUT)
        again = service.place(llama("late-release", gpus=2), gpu_nodes=(node,))
        assert again.replicas[0].master.port.get(timeout=TIMEOUT) > 0


def test_a_move_whose_new_group_ray_refuses_loses_the_replica_and_places_it_again(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    both = (ray_nodes["gpu-a"], ray_nodes["gpu-b"])
    with served(backend) as service:
        placed = service.place(llama("moving", gpus=2), gpu_nodes=both)
        _, target = other_of(placed, both)
        backend.refuse_create = True
        with pytest.raises(BackendError, match="injected"):
            service.placement.ask(MoveReplica("moving", 0, target), timeout=TIMEOUT)
        # Its old group was removed before Ray refused the new one: the replica was lost, and
        # placed again at once (replace_lost), on the capacity there is: two GPUs held, once.
        found = service.placement.ask(GetPlacement("moving"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.result is not None
        assert found.missing == ()
        assert sum(len(x.gpus) for x in found.result.assignments) == 2
        assert found.result.replicas[0].master.port.get(timeout=TIMEOUT) > 0
        held = [h for n in service.view().nodes for h in n.held if h.deployment == "moving"]
        assert len(held) == 2
        assert [g.state for g in service.groups().groups] == [GroupState.READY]


def test_a_move_whose_old_group_ray_will_not_remove_changes_nothing(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    both = (ray_nodes["gpu-a"], ray_nodes["gpu-b"])
    with served(backend) as service:
        placed = service.place(llama("staying", gpus=2), gpu_nodes=both)
        port = placed.replicas[0].master.port.get(timeout=TIMEOUT)
        source, target = other_of(placed, both)
        before = service.view()
        backend.refuse_remove = True
        with pytest.raises(BackendError, match="injected"):
            service.placement.ask(MoveReplica("staying", 0, target), timeout=TIMEOUT)
        # The group still stands on Ray, and the planner still tracks it (its port too):
        assert service.view() == before
        assert [(g.state, g.nodes) for g in service.groups().groups] == [
            (GroupState.READY, (source,))
        ]
        assert status(group_name("staying", 0)) is GroupStatus.CREATED
        found = service.placement.ask(GetPlacement("staying"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.result == placed
        assert found.result.replicas[0].master.port.get(timeout=TIMEOUT) == port
        # ... so the move can simply be asked for again.
        moved = service.placement.ask(MoveReplica("staying", 0, target), timeout=TIMEOUT)
        assert isinstance(moved, ReplicaMoved)
        assert [x.node for x in moved.assignments] == [target]


def test_a_place_whose_room_making_move_ray_refuses_is_refused_as_before(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    both = (ray_nodes["gpu-a"], ray_nodes["gpu-b"])
    with served(backend) as service:
        service.place(llama("mv-1", gpus=2), gpu_nodes=both, movable=True)
        service.place(
            llama("mv-2", gpus=2), gpu_nodes=both, movable=True, strategy=GpuStrategy.SPREAD
        )
        before = service.view()
        backend.refuse_remove = True  # the room-making move's removal
        with pytest.raises(NotEnoughGpusError):
            service.place(llama("mv-wide", gpus=4), gpu_nodes=both, keep_whole=True)
        assert service.view() == before
        failure = service.placement.ask(GetPlacementFailure("mv-wide"), timeout=TIMEOUT)
        assert isinstance(failure, PlacementFailure)
        assert isinstance(failure.error, NotEnoughGpusError)
        # Ray has room once it removes groups again: the same Place now makes room and fits.
        wide = service.place(llama("mv-wide", gpus=4), gpu_nodes=both, keep_whole=True)
        assert len(wide.assignments) == 1


def test_a_release_ray_cannot_carry_out_forgets_nothing_and_can_be_asked_again(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    with served(backend) as service:
        placed = service.place(llama("kept", gpus=2), gpu_nodes=(ray_nodes["gpu-a"],))
        port = placed.replicas[0].master.port.get(timeout=TIMEOUT)
        backend.refuse_listing = True
        with pytest.raises(BackendError, match="injected"):
            service.placement.ask(Release("kept"), timeout=TIMEOUT)
        # Nothing was forgotten: the ledger, the planner (its port too) and Ray agree it stands.
        assert [g.state for g in service.groups().groups] == [GroupState.READY]
        assert status(group_name("kept", 0)) is GroupStatus.CREATED
        found = service.placement.ask(GetPlacement("kept"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.result is not None
        assert found.result.replicas[0].master.port.get(timeout=TIMEOUT) == port
        released = service.placement.ask(Release("kept"), timeout=TIMEOUT)  # asked again
        assert isinstance(released, Released)
        assert released.gpus_freed == 2
        assert service.groups().groups == ()
        assert status(group_name("kept", 0)) is GroupStatus.REMOVED


def test_a_failed_group_ray_would_not_remove_keeps_its_gpus_until_ray_removes_it(
    ray_nodes: dict[str, str],
) -> None:
    b = ray_nodes["gpu-b"]
    holder = hold_gpus(b, 4, name="t-outside-holder-3")
    backend = RefusingBackend()
    planner = PlanningActor.start(backend=backend, ready_timeout_s=1.5)
    placement = DeploymentPlacementActor.start(
        topology=on_ray.get_cluster_topology(), planner=planner, ignore_head_node=True
    )
    service = Service(placement=placement, planner=planner)
    try:
        backend.refuse_remove = 3  # when the group times out, and at the next two messages
        first = service.place(llama("zombie", gpus=4), gpu_nodes=(b,))
        with pytest.raises(PlacementGroupTimeoutError):
            first.replicas[0].master.port.get(timeout=TIMEOUT)
        planner.ask(GetReplicaGroups(), timeout=TIMEOUT)  # the failure was handled and told
        # Ray first: the failed group still stands on Ray, so its GPUs stay held on the ledger.
        assert [h.deployment for h in service.view().node(b).held] == ["zombie"] * 4
        assert status(group_name("zombie", 0)).is_live
        with pytest.raises(BackendError, match="still stand"):  # its name is not free yet
            service.place(llama("zombie", gpus=4), gpu_nodes=(b,))
        assert backend.refuse_remove == 0
        remove_placement_group(holder)
        # The next message carries the removal out, and the replica is placed again at once
        # (replace_lost) in a new group of that name: not "already exists".
        found = service.placement.ask(GetPlacement("zombie"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.missing == ()
        assert found.result is not None
        assert found.result.replicas[0].master.port.get(timeout=TIMEOUT) > 0
        name = group_name("zombie", 0)
        assert on_ray.groups_in(GroupStatus.CREATED, name) == {
            found.result.replicas[0].group_id: name
        }
        assert first.replicas[0].group_id in on_ray.groups_in(GroupStatus.REMOVED, name)
        assert len(service.view().node(b).held) == 4
    finally:
        for name in service.view().deployments:
            placement.ask(Release(name), timeout=TIMEOUT)
        placement.stop(timeout=TIMEOUT)
        planner.stop(timeout=TIMEOUT)
        with contextlib.suppress(Exception):
            remove_placement_group(holder)


class FlakyCheckpoints(MemoryCheckpoints):
    """A record store whose next write fails (as a GCS hiccup would), once."""

    fail_next = False

    def save(self, key: str, value: bytes) -> None:
        if self.fail_next:
            self.fail_next = False
            msg = "the record store did not answer (injected)"
            raise BackendError(msg, operation="write checkpoint")
        super().save(key, value)


class Told(pykka.ThreadingActor):
    """Keeps every message it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def on_receive(self, message: Any) -> None:
        self.seen.append(message)

    def count(self, kind: type) -> int:
        return sum(isinstance(m, kind) for m in self.seen)


def test_an_adopted_group_that_fails_on_its_first_bundle_is_failed_once_and_leaves_no_record(
    ray_nodes: dict[str, str],
) -> None:
    both = tuple(
        NodeAssignment(replica_index=0, node=ray_nodes[n], gpus=(0,)) for n in ("gpu-a", "gpu-b")
    )
    store = FlakyCheckpoints()
    earlier = PlanningActor.start(backend=on_ray.RayBackend(), checkpoints=store)
    placed = earlier.ask(
        PlanReplica(deployment="adopted", replica_index=0, assignments=both), timeout=TIMEOUT
    )
    assert isinstance(placed, ReplicaPlacement)
    assert all(b.port.get(timeout=TIMEOUT) > 0 for b in placed.bundles)
    earlier.stop(timeout=TIMEOUT)  # as a service that stopped: its group stays on Ray
    (record,) = (decode(v, GroupCheckpoint) for v in store.load("").values())
    told = Told.start()
    later = PlanningActor.start(backend=on_ray.RayBackend(), checkpoints=store)
    try:
        store.fail_next = True  # the first bundle's endpoint cannot be written down again
        again = later.ask(
            PlanReplica(
                deployment="adopted", replica_index=0, assignments=both, notify=told, adopt=record
            ),
            timeout=TIMEOUT,
        )
        assert isinstance(again, ReplicaPlacement)
        for bundle in again.bundles:
            with pytest.raises(BackendError, match="could not write"):
                bundle.port.get(timeout=TIMEOUT)
        later.ask(GetReplicaGroups(), timeout=TIMEOUT)  # every event before this was handled
        assert told.proxy().count(ReplicaFailed).get(timeout=TIMEOUT) == 1  # failed once
        assert store.load("") == {}  # no record of a group that is gone
        assert status(group_name("adopted", 0)) is GroupStatus.REMOVED
    finally:
        later.ask(RemoveReplicaGroups("adopted"), timeout=TIMEOUT)
        later.stop(timeout=TIMEOUT)
        told.stop()


def test_a_lost_replica_whose_group_ray_will_not_remove_keeps_its_gpus_until_ray_does(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    with served(backend) as service:
        placed = service.place(llama("halves", gpus=8), gpu_nodes=(a, b))  # 4 + 4
        assert placed.replicas[0].master.port.get(timeout=TIMEOUT) > 0
        backend.refuse_remove = 2  # when the loss is told, and when it is tried again
        service.placement.ask(NodeLost(node_id=a), timeout=TIMEOUT)  # as the watcher tells it
        # Ray first: the group stands, so its GPUs on gpu-b stay held and the replica stays.
        assert len(service.view().node(b).held) == 4
        assert status(group_name("halves", 0)) is GroupStatus.CREATED
        # The next message carries the loss out: the group goes, gpu-b's GPUs come back.
        assert backend.refuse_remove == 0
        found = service.placement.ask(GetPlacement("halves"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.missing == (0,)  # 8 GPUs no longer fit gpu-b alone: degraded
        assert service.view().node(b).held == ()
        assert status(group_name("halves", 0)) is GroupStatus.REMOVED


def test_a_lost_replica_whose_group_then_failed_is_placed_again_once_and_left_running(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    told = Told.start()
    with served(backend) as service:
        service.placement.ask(Subscribe(told), timeout=TIMEOUT)
        placed = service.place(llama("lost-then-failed"), gpu_nodes=(a, b))
        (replica,) = placed.replicas
        assert replica.master.port.get(timeout=TIMEOUT) > 0
        source, _ = other_of(placed, (a, b))
        backend.refuse_remove = 1_000  # Ray is out for a while
        service.placement.ask(NodeLost(node_id=source), timeout=TIMEOUT)  # the loss waits
        failed = ReplicaFailed(
            deployment="lost-then-failed",
            replica_index=0,
            group_name=replica.group_name,
            attempt=replica.attempt,
            error=PlacementError("its group failed"),
            group_removed=False,
        )
        service.placement.ask(failed, timeout=TIMEOUT)  # the same group, seen failed meanwhile
        backend.refuse_remove = 0  # Ray is back: the next message catches up
        again = service.placement.ask(GetPlacement("lost-then-failed"), timeout=TIMEOUT)
        assert isinstance(again, Placement)
        assert again.missing == ()  # placed again, on the other node
        (placed_again,) = again.result.replicas if again.result else ()
        assert placed_again.master.port.get(timeout=TIMEOUT) > 0
        service.placement.ask(GetPlacement("lost-then-failed"), timeout=TIMEOUT)
        kinds = [type(m).__name__ for m in told.proxy().seen.get(timeout=TIMEOUT)]
        assert kinds.count("ReplicaLost") == 0, kinds  # the failure was its end: not lost twice
        now = service.placement.ask(GetPlacement("lost-then-failed"), timeout=TIMEOUT)
        assert isinstance(now, Placement)
        assert now.result is not None
        assert [r.group_id for r in now.result.replicas] == [placed_again.group_id]
    told.stop()


def test_a_deployment_released_while_its_loss_waited_for_ray_is_placed_again_untouched(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    told = Told.start()
    with served(backend) as service:
        service.place(llama("a-stuck"), gpu_nodes=(a,))
        first = service.place(llama("b-again"), gpu_nodes=(a, b))  # best fit: on gpu-a too
        assert {x.node for x in first.assignments} == {a}
        backend.refuse_remove = 1_000
        service.placement.ask(NodeLost(node_id=a), timeout=TIMEOUT)  # both losses wait
        backend.refuse_remove, backend.refuse_remove_of = 0, "a-stuck"  # a-stuck's still waits
        service.placement.ask(Release("b-again"), timeout=TIMEOUT)
        again = service.place(llama("b-again"), gpu_nodes=(b,))  # gpu-a is lost
        (replica,) = again.replicas
        assert replica.master.port.get(timeout=TIMEOUT) > 0
        service.placement.ask(Subscribe(told), timeout=TIMEOUT)
        backend.refuse_remove_of = ""  # Ray is back: the next message carries a-stuck's loss out
        service.placement.ask(GetPlacement("b-again"), timeout=TIMEOUT)
        now = service.placement.ask(GetPlacement("b-again"), timeout=TIMEOUT)
        assert isinstance(now, Placement)
        assert now.result is not None
        assert [r.group_id for r in now.result.replicas] == [replica.group_id]  # left running
        lost = [m for m in told.proxy().seen.get(timeout=TIMEOUT) if isinstance(m, ReplicaLost)]
        assert [m.deployment for m in lost] == ["a-stuck"]
    told.stop()


def test_a_rescheduled_replica_is_placed_off_its_node_and_no_room_is_made_on_that_node(
    ray_nodes: dict[str, str],
) -> None:
    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    with served(on_ray.RayBackend()) as service:
        service.place(llama("pinned", gpus=1), gpu_nodes=(a,))
        both = service.place(
            llama("pair", gpus=2, replicas=2),
            gpu_nodes=(a, b),
            strategy=GpuStrategy.SPREAD,
            keep_whole=True,
            movable=True,
        )
        on = {x.replica_index: x.node for x in both.assignments}
        assert sorted(on.values()) == sorted((a, b))
        (stays,) = (i for i, node in on.items() if node == a)
        (hit,) = (r for r in both.replicas if on[r.replica_index] == b)
        assert hit.master.port.get(timeout=TIMEOUT) > 0
        # Ray reports the group on gpu-b rescheduling: gpu-b is suspect. The lost replica does not
        # fit gpu-a (1 GPU free there), and no replica is moved onto gpu-b to make room: not the
        # pair's own one on gpu-a, which keeps serving.
        service.placement.ask(
            GroupRescheduling(group_name=hit.group_name, group_id=hit.group_id), timeout=TIMEOUT
        )
        found = service.placement.ask(GetPlacement("pair"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.missing == (hit.replica_index,)
        assert found.result is not None
        assert [(x.replica_index, x.node) for x in found.result.assignments] == [(stays, a)]
        assert all(h.deployment != "pair" for h in service.view().node(b).held)


def test_a_replica_whose_loss_waits_for_ray_is_not_moved_by_hand_or_to_make_room(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    with served(backend) as service:
        placed = service.place(llama("losing", gpus=2), gpu_nodes=(a, b), movable=True)
        (replica,) = placed.replicas
        assert replica.master.port.get(timeout=TIMEOUT) > 0
        source, target = other_of(placed, (a, b))
        backend.refuse_remove = 3  # when the rescheduling is told, and at the next two messages
        service.placement.ask(
            GroupRescheduling(group_name=replica.group_name, group_id=replica.group_id),
            timeout=TIMEOUT,
        )
        plan = service.placement.ask(GetDefragmentationPlan(gpus=4), timeout=TIMEOUT)
        assert isinstance(plan, DefragmentationPlan)
        assert all(m.deployment != "losing" for m in plan.moves)  # not offered for a move
        # Its loss waits for Ray: moving it now would have its new group taken for the lost one.
        with pytest.raises(BackendError, match="being lost"):
            service.placement.ask(MoveReplica("losing", 0, target), timeout=TIMEOUT)
        assert backend.refuse_remove == 0
        # The next message carries the loss out, and the replica is placed again off its node.
        found = service.placement.ask(GetPlacement("losing"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.result is not None
        assert [x.node for x in found.result.assignments] == [target]
        assert found.result.replicas[0].master.port.get(timeout=TIMEOUT) > 0
        assert service.view().node(source).held == ()


def failed_unremoved(replica: ReplicaPlacement) -> ReplicaFailed:
    """What the planner tells when ``replica``'s group failed and Ray would not remove it."""
    return ReplicaFailed(
        deployment=replica.deployment,
        replica_index=replica.replica_index,
        group_name=replica.group_name,
        attempt=replica.attempt,
        error=PlacementError("the group failed (injected)"),
        group_removed=False,
    )


def test_a_removal_ray_still_refuses_does_not_keep_freed_gpus_from_a_degraded_deployment(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    a, b = ray_nodes["gpu-a"], ray_nodes["gpu-b"]
    with served(backend) as service:
        first = service.place(llama("stuck-a", gpus=2), gpu_nodes=(a,))
        second = service.place(llama("stuck-b", gpus=2), gpu_nodes=(b,))
        assert all(p.replicas[0].master.port.get(timeout=TIMEOUT) > 0 for p in (first, second))
        backend.refuse_remove = 1_000  # both failed groups stand, for now
        service.placement.tell(failed_unremoved(first.replicas[0]))
        service.placement.tell(failed_unremoved(second.replicas[0]))
        service.view()  # both failures handled; their removals refused
        backend.refuse_remove, backend.refuse_remove_of = 0, "stuck-b"  # stuck-a's goes now
        service.view()
        # stuck-a's GPUs came back while stuck-b's removal was still refused: it is placed again.
        found = service.placement.ask(GetPlacement("stuck-a"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.missing == ()
        assert found.result is not None
        assert found.result.replicas[0].master.port.get(timeout=TIMEOUT) > 0
        assert [h.deployment for h in service.view().node(b).held] == ["stuck-b"] * 2
        # Released whole (by name prefix), its failed group goes too, and its GPUs are counted.
        released = service.placement.ask(Release("stuck-b"), timeout=TIMEOUT)
        assert isinstance(released, Released)
        assert (released.was_placed, released.gpus_freed) == (True, 2)
        assert service.view().node(b).held == ()
        backend.refuse_remove_of = ""


def test_a_batch_of_places_tries_a_refused_removal_again_once_not_once_per_place(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    a = ray_nodes["gpu-a"]
    with served(backend) as service:
        placed = service.place(llama("stuck", gpus=1), gpu_nodes=(a,))
        assert placed.replicas[0].master.port.get(timeout=TIMEOUT) > 0
        backend.refuse_remove = 1_000
        service.placement.tell(failed_unremoved(placed.replicas[0]))
        service.view()  # the failure handled, its removal refused once
        tries = backend.refuse_remove
        batch = PlaceMany(tuple(Place(llama(f"batch-{i}")) for i in range(3)))
        done = service.placement.ask(batch, timeout=TIMEOUT)
        assert isinstance(done, PlacedMany)
        assert all(isinstance(o, PlacementResult) for o in done.outcomes)
        assert tries - backend.refuse_remove == 1
        backend.refuse_remove = 0


def test_a_failed_replicas_held_gpus_follow_a_renumbering_of_its_sibling(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    a = ray_nodes["gpu-a"]
    with served(backend) as service:
        placed = service.place(llama("renumbered", gpus=2, replicas=2), gpu_nodes=(a,))
        zero, one = placed.replicas
        assert [x.gpus for x in placed.assignments] == [(0, 1), (2, 3)]
        backend.refuse_remove = 1_000
        service.placement.tell(failed_unremoved(one))  # (2, 3) stay held for its group
        # Ray says replica 0 got devices 2 and 3: the ledger swaps, and the failed replica's
        # held GPUs must become 0 and 1.
        service.placement.tell(
            BundleGpusKnown(
                deployment="renumbered",
                replica_index=0,
                attempt=zero.attempt,
                node=a,
                gpu_ids=(2, 3),
            )
        )
        service.view()
        backend.refuse_remove = 0  # the next message removes the failed group, frees its GPUs
        found = service.placement.ask(GetPlacement("renumbered"), timeout=TIMEOUT)
        assert isinstance(found, Placement)
        assert found.result is not None
        by_replica = {x.replica_index: x.gpus for x in found.result.assignments}
        assert by_replica[0] == (2, 3)
        assert sorted(o for gpus in by_replica.values() for o in gpus) == [0, 1, 2, 3]
        released = service.placement.ask(Release("renumbered"), timeout=TIMEOUT)
        assert isinstance(released, Released)
        assert released.gpus_freed == 4
        assert service.view().node(a).held == ()


def test_an_undone_place_whose_groups_ray_will_not_remove_keeps_their_gpus_until_it_does(
    ray_nodes: dict[str, str],
) -> None:
    backend = RefusingBackend()
    a = ray_nodes["gpu-a"]
    with served(backend) as service:
        backend.refuse_create_at = 2  # replica 1's group is refused, after replica 0's was made
        backend.refuse_remove = 1_000  # and Ray will not remove replica 0's group, for now
        with pytest.raises(BackendError, match="refused the group"):  # the Place's own error
            service.place(llama("undone", gpus=2, replicas=2), gpu_nodes=(a,))
        assert status(group_name("undone", 0)).is_live
        # Its group stands, so the Place's GPUs stay held; each message tries again, in vain.
        assert [h.deployment for h in service.view().node(a).held] == ["undone"] * 4
        with pytest.raises(BackendError, match="still stand"):  # the same name: not yet
            service.place(llama("undone", gpus=2, replicas=2), gpu_nodes=(a,))
        backend.refuse_remove = 0  # Ray is back
        assert service.view().node(a).held == ()  # the next message removed the group at last
        assert status(group_name("undone", 0)) is GroupStatus.REMOVED
        again = service.place(llama("undone", gpus=2, replicas=2), gpu_nodes=(a,))
        assert len(again.replicas) == 2


class LookupFailsOnce(on_ray.RayBackend):
    """Ray, failing the next look-up of a group by name (as a GCS that times out would)."""

    fail_lookup = False

    def find_group(self, name: str, group_id: str) -> object | None:
        if self.fail_lookup:
            self.fail_lookup = False
            msg = f"cannot look up placement group {name}: GCS timed out (injected)"
            raise BackendError(msg, operation="find placement group")
        return super().find_group(name, group_id)


def a_group_left_by_an_earlier_run(
    assignments: tuple[NodeAssignment, ...],
    deployment: str = "adopted",
    store: MemoryCheckpoints | None = None,
) -> tuple[MemoryCheckpoints, GroupCheckpoint]:
    """A group an earlier planner made and left on Ray (stopped), and its record (in ``store``)."""
    store = MemoryCheckpoints() if store is None else store
    earlier = PlanningActor.start(backend=on_ray.RayBackend(), checkpoints=store)
    placed = earlier.ask(
        PlanReplica(deployment=deployment, replica_index=0, assignments=assignments),
        timeout=TIMEOUT,
    )
    assert isinstance(placed, ReplicaPlacement)
    assert all(b.port.get(timeout=TIMEOUT) > 0 for b in placed.bundles)
    earlier.stop(timeout=TIMEOUT)
    (record,) = (
        decode(v, GroupCheckpoint)
        for k, v in store.load("").items()
        if k.endswith(group_name(deployment, 0))
    )
    return store, record


def test_a_group_whose_adoption_failed_is_removed_so_its_replica_can_be_placed_again(
    ray_nodes: dict[str, str],
) -> None:
    one = (NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(0,)),)
    store, record = a_group_left_by_an_earlier_run(one)
    backend = LookupFailsOnce()
    later = PlanningActor.start(backend=backend, checkpoints=store)
    try:
        backend.fail_lookup = True
        adopt = PlanReplica(deployment="adopted", replica_index=0, assignments=one, adopt=record)
        with pytest.raises(BackendError, match="GCS timed out"):
            later.ask(adopt, timeout=TIMEOUT)
        # The replica is placed again (as the placement actor does): the earlier group, which
        # nobody tracks now, must not keep its GPUs or stand in the way of the new one's name.
        again = later.ask(
            PlanReplica(deployment="adopted", replica_index=0, assignments=one), timeout=TIMEOUT
        )
        assert isinstance(again, ReplicaPlacement)
        assert again.master.port.get(timeout=TIMEOUT) > 0
        assert again.group_id != record.group_id
        assert on_ray.find_group(group_name("adopted", 0), record.group_id) is None
    finally:
        later.ask(RemoveReplicaGroups("adopted"), timeout=TIMEOUT)
        later.stop(timeout=TIMEOUT)


class SlowLookups(on_ray.RayBackend):
    """Ray, answering look-ups of groups only once ``gate`` opens (a GCS slow to answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def find_group(self, name: str, group_id: str) -> object | None:
        assert self.gate.wait(TIMEOUT)
        return super().find_group(name, group_id)


def recovered(
    name: str, record: GroupCheckpoint, assignments: tuple[NodeAssignment, ...]
) -> RecoveredDeployment:
    """A deployment of an earlier run, as a restarted service takes it back: kept whole."""
    node = assignments[0].node
    return RecoveredDeployment(
        checkpoint=DeploymentCheckpoint(
            deployment=llama(name),
            constraints=PlacementConstraints(gpu_nodes=(node,)),
            assignments=assignments,
        ),
        adopted=(AdoptedReplica(replica_index=0, assignments=assignments, group=record),),
    )


def test_a_group_whose_adoption_the_planner_answered_too_late_goes_before_its_replica_is_placed(
    ray_nodes: dict[str, str],
) -> None:
    node = ray_nodes["gpu-a"]
    first = (NodeAssignment(replica_index=0, node=node, gpus=(0,)),)
    second = (NodeAssignment(replica_index=0, node=node, gpus=(1,)),)
    store, late = a_group_left_by_an_earlier_run(first, "answered-late")
    _, kept = a_group_left_by_an_earlier_run(second, "kept", store)
    backend = SlowLookups()
    planner = PlanningActor.start(backend=backend, checkpoints=store)
    threading.Timer(1.5, backend.gate.set).start()  # after the first adoption's 1 s timeout
    placement = DeploymentPlacementActor.start(
        topology=on_ray.get_cluster_topology(),
        planner=planner,
        planner_timeout_s=1.0,
        stops_planner=True,
        recovered=(recovered("answered-late", late, first), recovered("kept", kept, second)),
    )
    try:
        # The late one's GPU was freed (the kept one may have taken it) and it was placed
        # again; the group the planner adopted after the timeout did not stay behind.
        again = placed_again(placement, "answered-late")
        (replica,) = again.replicas
        assert replica.group_id != late.group_id
        assert on_ray.find_group(group_name("answered-late", 0), late.group_id) is None
        assert replica.master.port.get(timeout=TIMEOUT) > 0
        view = placement.ask(GetReplicaGroups(), timeout=TIMEOUT)
        assert isinstance(view, ReplicaGroupsView)
        assert [g.group_name for g in view.groups] == [
            group_name("answered-late", 0),
            group_name("kept", 0),
        ]
        live = on_ray.live_groups()
        assert live[group_name("answered-late", 0)].group_id == replica.group_id
        assert live[group_name("kept", 0)].group_id == kept.group_id
        ledger = placement.ask(GetClusterView(), timeout=TIMEOUT)
        assert isinstance(ledger, ClusterView)
        assert sorted(h.deployment for h in ledger.node(node).held) == ["answered-late", "kept"]
    finally:
        for name in ("answered-late", "kept"):
            placement.ask(Release(name), timeout=TIMEOUT)
        placement.stop(timeout=TIMEOUT)


def placed_again(placement: pykka.ActorRef[Any], name: str) -> PlacementResult:
    """``name``'s result once no replica of it is missing (a stranded group goes first)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        now = placement.ask(GetPlacement(name), timeout=TIMEOUT)
        assert isinstance(now, Placement)
        if now.result is not None and not now.missing:
            return now.result
        assert time.monotonic() < deadline, f"{name} was not placed again: {now}"
        time.sleep(0.1)


class ProbesOffer(on_ray.RayBackend):
    """Ray, whose next probe of a bundle finds ``port`` free first (a port is free by chance)."""

    port = 0

    def probe_bundle(self, group: object, bundle_index: int, **kwargs: Any) -> None:
        callback, port = kwargs["callback"], self.port
        if port and port not in kwargs["exclude_ports"]:
            self.port = 0
            node_ip = on_ray.get_bundle_node_ip(group, bundle_index)  # type: ignore[arg-type]
            threading.Thread(
                target=callback, args=(BundleProbe(node_ip=node_ip, port=port),)
            ).start()
            return
        super().probe_bundle(group, bundle_index, **kwargs)


def test_a_port_recorded_for_a_group_adopted_later_is_not_given_to_one_adopted_first(
    ray_nodes: dict[str, str],
) -> None:
    one = (NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(0,)),)
    two = (NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(1,)),)
    store, first = a_group_left_by_an_earlier_run(one, "first")
    more, second = a_group_left_by_an_earlier_run(two, "second")
    for key, value in more.load("").items():
        store.save(key, value)
    recorded = second.endpoints[0]
    assert recorded is not None
    unrecorded = dataclasses.replace(first, endpoints=(None,))  # its port was never written
    backend = ProbesOffer()
    backend.port = recorded.port  # the second's engine is restarting: its port is free now
    later = PlanningActor.start(backend=backend, checkpoints=store)
    try:
        a = later.ask(
            PlanReplica(deployment="first", replica_index=0, assignments=one, adopt=unrecorded),
            timeout=TIMEOUT,
        )
        assert isinstance(a, ReplicaPlacement)
        a_port = a.master.port.get(timeout=TIMEOUT)  # probed before the second is adopted
        b = later.ask(
            PlanReplica(deployment="second", replica_index=0, assignments=two, adopt=second),
            timeout=TIMEOUT,
        )
        assert isinstance(b, ReplicaPlacement)
        assert b.master.port.get(timeout=TIMEOUT) == recorded.port
        assert a_port != recorded.port
    finally:
        for name in ("first", "second"):
            later.ask(RemoveReplicaGroups(name), timeout=TIMEOUT)
        later.stop(timeout=TIMEOUT)


class SecondBundleFails(RefusingBackend):
    """Ray, whose probes find ``port`` on bundle 0 and fail on bundle 1 (a moment later)."""

    port = 0

    def probe_bundle(self, group: object, bundle_index: int, **kwargs: Any) -> None:
        callback = kwargs["callback"]
        if bundle_index == 1:
            error = BackendError("the probe failed (injected)", operation="probe bundle")
            threading.Timer(0.5, callback, args=(error,)).start()
            return
        if self.port and self.port not in kwargs["exclude_ports"]:
            node_ip = on_ray.get_bundle_node_ip(group, bundle_index)  # type: ignore[arg-type]
            answer = BundleProbe(node_ip=node_ip, port=self.port)
            threading.Thread(target=callback, args=(answer,)).start()
            return
        super().probe_bundle(group, bundle_index, **kwargs)


def test_a_failed_group_that_ray_will_not_remove_keeps_the_ports_it_was_told(
    ray_nodes: dict[str, str],
) -> None:
    halves = tuple(
        NodeAssignment(replica_index=0, node=ray_nodes[n], gpus=(0,)) for n in ("gpu-a", "gpu-b")
    )
    one = (NodeAssignment(replica_index=0, node=ray_nodes["gpu-a"], gpus=(1,)),)
    backend = SecondBundleFails()
    backend.port = 40123
    backend.refuse_remove_of = "halves"
    planner = PlanningActor.start(backend=backend)
    try:
        placed = planner.ask(
            PlanReplica(deployment="halves", replica_index=0, assignments=halves), timeout=TIMEOUT
        )
        assert isinstance(placed, ReplicaPlacement)
        assert placed.master.port.get(timeout=TIMEOUT) == 40123  # rank 0 may listen on it now
        with pytest.raises(BackendError, match="injected"):
            placed.bundles[1].port.get(timeout=TIMEOUT)
        assert status(group_name("halves", 0)) is GroupStatus.CREATED  # Ray would not remove it
        other = planner.ask(
            PlanReplica(deployment="other", replica_index=0, assignments=one), timeout=TIMEOUT
        )
        assert isinstance(other, ReplicaPlacement)
        assert other.master.port.get(timeout=TIMEOUT) != 40123  # the same host: not given twice
        backend.refuse_remove_of = ""
        planner.ask(RemoveReplicaGroups("other"), timeout=TIMEOUT)  # the failed group goes too
        assert status(group_name("halves", 0)) is GroupStatus.REMOVED
    finally:
        backend.refuse_remove_of = ""
        for name in ("halves", "other"):
            planner.ask(RemoveReplicaGroups(name), timeout=TIMEOUT)
        planner.stop(timeout=TIMEOUT)


def test_the_groups_of_a_placed_deployment_are_not_removed_behind_the_ledger(
    service: Service, ray_nodes: dict[str, str]
) -> None:
    placed = service.place(llama("kept-whole"), gpu_nodes=(ray_nodes["gpu-a"],))
    assert placed.replicas[0].master.port.get(timeout=TIMEOUT) > 0
    for message in (RemoveReplicaGroups("kept-whole"), RemoveReplicaGroups("kept-whole", (0,))):
        with pytest.raises(InvalidSpecError, match="Release"):
            service.placement.ask(message, timeout=TIMEOUT)
    assert status(group_name("kept-whole", 0)) is GroupStatus.CREATED  # still there, as held
    removed = service.placement.ask(RemoveReplicaGroups("never-placed"), timeout=TIMEOUT)
    assert isinstance(removed, ReplicaGroupsRemoved)  # a name no placed deployment holds: asked
    assert removed.removed == 0
