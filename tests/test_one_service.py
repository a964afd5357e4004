"""One service per namespace: a second is refused while the first runs (real Ray test cluster).

Two services in one namespace would take each other's deployments (the same records, each
reaping the groups the other has no record of) and hand out the same ports. The running service
holds a lease on Ray that its process owns; these tests start services in this driver and as
service hosts, and check who is refused, that nothing the first placed is touched, and that the
namespace is free again once the first stops.
"""

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from placement_actors import (
    BackendError,
    ClusterView,
    Deployment,
    DeploymentPlacementActor,
    GetClusterView,
    InvalidSpecError,
    Place,
    PlacementConstraints,
    PlacementResult,
    Release,
    ServiceRunningError,
    start_on_ray,
)
from placement_actors.actors.mailbox import why_stopped
from placement_actors.domain.deployments import group_name
from placement_actors.service import PlacementClient

TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("ray_nodes")


def on_ray() -> Any:
    from placement_actors.backends import ray as backend  # noqa: PLC0415 - Ray tests only

    return backend


@pytest.fixture
def services() -> Iterator[list[pykka.ActorRef[DeploymentPlacementActor]]]:
    """Services a test starts in this driver; each still running releases what it holds."""
    started: list[pykka.ActorRef[DeploymentPlacementActor]] = []
    yield started
    for ref in started:
        if ref.is_alive():
            view = ref.ask(GetClusterView(), timeout=TIMEOUT)
            assert isinstance(view, ClusterView)
            for name in view.deployments:
                ref.ask(Release(name), timeout=TIMEOUT)
            ref.stop(timeout=TIMEOUT)


def test_a_second_service_is_refused_while_the_first_runs_and_takes_nothing_of_it(
    services: list[pykka.ActorRef[DeploymentPlacementActor]], ray_nodes: dict[str, str]
) -> None:
    first = start_on_ray(ready_timeout_s=30)
    services.append(first)
    placed = first.ask(
        Place(
            Deployment(name="first-only", model="m", gpus=1),
            PlacementConstraints(gpu_nodes=(ray_nodes["gpu-a"],)),
        ),
        timeout=TIMEOUT,
    )
    assert isinstance(placed, PlacementResult)
    placed.replicas[0].master.port.get(timeout=TIMEOUT)  # its group's record is written by then
    records = sorted(on_ray().GcsCheckpoints().load(""))

    with pytest.raises(ServiceRunningError) as refused:
        start_on_ray(ready_timeout_s=30)

    assert f"pid {os.getpid()}" in refused.value.holder  # this driver's first service holds it
    assert refused.value.namespace == on_ray().NAMESPACE
    assert sorted(on_ray().GcsCheckpoints().load("")) == records  # nothing read was changed
    assert set(on_ray().live_groups()) == {group_name("first-only", 0)}
    view = first.ask(GetClusterView(), timeout=TIMEOUT)  # the first goes on serving
    assert isinstance(view, ClusterView)
    assert set(view.deployments) == {"first-only"}


def test_once_the_first_service_stops_the_next_one_starts_and_takes_its_deployments_back(
    services: list[pykka.ActorRef[DeploymentPlacementActor]], ray_nodes: dict[str, str]
) -> None:
    first = start_on_ray(ready_timeout_s=30)
    services.append(first)
    first.ask(
        Place(
            Deployment(name="handed-on", model="m", gpus=1),
            PlacementConstraints(gpu_nodes=(ray_nodes["gpu-b"],)),
        ),
        timeout=TIMEOUT,
    )
    first.stop(timeout=TIMEOUT)
    assert on_ray().lease_holder() is None

    second = start_on_ray(ready_timeout_s=30)
    services.append(second)
    view = second.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    assert set(view.deployments) == {"handed-on"}


