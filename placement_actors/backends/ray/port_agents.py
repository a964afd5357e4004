"""One long-lived port agent per node: a bundle's endpoint without a Ray task per bundle.

A bundle pinned to a node (``ray.io/node-id``) is on that node: its IP is the node's. What is
left to find is a free port there, and a new Ray task in the bundle costs a worker process start
(0.6-0.75 s for the first task on a node, a few ms after). A port agent is a Ray actor with
``num_cpus=0``, pinned to its node (hard node affinity), started once per node and kept: asking
it for a port is one actor call. It probes the port exactly as the probe task does (free on the
node's routable address, the wildcard and loopback; outside Ray's worker ports; none of the
ports the caller says are given), and the caller's `PortBook` still decides whether a port is
claimed, so a port is never handed out twice on one host while its holder lives.

Agents are named ``placement-actors-port-agent:<node id>`` in the caller's namespace and are
not detached: they end with the process that started them (the service host, or a driver), and
a new process finds a live one by name. A call to an agent that is gone (its node left) fails as
a failed probe does; the next call starts a new agent.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from placement_actors.backends.protocol import BundleProbe, ProbeCallback
from placement_actors.backends.ray.bundles import port_finder, probe_args
from placement_actors.backends.timers import Deadlines
from placement_actors.domain.errors import BackendError

__all__ = [
    "AGENT_NAME_ROOT",
    "AGENT_TIMEOUT_S",
    "forget_port_agent",
    "port_agent",
    "probe_with_agent",
    "start_port_agents",
]

AGENT_NAME_ROOT = "placement-actors-port-agent:"
"""An agent's actor name: this, then its node's id."""

AGENT_TIMEOUT_S = 10.0
"""How long an agent may take to answer (its first answer includes its start) before it is
forgotten and the probe reported failed (the backend then probes with a task)."""

_AGENTS: dict[str, Any] = {}  # node id -> actor handle, for this process
_LOCK = threading.Lock()
_DEADLINES = Deadlines("port-agent deadlines")


@functools.cache
def _agent_class() -> Any:  # noqa: ANN401 - a Ray ActorClass
    """The agent's class, made once per process (defined here so Ray ships it by value)."""
    find_port = port_finder()

    class PortAgent:
        """Finds free ports on the node it runs on."""

        def __init__(self) -> None:
            import ray as ray_on_node  # noqa: PLC0415 - runs on the node

            self.ip = str(ray_on_node.util.get_node_ip_address())  # type: ignore[no-untyped-call]

        def free_port(
            self, exclude: frozenset[int], avoid_low: int, avoid_high: int, start: int, scan: int
        ) -> tuple[str, int]:
            return self.ip, find_port(self.ip, exclude, avoid_low, avoid_high, start, scan)

        def node_id(self) -> str:
            import ray as ray_on_node  # noqa: PLC0415 - runs on the node

            return str(ray_on_node.get_runtime_context().get_node_id())

    return ray.remote(PortAgent)


def port_agent(node_id: str) -> Any:  # noqa: ANN401 - a Ray ActorHandle
    """The port agent of ``node_id``: this process's, a live one of this namespace, or a new one.

    Returns at once: a new agent starts in the background (its first answer waits for it).

    Raises:
        BackendError: Ray refused to start it.
    """
    with _LOCK:
        handle = _AGENTS.get(node_id)
        if handle is None:
            try:
                handle = (
                    _agent_class()
                    .options(
                        name=AGENT_NAME_ROOT + node_id,
                        get_if_exists=True,
                        num_cpus=0,
                        max_restarts=0,
                        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                    )
                    .remote()
                )
            except Exception as exc:  # the Ray error-mapping boundary
                msg = f"cannot start the port agent of node {node_id}: {exc}"
                raise BackendError(msg, operation="start port agent") from exc
            _AGENTS[node_id] = handle
        return handle


def start_port_agents(node_ids: list[str]) -> None:
    """Start the agents of ``node_ids`` now, so that the first `Place` there does not wait."""
    for node_id in node_ids:
        port_agent(node_id)


def forget_port_agent(node_id: str) -> None:
    """Drop this process's handle to ``node_id``'s agent (the node left: its agent went with it).

    A node that comes back gets a new agent at its first probe, or when it joins.
    """
    with _LOCK:
        _AGENTS.pop(node_id, None)


def _forget(node_id: str, handle: Any) -> None:  # noqa: ANN401 - a Ray ActorHandle
    with _LOCK:
        if _AGENTS.get(node_id) is handle:
            del _AGENTS[node_id]


def probe_with_agent(
    node_id: str, *, exclude_ports: frozenset[int], callback: ProbeCallback
) -> None:
    """Ask ``node_id``'s agent for the node's IP and a free port; ``callback`` gets the answer.

    Returns at once; the callback runs once, on a Ray thread, with a `BundleProbe` (no GPU ids:
    the agent is not in the bundle) or the failure. A call that fails, or is not answered within
    `AGENT_TIMEOUT_S`, forgets the agent, so that the next one starts a new agent.
    """
    try:
        handle = port_agent(node_id)
        ref = handle.free_port.remote(*probe_args(exclude_ports))
    except Exception as exc:  # noqa: BLE001 - the Ray error-mapping boundary, reported not raised
        callback(BackendError(f"cannot ask the port agent: {exc}", operation="probe bundle"))
        return

    once = threading.Lock()  # held by the first answer: a later one is dropped

    def finish(outcome: BundleProbe | BaseException) -> None:
        if not once.acquire(blocking=False):
            return  # answered already (or given up on)
        deadline.cancel()
        callback(outcome)

    def too_late() -> None:
        _forget(node_id, handle)
        msg = f"the port agent of node {node_id} did not answer within {AGENT_TIMEOUT_S:g}s"
        finish(BackendError(msg, operation="probe bundle"))

    def done(settled: Any) -> None:  # noqa: ANN401 - a concurrent.futures.Future
        error = settled.exception()
        if error is not None:
            _forget(node_id, handle)
            failure = BackendError(f"port agent failed: {error}", operation="probe bundle")
            failure.__cause__ = error
            finish(failure)
            return
        ip, port = settled.result()
        finish(BundleProbe(node_ip=ip, port=port, gpu_ids=()))

    deadline = _DEADLINES.call_later(AGENT_TIMEOUT_S, too_late)
    ref.future().add_done_callback(done)
