"""The cluster watcher's rounds, on readings a test hands it (no Ray cluster needed)."""

import contextlib
import copy
from collections.abc import Callable

import pytest

from placement_actors.backends import ray as on_ray
from placement_actors.domain.topology import NodeTopology


def test_a_joined_node_the_service_cannot_take_in_hides_no_other_change() -> None:
    old, odd = "o" * 56, "d" * 56
    told: list[tuple[str, str]] = []
    watcher = on_ray.ClusterWatcher(
        known=[old],
        on_joined=lambda node, *_: told.append(("joined", node.node_id)),
        on_lost=lambda node_id: told.append(("lost", node_id)),
        on_rescheduling=lambda name, _: told.append(("rescheduling", name)),
        nodes=lambda: {odd: {"NodeID": odd, "Alive": True, "Resources": {"GPU": 10.0**6}}},
        rescheduling=lambda: {"g1": "placement-actors:d:r0"},
    )
    for _ in range(3):  # the odd node (a million GPUs) is refused each round, told once
        watcher.poll()
    assert told == [("lost", old), ("rescheduling", "placement-actors:d:r0")]


class Readings:
    """GPUs in use as a watcher reads them, one reading per poll, on a clock the test moves."""

    def __init__(self, *readings: on_ray.GpuUse, lag: float = 0.0) -> None:
        self.readings = list(readings)
        self.now = 0.0
        self.lag = lag  # how long Ray's tables take to read

    def read(self, nodes: object) -> on_ray.GpuUse:
        del nodes
        self.now = round(self.now + self.lag, 2)
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


Told = tuple[on_ray.GpuUse, frozenset[str]]


def watching(
    readings: Readings,
    told: list[Told],
    report: Callable[[on_ray.GpuUse, frozenset[str], float], None] | None = None,
    alive: tuple[str, ...] = (),
) -> on_ray.ClusterWatcher:
    return on_ray.ClusterWatcher(
        known=alive,
        on_joined=lambda *_: None,
        on_lost=lambda _: None,
        on_rescheduling=lambda *_: None,
        nodes=lambda: {node: {"NodeID": node} for node in alive},
        rescheduling=dict,
        on_gpu_use=report or (lambda use, unsettled, _began: told.append((use, unsettled))),
        gpu_use=readings.read,
        settle_s=0.5,
        clock=lambda: readings.now,
    )


def poll(watcher: on_ray.ClusterWatcher, readings: Readings, told: list[Told], n: int) -> list[int]:
    """Poll ``n`` times, 0.25 s apart; how many reports there were after each poll."""
    steps = []
    for _ in range(n):
        watcher.poll()
        steps.append(len(told))
        readings.now += 0.25
    return steps


def test_gpus_in_use_are_reported_once_a_reading_has_settled_and_once_per_change() -> None:
    taken: on_ray.GpuUse = ({"n": 2}, {})
    mine: on_ray.GpuUse = ({"n": 2}, {"placement-actors:d:r0": {"n": 2}})
    lagging: on_ray.GpuUse = ({"n": 2}, {})  # the group is gone, its GPUs not yet given back
    readings = Readings(taken, taken, taken, taken, mine, lagging, ({}, {}), ({}, {}), ({}, {}))
    told: list[Told] = []
    steps = poll(watching(readings, told), readings, told, 9)
    # n unsettled at first (told so), settled at 0.5; moving from 1.0; empty and settled at 2.0.
    assert steps == [1, 1, 2, 2, 3, 3, 3, 3, 4]
    assert told == [
        (({}, {}), frozenset({"n"})),
        ((taken), frozenset()),
        (({}, {}), frozenset({"n"})),
        (({}, {}), frozenset()),
    ]


def test_a_node_whose_tasks_come_and_go_does_not_hold_up_the_others_readings() -> None:
    readings = Readings(*(({"a": 3, "z": 1 + i % 2}, {}) for i in range(40)))
    told: list[Told] = []
    poll(watching(readings, told), readings, told, 40)
    assert told[-1] == (({"a": 3}, {}), frozenset({"z"}))


