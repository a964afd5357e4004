"""The placement service on a Ray cluster, for controllers in other processes.

`PlacementClient.serve(address)` starts both actors inside a named, detached Ray actor
(`SERVICE_NAME` in the ``placement-actors`` namespace); `PlacementClient.connect(address)` lets any
driver of the cluster send it the same message values and get the same replies. A
`PlacementResult`'s IP and port futures come back as `RayEventual` values: ``get(timeout=...)`` or
``await`` them. The service, its ledger and its placement groups outlive every client.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, NoReturn

from placement_actors.actors.messages import (
    BundleProbed,
    BundleProbeFailed,
    PlacementGroupFailed,
    PlacementGroupReady,
    PlacementGroupTimedOut,
    PlanReplica,
    Release,
    ReplicaFailed,
)
from placement_actors.backends import ray as on_ray
from placement_actors.domain.deployments import group_prefix, is_deployment_name
from placement_actors.domain.errors import BackendError, InvalidSpecError, PlacementError
from placement_actors.domain.limits import DEFAULT_MAX_REMOTE_REPLICAS
from placement_actors.domain.results import (
    BundleEndpoint,
    Eventual,
    PlacementResult,
    ReplicaPlacement,
)
from placement_actors.wiring import start_on_ray

__all__ = ["SERVICE_NAME", "PlacementClient", "PlacementHost"]

SERVICE_NAME = "placement-actors-service"

_INTERNAL_EVENTS = (
    ReplicaFailed,
    PlacementGroupReady,
    PlacementGroupFailed,
    PlacementGroupTimedOut,
    BundleProbed,
    BundleProbeFailed,
)
_Outcome = tuple[str, Any]  # ("ok", reply) or ("error", PlacementError)


@dataclass(frozen=True, slots=True, kw_only=True)
class _RemoteEndpoint:
    """Stands in for a bundle's futures while a result crosses to a client."""

    group_name: str
    attempt: int
    bundle_index: int

    def get(self, *, timeout: float | None = None) -> NoReturn:
        del timeout
        msg = "a remote endpoint resolves through PlacementClient"
        raise BackendError(msg, operation="resolve endpoint")

    def __await__(self) -> NoReturn:
        self.get()


class PlacementHost:
    """What runs inside the service's Ray actor: the two actors, and the futures they handed out.

    Args:
        ready_timeout_s: how long Ray may take to make each placement group ready.
        ignore_head_node: keep local replicas off head nodes (``None``: the environment decides).
        max_remote_replicas: the most replicas one remote deployment may ask for.
    """

    def __init__(
        self,
        *,
        ready_timeout_s: float = 60.0,
        ignore_head_node: bool | None = None,
        max_remote_replicas: int = DEFAULT_MAX_REMOTE_REPLICAS,
    ) -> None:
        """Start the actors on the cluster this process belongs to (`start_on_ray`)."""
        self._placement = start_on_ray(
            ready_timeout_s=ready_timeout_s,
            ignore_head_node=ignore_head_node,
            max_remote_replicas=max_remote_replicas,
        )
        self._replicas: dict[tuple[str, int], ReplicaPlacement] = {}

    async def handle(self, message: object) -> _Outcome:
        """Ask the actor that handles ``message``; never raises (errors travel as values).

        `PlanReplica` is not served: replicas are planned by `Place`, whose ledger decides first.
        Nor are the events the actors send each other (`ReplicaFailed`, the planner's group and
        probe events): from a client they could only make the ledger disagree with Ray.
        """
        if isinstance(message, PlanReplica):
            msg = "the service plans replicas through Place; send Place, not PlanReplica"
            return "error", InvalidSpecError(msg, field="message")
        if isinstance(message, _INTERNAL_EVENTS):
            msg = f"{type(message).__name__} is an event between the service's own actors"
            return "error", InvalidSpecError(msg, field="message")
        try:
            reply = await self._placement.ask(message, block=False)
        except PlacementError as exc:
            return "error", exc
        if isinstance(reply, PlacementResult):
            reply = dataclasses.replace(
                reply, replicas=tuple(self._portable(r) for r in reply.replicas)
            )
        if isinstance(message, Release):  # forget the released replicas' endpoints
            prefix = (
                group_prefix(message.deployment) if is_deployment_name(message.deployment) else None
            )
            self._replicas = {
                key: r
                for key, r in self._replicas.items()
                if not prefix or not key[0].startswith(prefix)
            }
        return "ok", reply

    async def endpoint(self, group_name: str, attempt: int, bundle_index: int) -> _Outcome:
        """A bundle's ``(node_ip, port)``, once known; a key it does not hold is an error value."""
        try:
            replica = self._replicas.get((group_name, attempt))
        except TypeError:  # an unhashable key from a misbehaving client
            replica = None
        if (
            replica is None
            or isinstance(bundle_index, bool)
            or not isinstance(bundle_index, int)
            or not 0 <= bundle_index < len(replica.bundles)
        ):
            msg = "the service holds no such bundle (group, attempt and bundle index)"
            return "error", InvalidSpecError(msg, field="bundle_index")
        bundle = replica.bundles[bundle_index]
        try:
            return "ok", (await bundle.node_ip, await bundle.port)
        except PlacementError as exc:
            return "error", exc

    def _portable(self, replica: ReplicaPlacement) -> ReplicaPlacement:
        self._replicas[(replica.group_name, replica.attempt)] = replica
        return dataclasses.replace(
            replica,
            bundles=tuple(
                dataclasses.replace(b, node_ip=stand_in, port=stand_in)
                for b, stand_in in (
                    (
                        b,
                        _RemoteEndpoint(
                            group_name=replica.group_name, attempt=replica.attempt, bundle_index=i
                        ),
                    )
                    for i, b in enumerate(replica.bundles)
                )
            ),
        )

    def stop(self) -> None:
        """Stop both actors (the placement groups stay)."""
        self._placement.stop(timeout=30)