def test_a_service_that_fails_to_start_leaves_the_namespace_free(
    services: list[pykka.ActorRef[DeploymentPlacementActor]],
) -> None:
    with pytest.raises(InvalidSpecError):
        start_on_ray(planner_timeout_s=-1)  # refused after the lease was taken
    assert on_ray().lease_holder() is None
    services.append(start_on_ray(ready_timeout_s=30))


def test_a_service_host_and_a_service_in_a_driver_refuse_each_other(
    services: list[pykka.ActorRef[DeploymentPlacementActor]], ray_cluster: Any
) -> None:
    name = f"one-service-{uuid.uuid4().hex[:8]}"
    client = PlacementClient.serve(ray_cluster.address, name=name)
    try:
        assert f"service host {name!r}" in str(on_ray().lease_holder())
        with pytest.raises(ServiceRunningError, match=name):
            start_on_ray(ready_timeout_s=30)
        with pytest.raises(ServiceRunningError, match=name):
            PlacementClient.serve(ray_cluster.address, name=f"{name}-other")
        again = PlacementClient.serve(ray_cluster.address, name=name)  # the one running: found
        assert isinstance(again.ask(GetClusterView(), timeout=TIMEOUT), ClusterView)
    finally:
        client.stop_service()
    driven = start_on_ray(ready_timeout_s=30)  # waits for Ray to end the killed host's lease
    services.append(driven)
    assert f"pid {os.getpid()}" in str(on_ray().lease_holder())
    with pytest.raises(ServiceRunningError, match=f"pid {os.getpid()}"):
        PlacementClient.serve(ray_cluster.address, name=name)


def test_a_service_host_keeps_the_namespace_while_ray_restarts_it_and_frees_it_when_stopped(
    ray_cluster: Any,
) -> None:
    import ray  # noqa: PLC0415 - to crash the host's process as a failure would

    name = f"one-service-{uuid.uuid4().hex[:8]}"
    client = PlacementClient.serve(ray_cluster.address, name=name)

    def lease_actor() -> str:
        return str(ray.get_actor(on_ray().LEASE_NAME, namespace=on_ray().NAMESPACE)._actor_id)

    try:
        before = lease_actor()
        ray.kill(ray.get_actor(name, namespace=on_ray().NAMESPACE), no_restart=False)
        with pytest.raises(ServiceRunningError, match=name):  # not while it comes back
            start_on_ray(ready_timeout_s=30)
        assert isinstance(client.ask(GetClusterView(), timeout=TIMEOUT), ClusterView)
        assert f"service host {name!r}" in str(on_ray().lease_holder())
        client.restart_service(timeout_s=TIMEOUT)  # once more, waiting until it is back
        assert lease_actor() == before  # the same lease all along: nothing could start between
    finally:
        client.stop_service()
    # Ended with the host (its lease is detached, to outlive a restart), not left to the next.
    assert on_ray().LEASE_NAME not in ray.util.list_named_actors()