def test_a_node_with_nothing_in_use_at_the_first_reading_is_unsettled_for_a_while_too() -> None:
    readings = Readings(({}, {}))  # Ray's free resources left the node out for a moment
    told: list[Told] = []
    steps = poll(watching(readings, told, alive=("a",)), readings, told, 6)
    assert steps == [1, 1, 2, 2, 2, 2]
    assert told == [(({}, {}), frozenset({"a"})), (({}, {}), frozenset())]


def test_a_report_that_fails_is_not_made_again_for_the_same_reading() -> None:
    readings = Readings(({"a": 3}, {}))
    calls = []

    def fail(use: on_ray.GpuUse, unsettled: frozenset[str], began: float) -> None:
        del began
        calls.append((use, unsettled))
        msg = "the service cannot take it (injected)"
        raise RuntimeError(msg)

    watcher = watching(readings, [], fail)
    for _ in range(6):
        with contextlib.suppress(RuntimeError):
            watcher.poll()
        readings.now += 0.25
    assert calls == [(({}, {}), frozenset({"a"})), (({"a": 3}, {}), frozenset())]


def test_a_report_says_when_its_reading_began_before_ray_was_read() -> None:
    readings = Readings(({"a": 1}, {}), lag=0.1)
    began: list[float] = []
    watcher = watching(readings, [], lambda _use, _unsettled, at: began.append(at))
    for _ in range(5):
        readings.now = round(readings.now + 0.25, 2)
        watcher.poll()
    # Polls began at 0.25, 0.6, 0.95, 1.3, 1.65; reports at the first (unsettled) and at 0.95.
    assert began == [0.25, 0.95]


def test_a_watcher_given_no_listener_for_gpus_in_use_never_reads_them() -> None:
    def refuse(nodes: object) -> on_ray.GpuUse:
        msg = f"read {nodes!r:.20} although nobody listens"
        raise AssertionError(msg)

    watcher = on_ray.ClusterWatcher(
        known=[],
        on_joined=lambda *_: None,
        on_lost=lambda _: None,
        on_rescheduling=lambda *_: None,
        nodes=dict,
        rescheduling=dict,
        gpu_use=refuse,
    )
    watcher.poll()


def test_a_settled_reading_is_reported_again_after_a_while_even_unchanged() -> None:
    readings = Readings(({"a": 2}, {}))
    told: list[Told] = []
    watcher = watching(readings, told)
    steps = poll(watcher, readings, told, int(on_ray.RESEND_S / 0.25) + 4)
    assert steps[:4] == [1, 1, 2, 2]  # unsettled, then settled at 0.5 s
    assert steps[-1] == 3  # and once more, RESEND_S after that
    assert told[1] == told[2] == (({"a": 2}, {}), frozenset())


class RayTables:
    """Ray's free resources and group table as a watcher reads them, counting table reads."""

    GROUP = "placement-actors:d:r0"

    def __init__(self, *nodes: str) -> None:
        self.free: dict[str, dict[str, float]] = {n: {"GPU": 8.0, "CPU": 4.0} for n in nodes}
        self.table: list[dict[str, object]] = []
        self.reads = 0
        self.fail = False  # Ray does not answer
        self.fail_table = False  # Ray does not answer for its group table

    def read_free(self) -> dict[str, dict[str, float]]:
        if self.fail:
            msg = "the GCS did not answer (injected)"
            raise RuntimeError(msg)
        return {node: dict(free) for node, free in self.free.items()}

    def read_table(self) -> list[dict[str, object]]:
        self.reads += 1
        if self.fail or self.fail_table:
            msg = "the GCS did not answer (injected)"
            raise RuntimeError(msg)
        return copy.deepcopy(self.table)  # what changes later is not seen without a read

    def place(self, node: str, gpus: int, state: str = "CREATED") -> None:
        """The service's group takes ``gpus`` of ``node``: a bundle there, its GPUs gone."""
        group_id = "ab" * 14
        self.table = [
            {
                "placement_group_id": group_id,
                "name": self.GROUP,
                "state": state,
                "bundles": {0: {"GPU": float(gpus)}},
                "bundles_to_node_id": {0: node},
            }
        ]
        self.free[node]["GPU"] -= gpus
        self.free[node][f"bundle_group_0_{group_id}"] = 1000.0
        self.free[node][f"bundle_group_{group_id}"] = 1000.0