def _unwrap(outcome: _Outcome) -> Any:  # noqa: ANN401 - any reply of the protocol
    kind, value = outcome
    if kind == "error":
        raise value
    return value


class PlacementClient:
    """Talks to the placement service running on a Ray cluster.

    Send it the same message values as the actors (`Place`, `Release`, `GetClusterView`, ...);
    replies and errors are the same too.
    """

    def __init__(self, host: on_ray.RemoteHost) -> None:
        """Wrap a host found by `connect` or started by `serve`."""
        self._host = host

    @classmethod
    def connect(cls, address: str | None = None, *, name: str = SERVICE_NAME) -> PlacementClient:
        """Connect to the running service of the cluster at ``address``.

        Raises:
            BackendError: the cluster cannot be reached, or no service runs there.
        """
        on_ray.connect(address)
        return cls(on_ray.find_host(name))

    @classmethod
    def serve(
        cls,
        address: str | None = None,
        *,
        name: str = SERVICE_NAME,
        ready_timeout_s: float = 60.0,
        ignore_head_node: bool | None = None,
        max_remote_replicas: int = DEFAULT_MAX_REMOTE_REPLICAS,
    ) -> PlacementClient:
        """Start the service on the cluster at ``address`` (or find it, if it runs already)."""
        on_ray.connect(address)
        factory = functools.partial(
            PlacementHost,
            ready_timeout_s=ready_timeout_s,
            ignore_head_node=ignore_head_node,
            max_remote_replicas=max_remote_replicas,
        )
        return cls(on_ray.start_host(name, factory))

    @property
    def name(self) -> str:
        """The service's Ray actor name."""
        return self._host.name

    def ask_later(self, message: object) -> Eventual[Any]:
        """Send ``message``; the reply arrives later (``get(timeout=...)`` or ``await`` it)."""
        return self._host.later("handle", message, transform=self._reply)

    def ask(self, message: object, *, timeout: float = 60.0) -> Any:  # noqa: ANN401 - a reply
        """Send ``message`` and wait for the reply; the actor's typed errors are raised here."""
        return self.ask_later(message).get(timeout=timeout)

    def stop_service(self) -> None:
        """Stop the service's actor. Its placement groups stay: release deployments first."""
        self._host.kill()

    def _reply(self, outcome: _Outcome) -> Any:  # noqa: ANN401 - any reply of the protocol
        reply = _unwrap(outcome)
        if isinstance(reply, PlacementResult):
            reply = dataclasses.replace(
                reply, replicas=tuple(self._resolvable(r) for r in reply.replicas)
            )
        return reply

    def _resolvable(self, replica: ReplicaPlacement) -> ReplicaPlacement:
        bundles = []
        for index, bundle in enumerate(replica.bundles):
            pair = self._host.later(
                "endpoint", replica.group_name, replica.attempt, index, transform=_unwrap
            )
            bundles.append(
                BundleEndpoint(
                    node=bundle.node,
                    node_ip=_Part(pair, 0),
                    port=_Part(pair, 1),
                )
            )
        return dataclasses.replace(replica, bundles=tuple(bundles))


class _Part:
    """One element of an eventual pair: the IP or the port of one remote bundle."""

    def __init__(self, pair: Eventual[tuple[str, int]], index: int) -> None:
        self._pair = pair
        self._index = index

    def get(self, *, timeout: float | None = None) -> Any:  # noqa: ANN401 - str or int
        return self._pair.get(timeout=timeout)[self._index]

    async def _resolve(self) -> Any:  # noqa: ANN401 - str or int
        return (await self._pair)[self._index]

    def __await__(self) -> Any:  # noqa: ANN401 - a generator of the awaited value
        return self._resolve().__await__()
