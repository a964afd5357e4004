"""A controller written as a pykka actor: place a deployment, learn its master address, release it.

It never blocks a handler on a future: the master port's future is piped back to the controller
as a message (`pipe_to`), the way actors wait.

Run it on an embedded local Ray cluster::

    .venv/bin/python examples/controller_actor.py
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pykka

from placement_actors import (
    BundleEndpoint,
    Deployment,
    Eventual,
    Place,
    PlacementError,
    PlacementResult,
    Release,
    pipe_to,
    start_on_ray,
)


@dataclass(frozen=True, slots=True)
class Deploy:
    """Command to the controller: get this deployment running."""

    deployment: Deployment


@dataclass(frozen=True, slots=True)
class MasterKnown:
    """Event: replica 0's master address and port have resolved."""

    deployment: str
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class MasterFailed:
    """Event: replica 0's placement group failed."""

    deployment: str
    error: PlacementError


class Controller(pykka.ThreadingActor):
    """Deploys one deployment, records its master address, then releases it."""

    def __init__(self, placement: pykka.ActorRef[Any], done: pykka.Future[str]) -> None:
        super().__init__()
        self.placement = placement
        self.done = done

    def on_receive(self, message: Any) -> Any:  # noqa: ANN401
        match message:
            case Deploy(deployment):
                reply = self.placement.ask(Place(deployment), block=False)
                pipe_to(reply, self.actor_ref, self._placed)
            case PlacementResult() as result:
                master = result.replicas[0].master
                known = functools.partial(self._known, result.deployment.name, master)
                pipe_to(master.port, self.actor_ref, known)
            case MasterKnown(name, address, port):
                self.placement.tell(Release(name))
                self.done.set(f"{address}:{port}")
            case MasterFailed(name, error):
                self.placement.tell(Release(name))
                self.done.set_exception((type(error), error, error.__traceback__))
            case PlacementError() as error:
                self.done.set_exception((type(error), error, error.__traceback__))

    @staticmethod
    def _placed(reply: Eventual[PlacementResult]) -> object:
        try:
            return reply.get(timeout=0)
        except PlacementError as error:
            return error

    @staticmethod
    def _known(name: str, master: BundleEndpoint, port: Eventual[int]) -> object:
        try:
            return MasterKnown(name, master.node_ip.get(timeout=0), port.get(timeout=0))
        except PlacementError as error:
            return MasterFailed(name, error)


def run_controller(placement: pykka.ActorRef[Any], deployment: Deployment) -> str:
    """Start a controller, deploy, and return the master address it learnt (``ip:port``)."""
    done: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    controller = Controller.start(placement, done)
    controller.tell(Deploy(deployment))
    try:
        return str(done.get(timeout=120))
    finally:
        controller.stop()


def main() -> None:
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415

    with on_ray.LocalCluster(worker_gpus=(4, 4)):
        placement = start_on_ray()
        deployment = Deployment(name="llama-8b", model="meta-llama/Llama-3.1-8B", gpus=2)
        print("master address:", run_controller(placement, deployment))
        pykka.ActorRegistry.stop_all()


if __name__ == "__main__":
    main()