def watching_ray(
    ray: RayTables,
    clock: list[float],
    alive: list[str],
    *,
    on_rescheduling: Callable[[str, str], None] = lambda *_: None,
    on_gpu_use: Callable[[on_ray.GpuUse, frozenset[str], float], None] | None = None,
) -> on_ray.ClusterWatcher:
    return on_ray.ClusterWatcher(
        known=list(alive),
        on_joined=lambda *_: None,
        on_lost=lambda _: None,
        on_rescheduling=on_rescheduling,
        nodes=lambda: {n: {"NodeID": n, "Resources": {"GPU": 8.0}} for n in alive},
        on_gpu_use=on_gpu_use or (lambda *_: None),
        free=ray.read_free,
        table=ray.read_table,
        clock=lambda: clock[0],
    )


def test_rays_group_table_is_read_again_only_once_the_bundles_or_free_gpus_of_a_node_move() -> None:
    ray, clock = RayTables("a", "b"), [0.0]
    watcher = watching_ray(ray, clock, ["a", "b"])
    reads = []

    def round_(then: Callable[[], object] = lambda: None) -> None:
        then()
        watcher.poll()
        reads.append(ray.reads)
        clock[0] += 0.25

    round_()
    round_()
    round_(lambda: ray.free["a"].update(CPU=1.0, memory=2.0**30))  # tasks come and go
    round_(lambda: ray.place("b", 2))  # a group is placed on b
    round_()
    round_(lambda: ray.free["b"].update({f"bundle_group_{'ab' * 14}": 999.999}))  # a task in it
    round_(lambda: ray.free["a"].update(GPU=7.0))  # a task outside any group takes a GPU of a
    round_()
    round_(lambda: ray.free["a"].update({"bundle_group_0_" + "cd" * 14: 1000.0}))  # no GPU
    round_()
    assert reads == [1, 1, 1, 2, 2, 2, 3, 3, 4, 4]


def test_rays_group_table_is_read_again_every_resend_s_even_when_nothing_moved() -> None:
    ray, clock = RayTables("a"), [0.0]
    watcher = watching_ray(ray, clock, ["a"])
    for _ in range(int(2 * on_ray.RESEND_S / 0.25) + 1):
        watcher.poll()
        clock[0] += 0.25
    assert ray.reads == 3  # at 0, RESEND_S and twice that


def test_a_group_ray_reschedules_a_little_after_its_node_is_lost_is_still_reported() -> None:
    ray, clock, alive = RayTables("a", "b"), [0.0], ["a", "b"]
    ray.place("b", 2)
    moving: list[str] = []
    watcher = watching_ray(ray, clock, alive, on_rescheduling=lambda name, _: moving.append(name))
    watcher.poll()
    alive.remove("b")  # b is dead; Ray marks the group rescheduling a moment later
    del ray.free["b"]
    for round_ in range(int(on_ray.LOSS_WATCH_S / 0.25) + 4):
        clock[0] += 0.25
        if round_ == 3:
            ray.table = [{**ray.table[0], "state": "RESCHEDULING"}]
        watcher.poll()
    assert moving == [RayTables.GROUP]
    # Read every round while the loss is fresh (from the round that saw it), then no more.
    assert ray.reads == 1 + int(on_ray.LOSS_WATCH_S / 0.25)


def test_a_reading_made_with_a_table_kept_from_an_earlier_round_bears_that_rounds_time() -> None:
    ray, clock = RayTables("a"), [0.0]
    ray.place("a", 3)
    stamps: list[tuple[float, on_ray.GpuUse]] = []
    watcher = watching_ray(
        ray, clock, ["a"], on_gpu_use=lambda use, _, at: stamps.append((at, use))
    )
    for _ in range(4):
        watcher.poll()
        clock[0] += 0.25
    # Unsettled at 0; settled at 0.5 with the table read at 0: the GPUs are the group's.
    assert stamps == [
        (0.0, ({}, {})),
        (0.0, ({"a": 3}, {RayTables.GROUP: {"a": 3}})),
    ]
    assert ray.reads == 1


def test_a_table_that_could_not_be_read_is_read_again_the_next_round() -> None:
    ray, clock = RayTables("a"), [0.0]
    watcher = watching_ray(ray, clock, ["a"])
    ray.fail_table = True
    with contextlib.suppress(RuntimeError):
        watcher.poll()
    ray.fail_table = False
    clock[0] += 0.25
    watcher.poll()
    clock[0] += 0.25
    watcher.poll()
    assert ray.reads == 2


