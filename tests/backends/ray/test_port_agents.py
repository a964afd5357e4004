"""Each node's port agent on a real local Ray cluster: on its node, one per node, free ports."""

import socket
import threading
from typing import Any

import pytest
import ray

from placement_actors import BackendError
from placement_actors.backends import ray as on_ray
from placement_actors.backends.protocol import BundleProbe

pytestmark = pytest.mark.usefixtures("ray_nodes")
TIMEOUT = 60


def ask_agent(node: str, exclude: frozenset[int] = frozenset()) -> BundleProbe:
    """One probe through ``node``'s agent, waited for."""
    answers: list[BundleProbe | BaseException] = []
    done = threading.Event()

    def callback(outcome: BundleProbe | BaseException) -> None:
        answers.append(outcome)
        done.set()

    on_ray.probe_with_agent(node, exclude_ports=exclude, callback=callback)
    assert done.wait(TIMEOUT)
    (answer,) = answers
    assert isinstance(answer, BundleProbe), answer
    return answer


@pytest.mark.parametrize("name", ["gpu-a", "gpu-c"])
def test_an_agent_runs_on_its_node_and_gives_a_port_free_on_the_nodes_address(
    name: str, ray_nodes: dict[str, str]
) -> None:
    node = ray_nodes[name]
    answer = ask_agent(node)
    records = {n["NodeID"]: n for n in ray.nodes()}  # type: ignore[no-untyped-call]
    assert answer.node_ip == records[node]["NodeManagerAddress"]
    assert answer.gpu_ids == ()  # the agent is not in a bundle: it knows no GPU ids
    assert answer.port not in on_ray.RAY_WORKER_PORTS
    with socket.socket() as sock:
        sock.bind((answer.node_ip, answer.port))
    agent: Any = ray.get_actor(on_ray.AGENT_NAME_ROOT + node)
    where: Any = ray.get(agent.node_id.remote(), timeout=TIMEOUT)
    assert where == node


def test_one_agent_per_node_serves_every_probe(ray_nodes: dict[str, str]) -> None:
    node = ray_nodes["gpu-b"]
    assert on_ray.port_agent(node) is on_ray.port_agent(node)
    ask_agent(node)
    agent_id = ray.get_actor(on_ray.AGENT_NAME_ROOT + node)._actor_id
    ask_agent(node)
    assert ray.get_actor(on_ray.AGENT_NAME_ROOT + node)._actor_id == agent_id


def test_a_port_named_as_given_is_never_given_again(ray_nodes: dict[str, str]) -> None:
    node = ray_nodes["gpu-a"]
    given: set[int] = set()
    for _ in range(20):
        port = ask_agent(node, frozenset(given)).port
        assert port not in given
        given.add(port)


def test_an_agent_that_cannot_be_placed_fails_the_probe_instead_of_hanging() -> None:
    answers: list[object] = []
    done = threading.Event()

    def callback(outcome: object) -> None:
        answers.append(outcome)
        done.set()

    on_ray.probe_with_agent("f" * 56, exclude_ports=frozenset(), callback=callback)
    assert done.wait(TIMEOUT)
    (answer,) = answers
    assert isinstance(answer, BackendError)


def test_a_dead_agent_is_replaced_and_its_bundle_probed_with_a_task_meanwhile(
    ray_nodes: dict[str, str],
) -> None:
    from ray.util import remove_placement_group  # noqa: PLC0415

    from placement_actors import NodeAssignment  # noqa: PLC0415
    from placement_actors.policies.bundle_shapes import pinned_bundle_spec  # noqa: PLC0415

    node = ray_nodes["gpu-b"]
    ask_agent(node)  # the agent runs
    dead = on_ray.port_agent(node)
    ray.kill(dead)
    spec = pinned_bundle_spec([NodeAssignment(replica_index=0, node=node, gpus=(0,))])
    pg = on_ray.build_replica_pg(spec, name="t-dead-agent", ready_timeout_s=20)
    try:
        answers: list[object] = []
        done = threading.Event()

        def callback(outcome: object) -> None:
            answers.append(outcome)
            done.set()

        on_ray.RayBackend().probe_bundle(
            pg, 0, exclude_ports=frozenset(), callback=callback, node=node
        )
        assert done.wait(TIMEOUT)
        (answer,) = answers
        assert isinstance(answer, BundleProbe), answer  # from a task in the bundle
        assert answer.port > 0
        assert on_ray.port_agent(node) is not dead  # the next call starts a new agent
        ask_agent(node)
    finally:
        remove_placement_group(pg)


def test_a_forgotten_agent_is_looked_up_again_and_still_serves(ray_nodes: dict[str, str]) -> None:
    node = ray_nodes["gpu-c"]
    kept = on_ray.port_agent(node)
    ask_agent(node)
    on_ray.forget_port_agent(node)  # as when its node is lost
    again = on_ray.port_agent(node)
    assert again is not kept  # a new handle: the process no longer keeps the old one
    assert again._actor_id == kept._actor_id  # the node's agent still runs: the same one serves
    ask_agent(node)
    on_ray.forget_port_agent("f" * 56)  # a node never seen: nothing to forget
