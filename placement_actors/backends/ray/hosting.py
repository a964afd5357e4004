"""Hosting a service object in a named, detached Ray actor, and calling it from any driver."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

import pykka
import ray
from ray.exceptions import GetTimeoutError, RayError

from placement_actors.backends.ray.connection import NAMESPACE
from placement_actors.domain.errors import BackendError, InvalidSpecError

__all__ = ["RayEventual", "RemoteHost", "find_host", "start_host"]

_T = TypeVar("_T")


@ray.remote(num_cpus=0)
class _Host:
    """A named, detached Ray actor that holds one service object and calls its methods.

    Methods of the object may be coroutines: the actor is an asyncio actor, so a call that waits
    (for a placement group, say) never holds up the others.
    """

    def __init__(self, factory: Callable[[], object]) -> None:
        self._target = factory()

    async def call(self, method: str, *args: object) -> object:
        result = getattr(self._target, method)(*args)
        if inspect.isawaitable(result):
            result = await result
        return result


class RayEventual(Generic[_T]):
    """A hosted call's result as an `Eventual`: ``get(timeout=...)`` or ``await``."""

    def __init__(self, ref: ray.ObjectRef[Any], transform: Callable[[Any], _T]) -> None:
        """Wrap ``ref``; ``transform`` turns the raw result into the value (or raises)."""
        self._ref = ref
        self._transform = transform
        self._done: tuple[_T] | None = None

    def _settle(self, raw: object) -> _T:
        if self._done is None:  # transform once: a reply's own futures are made once
            self._done = (self._transform(raw),)
        return self._done[0]

    def get(self, *, timeout: float | None = None) -> _T:
        """Wait up to ``timeout`` seconds (``pykka.Timeout`` after that, as for local futures)."""
        try:
            raw = ray.get(self._ref, timeout=timeout)
        except GetTimeoutError as exc:
            msg = f"{timeout} seconds"
            raise pykka.Timeout(msg) from exc
        except RayError as exc:
            msg = f"the service failed to answer: {exc}"
            raise BackendError(msg, operation="call service") from exc
        return self._settle(raw)

    async def _resolve(self) -> _T:
        try:
            raw = await self._ref
        except RayError as exc:
            msg = f"the service failed to answer: {exc}"
            raise BackendError(msg, operation="call service") from exc
        return self._settle(raw)

    def __await__(self) -> Generator[Any, None, _T]:
        """Wait in a coroutine without blocking the event loop."""
        return self._resolve().__await__()


class RemoteHost:
    """A handle on a hosted service object, usable from any driver of the cluster."""

    def __init__(self, handle: Any, name: str) -> None:  # noqa: ANN401 - a Ray ActorHandle
        """Wrap the Ray actor handle of the host named ``name``."""
        self._handle = handle
        self.name = name

    def later(self, method: str, *args: object, transform: Callable[[Any], _T]) -> RayEventual[_T]:
        """Call ``method(*args)`` on the hosted object; the result arrives later."""
        try:
            ref = self._handle.call.remote(method, *args)
        except (TypeError, ValueError) as exc:  # Ray could not serialise the arguments
            msg = f"cannot send this to the service {self.name}: {exc}"
            raise InvalidSpecError(msg, field="message") from exc
        except RayError as exc:
            msg = f"cannot reach the service {self.name}: {exc}"
            raise BackendError(msg, operation="call service") from exc
        return RayEventual(ref, transform)

    def kill(self, *, timeout_s: float = 30.0) -> None:
        """Stop the hosted object's actor and wait until its name is free again.

        Its detached placement groups stay. Ray kills asynchronously: without the wait, starting
        a host of the same name at once could find the dying actor.
        """
        ray.kill(self._handle)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get_actor(self.name, namespace=NAMESPACE)
            except ValueError:
                return
            time.sleep(0.05)
        msg = f"the service {self.name} did not stop within {timeout_s:g}s"
        raise BackendError(msg, operation="stop service")


def start_host(name: str, factory: Callable[[], object], *, timeout_s: float = 120.0) -> RemoteHost:
    """Start (or find, if it runs already) the named, detached host actor of ``factory()``.

    ``factory`` must be picklable (a class, or a ``functools.partial`` of one): it runs in the
    host's own process. The host lives in `NAMESPACE` and outlives the driver that started it.
    """
    handle = _Host.options(  # type: ignore[attr-defined]
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(factory)
    host = RemoteHost(handle, name)
    try:
        ray.get(handle.call.remote("__repr__"), timeout=timeout_s)
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"the service {name} did not start: {exc}"
        raise BackendError(msg, operation="start service") from exc
    return host


def find_host(name: str) -> RemoteHost:
    """The running host actor named ``name`` in `NAMESPACE`.

    Raises:
        BackendError: no such actor runs on the cluster.
    """
    try:
        handle = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError as exc:
        msg = (
            f"no service named {name} runs on this cluster; start it with `placement-actors serve`"
        )
        raise BackendError(msg, operation="find service") from exc
    return RemoteHost(handle, name)