def test_a_reading_made_after_the_bundles_moved_bears_the_time_of_the_round_that_read_again() -> (
    None
):
    ray, clock = RayTables("a", "b"), [0.0]
    stamps: list[float] = []
    watcher = watching_ray(ray, clock, ["a", "b"], on_gpu_use=lambda _u, _n, at: stamps.append(at))
    for round_ in range(8):
        if round_ == 3:
            ray.place("b", 1)
        watcher.poll()
        clock[0] += 0.25
    # Unsettled at 0, settled at 0.5 (table of 0); b moved at 0.75 (told unsettled) and settled
    # at 1.25: both with the table read at 0.75.
    assert stamps == [0.0, 0.0, 0.75, 0.75]


def test_a_loss_seen_in_a_round_where_ray_did_not_answer_is_still_watched_for_a_while() -> None:
    ray, clock, alive = RayTables("a", "b"), [0.0], ["a", "b"]
    ray.place("b", 2)
    moving: list[str] = []
    watcher = watching_ray(ray, clock, alive, on_rescheduling=lambda name, _: moving.append(name))
    watcher.poll()
    alive.remove("b")
    del ray.free["b"]
    ray.fail = True  # the round that sees the loss reads nothing more of Ray
    with contextlib.suppress(RuntimeError):
        watcher.poll()
    ray.fail = False
    for round_ in range(int(on_ray.LOSS_WATCH_S / 0.25) - 1):
        clock[0] += 0.25
        if round_ == 2:
            ray.table = [{**ray.table[0], "state": "RESCHEDULING"}]
        watcher.poll()
    assert moving == [RayTables.GROUP]  # seen within LOSS_WATCH_S, not RESEND_S, of the loss


class Joining:
    """A cluster whose nodes the test adds and removes, watched with GPUs in use followed."""

    def __init__(self, readings: Readings) -> None:
        self.nodes: dict[str, dict[str, object]] = {}
        self.told: list[tuple[str, str, int]] = []
        self.readings = readings
        self.refusals = 0  # how many joins the service fails to take in before it takes them
        self.watcher = on_ray.ClusterWatcher(
            known=(),
            on_joined=self.joined,
            on_lost=lambda node_id: self.told.append(("lost", node_id, 0)),
            on_rescheduling=lambda *_: None,
            nodes=lambda: self.nodes,
            rescheduling=dict,
            on_gpu_use=lambda *_: None,
            gpu_use=readings.read,
            settle_s=0.5,
            clock=lambda: readings.now,
        )

    def joined(self, node: NodeTopology, egress: bool, in_use: int) -> None:  # noqa: FBT001 - as the watcher calls it
        del egress
        if self.refusals:
            self.refusals -= 1
            msg = "the service cannot take it in (injected)"
            raise RuntimeError(msg)
        self.told.append(("joined", node.node_id, in_use))

    def add(self, node_id: str, gpus: int) -> None:
        self.nodes[node_id] = {"NodeID": node_id, "Resources": {"GPU": float(gpus)}}

    def poll(self, n: int) -> list[int]:
        """Poll ``n`` times, 0.25 s apart; how many nodes were told of after each poll.

        A round that fails (as the watcher's thread would log it) is taken as polled.
        """
        steps = []
        for _ in range(n):
            with contextlib.suppress(RuntimeError):
                self.watcher.poll()
            steps.append(len(self.told))
            self.readings.now += 0.25
        return steps


def test_a_gpu_node_that_joins_is_told_once_its_reading_settled_with_its_gpus_in_use() -> None:
    # Another user's work that waited for room lands on the new node a moment after it joined.
    cluster = Joining(Readings(({}, {}), ({"new": 3}, {})))
    cluster.add("new", 8)
    assert cluster.poll(5) == [0, 0, 0, 1, 1]  # 3 in use from 0.25 s, settled at 0.75 s
    assert cluster.told == [("joined", "new", 3)]


