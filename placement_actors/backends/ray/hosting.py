"""Hosting a service object in a named, detached Ray actor, and calling it from any driver."""

from __future__ import annotations

import inspect
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from typing import Any, Generic, TypeVar

import pykka
import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayError

from placement_actors.backends.ray.cluster import HEAD_RESOURCE
from placement_actors.backends.ray.connection import NAMESPACE
from placement_actors.domain.errors import BackendError, InvalidSpecError

__all__ = ["RayEventual", "RemoteHost", "find_host", "start_host"]

_T = TypeVar("_T")

_HEAD_SHARE = 0.001
"""How much of the head node's own resource the host asks for: enough to pin it there."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class _Host:
    """A named, detached Ray actor that holds one service object and calls its methods.

    Methods of the object may be coroutines: the actor is an asyncio actor, so a call that waits
    (for a placement group, say) never holds up the others. Ray restarts the actor whenever its
    process dies (the object is built again by ``factory``, which must recover its state), and
    calls that were on their way are sent again to the new incarnation: every method of a hosted
    object must be safe to run twice.
    """

    def __init__(self, factory: Callable[[], object]) -> None:
        self._incarnation = uuid.uuid4().hex
        self._target = factory()

    def incarnation(self) -> str:
        """Which start of the actor this is (new after every restart)."""
        return self._incarnation

    def node_id(self) -> str:
        """The Ray node the actor runs on."""
        return str(ray.get_runtime_context().get_node_id())

    async def call(self, method: str, *args: object) -> object:
        result = getattr(self._target, method)(*args)
        if inspect.isawaitable(result):
            result = await result
        return result


class RayEventual(Generic[_T]):
    """A hosted call's result as an `Eventual`: ``get(timeout=...)`` or ``await``.

    When the host's actor died for good and another of its name runs now (the service was
    stopped and served again), the call is sent once more, to the new one (``resend``).
    """

    def __init__(
        self,
        ref: ray.ObjectRef[Any],
        transform: Callable[[Any], _T],
        resend: Callable[[], ray.ObjectRef[Any] | None] | None = None,
    ) -> None:
        """Wrap ``ref``; ``transform`` turns the raw result into the value (or raises)."""
        self._ref = ref
        self._transform = transform
        self._resend = resend
        self._done: tuple[_T] | None = None
        self._lock = threading.Lock()  # threads waiting on one call resend it once

    def _again(self, failed: ray.ObjectRef[Any]) -> bool:
        """Send the call to the host's successor, once; whether there was one.

        ``failed`` is the reference whose wait failed: a thread that waited on it while another
        already sent the call again waits on the new one.
        """
        with self._lock:
            if self._ref is not failed:  # another thread sent it again already
                return True
            resend, self._resend = self._resend, None
            ref = None if resend is None else resend()
            if ref is None:
                return False
            self._ref = ref
            return True

    def _settle(self, raw: object) -> _T:
        if self._done is None:  # transform once: a reply's own futures are made once
            self._done = (self._transform(raw),)
        return self._done[0]

    def get(self, *, timeout: float | None = None) -> _T:
        """Wait up to ``timeout`` seconds (``pykka.Timeout`` after that, as for local futures)."""
        while self._done is None:
            ref = self._ref
            try:
                return self._settle(ray.get(ref, timeout=timeout))
            except GetTimeoutError as exc:
                msg = f"{timeout} seconds"
                raise pykka.Timeout(msg) from exc
            except RayError as exc:
                self._failed(exc, ref)
        return self._done[0]

    async def _resolve(self) -> _T:
        while self._done is None:
            ref = self._ref
            try:
                return self._settle(await ref)
            except RayError as exc:
                self._failed(exc, ref)
        return self._done[0]

    def _failed(self, exc: RayError, ref: ray.ObjectRef[Any]) -> None:
        """Return when the call went to the host's successor; else raise the failure."""
        if isinstance(exc, ActorDiedError) and self._again(ref):
            return
        msg = f"the service failed to answer: {exc}"
        raise BackendError(msg, operation="call service") from exc

    def __await__(self) -> Generator[Any, None, _T]:
        """Wait in a coroutine without blocking the event loop."""
        return self._resolve().__await__()