def test_a_host_that_loses_a_race_to_start_is_refused_with_the_winner_named(
    ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = on_ray()
    real = backend.lease_holder
    looks = []

    def too_early() -> str | None:  # the first look came before the winner took the lease
        looks.append(1)
        return None if len(looks) == 1 else real()

    monkeypatch.setattr(backend, "lease_holder", too_early)
    won = backend.take_service_lease()
    try:
        with pytest.raises(ServiceRunningError, match=f"pid {os.getpid()}"):
            PlacementClient.serve(ray_cluster.address, name=f"one-service-{uuid.uuid4().hex[:8]}")
    finally:
        won.release()
    assert len(looks) == 2


def lease_actor_id() -> str:
    import ray  # noqa: PLC0415

    return str(ray.get_actor(on_ray().LEASE_NAME, namespace=on_ray().NAMESPACE)._actor_id)


def end_the_lease_from_outside() -> None:
    import ray  # noqa: PLC0415 - as `ray kill` or the dashboard would

    ray.kill(ray.get_actor(on_ray().LEASE_NAME, namespace=on_ray().NAMESPACE))


def test_a_lease_ended_from_outside_is_taken_again_by_the_service_that_runs(
    services: list[pykka.ActorRef[DeploymentPlacementActor]],
) -> None:
    services.append(start_on_ray(ready_timeout_s=30))
    ended = lease_actor_id()
    end_the_lease_from_outside()
    deadline = time.monotonic() + on_ray().RESEND_S + 10
    while on_ray().lease_holder() is None or lease_actor_id() == ended:
        assert time.monotonic() < deadline, "the running service did not take its lease again"
        time.sleep(0.2)
    with pytest.raises(ServiceRunningError, match=f"pid {os.getpid()}"):
        start_on_ray(ready_timeout_s=30)


def test_a_service_whose_lease_another_took_meanwhile_stops_and_leaves_its_deployments_to_it(
    services: list[pykka.ActorRef[DeploymentPlacementActor]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    released = threading.Event()
    release = on_ray().ServiceLease.release

    def watched(lease: Any) -> None:
        release(lease)
        released.set()

    monkeypatch.setattr(on_ray().ServiceLease, "release", watched)
    first = start_on_ray(ready_timeout_s=30)
    services.append(first)
    placed = first.ask(Place(Deployment(name="left-behind", model="m")), timeout=TIMEOUT)
    assert isinstance(placed, PlacementResult)
    with caplog.at_level(logging.ERROR):
        end_the_lease_from_outside()
        other = on_ray().take_service_lease()  # as a second service starting at that moment
        try:
            assert released.wait(on_ray().RESEND_S + 30), "the first service did not stop"
            assert not first.is_alive()
            assert why_stopped(first) == (
                f"this service stepped down: {other.holder} holds the namespace's lease"
            )
            assert lease_actor_id() == str(other._handle._actor_id)  # its stop left it alone
            (group,) = placed.replicas
            assert on_ray().live_groups()[group.group_name].group_id == group.group_id
        finally:
            other.release()
    assert caplog.text.count("two services run") == 1
    assert "this service stops" in caplog.text
    successor = start_on_ray(ready_timeout_s=30)  # as the other would have: nothing was lost
    services.append(successor)
    view = successor.ask(GetClusterView(), timeout=TIMEOUT)
    assert isinstance(view, ClusterView)
    assert view.deployments == ("left-behind",)


def test_a_service_host_whose_lease_another_took_answers_its_clients_that_it_stopped(
    ray_cluster: Any,
) -> None:
    name = f"one-service-{uuid.uuid4().hex[:8]}"
    client = PlacementClient.serve(ray_cluster.address, name=name)
    watched: list[BaseException] = []

    def watch() -> None:
        try:
            for _ in client.watch(after=None, wait_s=60.0, timeout_s=300):
                pass
        except BackendError as exc:
            watched.append(exc)

    follower = threading.Thread(target=watch, daemon=True)
    follower.start()
    try:
        end_the_lease_from_outside()
        other = on_ray().take_service_lease()
        try:
            failed = first_failure(lambda: client.ask(GetClusterView(), timeout=TIMEOUT))
            assert "has stopped: this service stepped down" in str(failed)
            assert other.holder in str(failed)
            # A client following events is told too, within its long poll (of a minute), not
            # when the poll ends, nor left polling for ever.
            follower.join(timeout=20)
            assert [type(e) for e in watched] == [BackendError]
            assert "has stopped" in str(watched[0])
            with pytest.raises(BackendError, match="has stopped"):
                client.last_event(timeout=TIMEOUT)
        finally:
            other.release()
    finally:
        client.stop_service()


def first_failure(call: Any) -> BackendError:
    """The error ``call`` raises once the service has stopped (it is made until then)."""
    deadline = time.monotonic() + on_ray().RESEND_S + 30
    while time.monotonic() < deadline:
        try:
            call()
        except BackendError as exc:
            return exc
        time.sleep(0.2)
    msg = "the service did not stop"
    raise AssertionError(msg)