def test_a_node_without_gpus_is_told_at_once_and_one_gone_before_it_settled_is_never_told() -> None:
    cluster = Joining(Readings(({}, {})))
    cluster.add("cpu", 0)
    cluster.add("brief", 4)
    assert cluster.poll(1) == [1]
    del cluster.nodes["brief"]
    cluster.poll(1)
    cluster.add("brief", 4)  # back at 0.5 s: a new wait for its reading to settle
    assert cluster.poll(3) == [1, 1, 2]
    assert cluster.told == [("joined", "cpu", 0), ("joined", "brief", 0)]


def test_a_join_the_service_failed_to_take_in_is_told_again_the_next_round() -> None:
    cluster = Joining(Readings(({}, {}), ({"new": 3}, {})))
    cluster.refusals = 1
    cluster.add("new", 8)
    assert cluster.poll(5) == [0, 0, 0, 0, 1]  # settled at 0.75 s, refused; told at 1 s
    assert cluster.told == [("joined", "new", 3)]


def test_a_gpu_node_that_joins_while_ray_cannot_be_read_is_told_after_a_wait_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    readings = Readings(({"new": 2}, {}))
    cluster = Joining(readings)
    read = readings.read
    calls = 0

    def failing_after_one(nodes: object) -> on_ray.GpuUse:
        nonlocal calls
        calls += 1
        if calls > 1:
            msg = "Ray does not answer (injected)"
            raise RuntimeError(msg)
        return read(nodes)

    cluster.watcher._gpu_use = failing_after_one
    cluster.add("new", 8)
    steps = cluster.poll(6)
    assert steps.index(1) * 0.25 == on_ray.JOIN_WAIT_S
    assert cluster.told == [("joined", "new", 2)]  # the most read before Ray stopped answering
    assert "cannot be read" in caplog.text


def test_a_node_whose_reading_keeps_moving_is_told_after_a_wait_with_the_most_it_showed() -> None:
    # One to three GPUs in use, changing every round: the reading never settles.
    cluster = Joining(Readings(*(({"busy": 1 + i % 3}, {}) for i in range(12))))
    cluster.add("busy", 4)
    steps = cluster.poll(8)
    told_at = steps.index(1) * 0.25
    assert told_at == on_ray.JOIN_WAIT_S
    assert cluster.told == [("joined", "busy", 3)]


def test_without_gpus_in_use_followed_a_node_that_joins_is_told_at_once_with_none_in_use() -> None:
    told: list[tuple[str, int]] = []
    watcher = on_ray.ClusterWatcher(
        known=(),
        on_joined=lambda node, _egress, in_use: told.append((node.node_id, in_use)),
        on_lost=lambda _: None,
        on_rescheduling=lambda *_: None,
        nodes=lambda: {"g": {"NodeID": "g", "Resources": {"GPU": 4.0}}},
        rescheduling=dict,
    )
    watcher.poll()
    assert told == [("g", 0)]


class LostLease:
    """A lease as `keep` finds it: by default, another service took it (`lost_to` says who)."""

    def __init__(
        self, *, held: bool = False, lost_to: str | None = "a driver (pid 1, job 02000000)"
    ) -> None:
        self.looks = 0
        self.held = held
        self.lost_to = lost_to

    def keep(self) -> bool:
        self.looks += 1
        return self.held


def looked_at(lease: LostLease) -> list[str]:
    """What the watcher tells of ``lease`` over three looks, `RESEND_S` apart."""
    now = [0.0]
    told: list[str] = []
    watcher = on_ray.ClusterWatcher(
        known=(),
        on_joined=lambda *_: None,
        on_lost=lambda _: None,
        on_rescheduling=lambda *_: None,
        nodes=dict,
        rescheduling=dict,
        lease=lease,  # type: ignore[arg-type]
        on_lease_lost=told.append,
        clock=lambda: now[0],
    )
    for _ in range(3):
        watcher.poll()
        now[0] += on_ray.RESEND_S
    assert lease.looks == 3
    return told


def test_a_lease_another_service_took_is_told_once_however_often_the_watcher_looks() -> None:
    assert looked_at(LostLease()) == ["a driver (pid 1, job 02000000)"]


def test_a_lease_released_or_taken_back_is_not_told_as_taken() -> None:
    assert looked_at(LostLease(lost_to=None)) == []  # released: the service stops anyway
    assert looked_at(LostLease(held=True)) == []  # taken back since: held