class RemoteHost:
    """A handle on a hosted service object, usable from any driver of the cluster."""

    def __init__(self, handle: Any, name: str) -> None:  # noqa: ANN401 - a Ray ActorHandle
        """Wrap the Ray actor handle of the host named ``name``."""
        self._handle = handle
        self.name = name

    @staticmethod
    def unanswered(calls: Sequence[RayEventual[Any]]) -> list[RayEventual[Any]]:
        """Those of ``calls`` (made with `later`) whose result has not arrived yet.

        One look at Ray, no waiting; when Ray cannot tell, they are taken as unanswered (the
        safe side: a query then waits behind them).
        """
        pending = [c for c in calls if c._done is None]  # noqa: SLF001 - this module's own class
        if not pending:
            return []
        refs = [c._ref for c in pending]  # noqa: SLF001
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        except (RayError, ValueError):
            return pending
        arrived = set(ready)
        return [c for c in pending if c._ref not in arrived]  # noqa: SLF001

    def later(self, method: str, *args: object, transform: Callable[[Any], _T]) -> RayEventual[_T]:
        """Call ``method(*args)`` on the hosted object; the result arrives later.

        Ray restarts a host whose process died and sends it the calls on their way; if the host
        was stopped and another of its name started since, the call goes to that one instead.
        """
        sent_to = self._handle
        try:
            ref = sent_to.call.remote(method, *args)
        except (TypeError, ValueError) as exc:  # Ray could not serialise the arguments
            msg = f"cannot send this to the service {self.name}: {exc}"
            raise InvalidSpecError(msg, field="message") from exc
        except RayError as exc:
            msg = f"cannot reach the service {self.name}: {exc}"
            raise BackendError(msg, operation="call service") from exc
        return RayEventual(ref, transform, resend=lambda: self._resend(method, args, sent_to))

    def _resend(
        self,
        method: str,
        args: tuple[object, ...],
        sent_to: Any,  # noqa: ANN401 - the Ray ActorHandle the call first went to
    ) -> ray.ObjectRef[Any] | None:
        """Send a call again to the host of this name now running, if it is not ``sent_to``."""
        try:
            handle = ray.get_actor(self.name, namespace=NAMESPACE)
        except ValueError:
            return None  # stopped, and nothing runs under its name
        if handle._actor_id == sent_to._actor_id:  # noqa: SLF001 - Ray's handle identity
            return None  # the same actor, which died for good
        self._handle = handle  # later calls go to it at once
        try:
            ref: ray.ObjectRef[Any] = handle.call.remote(method, *args)
        except RayError:
            return None
        return ref

    def incarnation(self, *, timeout_s: float = 60.0) -> str:
        """Which start of the host answers now (a new value after each restart)."""
        return self._ask_actor("incarnation", timeout_s)

    def node_id(self, *, timeout_s: float = 60.0) -> str:
        """The Ray node the host runs on (the head node)."""
        return self._ask_actor("node_id", timeout_s)

    def _ask_actor(self, method: str, timeout_s: float) -> str:
        """One of the host actor's own methods (not the hosted object's), waited for."""
        try:
            found: str = ray.get(getattr(self._handle, method).remote(), timeout=timeout_s)
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"the service {self.name} did not answer: {exc}"
            raise BackendError(msg, operation="call service") from exc
        return found

    def restart(self, *, timeout_s: float = 120.0) -> None:
        """Kill the host's process and wait until Ray has started it again.

        What a crash of the host's node or process does; the new incarnation rebuilds the
        service from its checkpoints. Its detached placement groups stay.
        """
        before = self.incarnation(timeout_s=timeout_s)
        ray.kill(self._handle, no_restart=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.incarnation(timeout_s=max(0.1, deadline - time.monotonic())) != before:
                    return
            except BackendError:
                pass  # on its way down, or coming back
            time.sleep(0.05)
        msg = f"the service {self.name} did not come back within {timeout_s:g}s"
        raise BackendError(msg, operation="restart service")

    def kill(self, *, timeout_s: float = 30.0) -> None:
        """Stop the host running under this name now, and wait until its name is free again.

        The one running now: if the host this handle first found was stopped and another of its
        name started since, that one is stopped (as calls go to it too). Its detached placement
        groups stay. Ray kills asynchronously: without the wait, starting a host of the same name
        at once could find the dying actor.
        """
        running = self._running()
        if running is None:
            return  # nothing runs under its name
        self._handle = running
        try:
            ray.kill(running)
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"cannot stop the service {self.name}: {exc}"
            raise BackendError(msg, operation="stop service") from exc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            named = self._running()
            if named is None or named._actor_id != running._actor_id:  # noqa: SLF001 - identity
                return  # gone (or its name is another actor's already)
            time.sleep(0.05)
        msg = f"the service {self.name} did not stop within {timeout_s:g}s"
        raise BackendError(msg, operation="stop service")

    def _running(self) -> Any:  # noqa: ANN401 - a Ray ActorHandle
        """The handle of the host running under this name now, or ``None``."""
        try:
            return ray.get_actor(self.name, namespace=NAMESPACE)
        except ValueError:
            return None
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"cannot look up the service {self.name}: {exc}"
            raise BackendError(msg, operation="stop service") from exc


def start_host(name: str, factory: Callable[[], object], *, timeout_s: float = 120.0) -> RemoteHost:
    """Start (or find, if it runs already) the named, detached host actor of ``factory()``.

    ``factory`` must be picklable (a class, or a ``functools.partial`` of one): it runs in the
    host's own process. The host lives in `NAMESPACE`, on the head node, and outlives the driver
    that started it; Ray restarts it if its process dies.
    """
    handle = _Host.options(  # type: ignore[attr-defined]
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        # On the head node, as Ray's own controllers are: a worker node that leaves (a spot
        # reclaim, a scale-down) must not take the service with it.
        resources={HEAD_RESOURCE: _HEAD_SHARE},
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
            f"no service named {name} runs on this cluster; start it with "
            "`placement-actors serve --address ADDR`"
        )
        raise BackendError(msg, operation="find service") from exc
    return RemoteHost(handle, name)
