"""Hosting a service object in a named, detached Ray actor, and calling it from any driver."""

from __future__ import annotations

import asyncio
import functools
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
from placement_actors.backends.ray.lease import end_lease_of
from placement_actors.domain.errors import BackendError, InvalidSpecError

__all__ = ["RayEventual", "RemoteHost", "find_host", "start_host"]

_T = TypeVar("_T")

_HEAD_SHARE = 0.001
"""How much of the head node's own resource the host asks for: enough to pin it there."""


WAITING_CALLS = 10_000
"""Calls that wait for a replica (endpoints not known yet) the host runs at once, beside the
1,000 of every other kind (Ray's default for an asyncio actor): waiting calls never hold up
commands and queries, however many clients wait."""

POLLING_CALLS = 10_000
"""Long polls of the service's events the host runs at once, apart from the waiting calls: any
number of clients following events never hold up a controller waiting for an endpoint."""


class _HostActor:
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
        return await _invoke(self._target, method, args, default_loop=True)

    @ray.method(concurrency_group="waits")
    async def wait(self, method: str, *args: object) -> object:
        """As `call`, for a call that may wait long: in a concurrency group (a loop) of its own."""
        return await _invoke(self._target, method, args)

    @ray.method(concurrency_group="polls")
    async def poll(self, method: str, *args: object) -> object:
        """As `wait`, for a long poll of events: in a concurrency group of its own again."""
        return await _invoke(self._target, method, args)


@functools.cache
def _host_class(waiting_calls: int, polling_calls: int) -> Any:  # noqa: ANN401 - a Ray actor class
    """The host's Ray actor class, with room for that many waiting calls and long polls.

    Ray takes concurrency groups only where the class is made remote, not in ``.options()``.
    """
    return ray.remote(  # type: ignore[call-overload]  # Ray's stubs leave concurrency_groups out
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=-1,
        concurrency_groups={"waits": waiting_calls, "polls": polling_calls},
    )(_HostActor)


_Host = _host_class(WAITING_CALLS, POLLING_CALLS)


async def _invoke(
    target: object, method: object, args: tuple[object, ...], *, default_loop: bool = False
) -> object:
    """``target.method(*args)``, awaited if it is a coroutine.

    Only a method ``target``'s class names in its ``HOSTED_METHODS`` is called: the host is
    reachable from any process on the cluster, and the object's other methods and attributes
    (its actors, its state) are its own. A method it also names in ``DEFAULT_LOOP_METHODS``
    (one whose asyncio state belongs to the host's default loop) is called only through `call`.

    Raises:
        InvalidSpecError: ``method`` is not one of them, or not one served where it was sent.
    """
    served: frozenset[str] = getattr(type(target), "HOSTED_METHODS", frozenset())
    if not isinstance(method, str) or method not in served:
        msg = (
            f"the service host answers calls of {', '.join(sorted(served)) or 'no method'}, "
            f"not {method!r:.80}"
        )
        raise InvalidSpecError(msg, field="method")
    if not default_loop and method in getattr(type(target), "DEFAULT_LOOP_METHODS", frozenset()):
        msg = f"the service host answers {method} among its other calls, not among those that wait"
        raise InvalidSpecError(msg, field="method")
    result = getattr(target, method)(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class RayEventual(Generic[_T]):
    """A hosted call's result as an `Eventual`: ``get(timeout=...)`` or ``await``.

    When the host's actor died for good and another of its name runs now (the service was
    stopped and served again), the call is sent once more, to the new one, together with every
    other call of its `RemoteHost` the stopped host did not answer, in the order they were sent
    (`RemoteHost.forward`).
    """

    def __init__(
        self,
        ref: ray.ObjectRef[Any],
        transform: Callable[[Any], _T],
        host: RemoteHost | None = None,
        call: tuple[str, str, tuple[object, ...], bool] = ("call", "", (), False),
    ) -> None:
        """Wrap ``ref``; ``transform`` turns the raw result into the value (or raises).

        ``host`` and ``call`` (the host's method, the object's, its arguments, and whether they
        end with a client's id and sequence number: `RemoteHost.later`'s ``ordered``): what to
        send again, and where, should the host that ``ref`` went to be stopped; without
        ``host``, nothing is.
        """
        self._ref = ref
        self._transform = transform
        self._host = host
        self._call = call
        self._done: tuple[_T] | None = None
        self._error: BackendError | None = None  # failed for good: never sent again
        self._after = False  # sent again with the number it follows (`RemoteHost.later`)
        self._lock = threading.Lock()  # two threads reading one reply transform it once

    def _settle(self, raw: object) -> _T:
        with self._lock:
            if self._done is None:  # transform once: a reply's own futures are made once
                self._done = (self._transform(raw),)
            return self._done[0]

    def get(self, *, timeout: float | None = None) -> _T:
        """Wait up to ``timeout`` seconds (``pykka.Timeout`` after that, as for local futures).

        In all: a call sent again to the host's successor waits only what is left of it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._done is None:
            if self._error is not None:
                raise self._error
            ref = self._ref
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return self._settle(ray.get(ref, timeout=left))
            except GetTimeoutError as exc:
                msg = f"{timeout} seconds"
                raise pykka.Timeout(msg) from exc
            except RayError as exc:
                self._failed(exc, ref)
        return self._done[0]

    async def _resolve(self) -> _T:
        while self._done is None:
            if self._error is not None:
                raise self._error
            ref = self._ref
            try:
                return self._settle(await ref)
            except RayError as exc:
                # Finding the host's successor asks Ray (blocking calls): not on the caller's loop.
                await asyncio.to_thread(self._failed, exc, ref)
        return self._done[0]

    def _failed(self, exc: RayError, ref: ray.ObjectRef[Any]) -> None:
        """Return when the call went to the host's successor; else raise the failure.

        A call told failed stays failed: no later successor gets it (its caller was told).
        """
        if (
            isinstance(exc, ActorDiedError)
            and self._host is not None
            and self._host.forward(self, ref)
        ):
            return
        if (
            isinstance(exc, TypeError)  # Ray's task error is also its cause's type
            and "positional argument" in str(exc)  # a method that takes fewer arguments
            and self._after
            and self._host is not None
            and self._host.send_again_plain(self, ref)
        ):
            return  # a successor of an earlier version, which takes no number to follow
        msg = f"the service failed to answer: {exc}"
        error = BackendError(msg, operation="call service")
        error.__cause__ = exc
        self._error = error
        raise error

    def __await__(self) -> Generator[Any, None, _T]:
        """Wait in a coroutine without blocking the event loop."""
        return self._resolve().__await__()


class _Lookup:
    """One question to Ray: which host of a name runs after the one that stopped (``dead``)."""

    def __init__(self, dead: object) -> None:
        self.dead = dead
        self._lock = threading.Lock()
        self._handle: Any = None

    def successor(self, name: str) -> Any:  # noqa: ANN401 - a Ray ActorHandle, or None
        """The running host named ``name``, or ``None``: none runs (asked again next time).

        A successor found is asked for once, by the first caller: the others wait for it here.
        """
        with self._lock:
            if self._handle is None:
                try:
                    handle = ray.get_actor(name, namespace=NAMESPACE)
                except ValueError:
                    return None  # stopped, and nothing runs under its name (yet)
                if handle._actor_id == self.dead:  # noqa: SLF001 - Ray still names the stopped one
                    return handle
                self._handle = handle
            return self._handle


_KEPT_CALLS = 64
"""Calls a `RemoteHost` keeps for sending again before it looks which were answered."""


class RemoteHost:
    """A handle on a hosted service object, usable from any driver of the cluster."""

    def __init__(self, handle: Any, name: str) -> None:  # noqa: ANN401 - a Ray ActorHandle
        """Wrap the Ray actor handle of the host named ``name``."""
        self._handle = handle
        self.name = name
        self._lock = threading.Lock()  # sending, and sending again, in one order
        self._sent: list[tuple[RayEventual[Any], Any]] = []  # (call, the handle it went to)
        self._look_at = _KEPT_CALLS
        self._lookup: _Lookup | None = None  # of the host after the latest one found stopped

    def __reduce__(self) -> tuple[type[RemoteHost], tuple[Any, str]]:
        """Pickled as its Ray handle and name (its calls stay with the process that made them)."""
        return (RemoteHost, (self._handle, self.name))

    @staticmethod
    def unanswered(calls: Sequence[RayEventual[Any]]) -> list[RayEventual[Any]]:
        """Those of ``calls`` (made with `later`) whose result has not arrived yet.

        One look at Ray, no waiting; when Ray cannot tell, they are taken as unanswered (the
        safe side: a query then waits behind them). A call whose host was stopped before it
        answered is unanswered too: it will be sent again (`forward`).
        """
        pending = [
            c
            for c in calls
            if c._done is None and c._error is None  # noqa: SLF001 - this module's own class
        ]
        if not pending:
            return []
        refs = [c._ref for c in pending]  # noqa: SLF001
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        except (RayError, ValueError):
            return pending
        arrived = {r for r in ready if not _died_on(r)}
        return [c for c in pending if c._ref not in arrived]  # noqa: SLF001

    def later(
        self,
        method: str,
        *args: object,
        transform: Callable[[Any], _T],
        waits: bool = False,
        polls: bool = False,
        ordered: bool = False,
    ) -> RayEventual[_T]:
        """Call ``method(*args)`` on the hosted object; the result arrives later.

        Ray restarts a host whose process died and sends it the calls on their way; if the host
        was stopped and another of its name started since, the call goes to that one instead.
        ``waits``: a call that may wait long for a replica, run apart from the others
        (`WAITING_CALLS`); ``polls``: a long poll of events, apart from both (`POLLING_CALLS`).
        ``ordered``: the last two of ``args`` are a client's id and the call's number in that
        client's order; sent to a successor, the call gets one more argument, the number of the
        client's call sent there before it (-1: none), so that the successor does not wait for
        the calls the stopped host answered.
        """
        runs = "poll" if polls else "wait" if waits else "call"
        with self._lock:
            sent_to = self._handle
            try:
                if not hasattr(sent_to, runs):  # a host of an earlier version: no group of polls
                    runs = "wait"
                ref = getattr(sent_to, runs).remote(method, *args)
            except (TypeError, ValueError) as exc:  # Ray could not serialise the arguments
                msg = f"cannot send this to the service {self.name}: {exc}"
                raise InvalidSpecError(msg, field="message") from exc
            except RayError as exc:
                msg = f"cannot reach the service {self.name}: {exc}"
                raise BackendError(msg, operation="call service") from exc
            call = RayEventual(ref, transform, self, (runs, method, args, ordered))
            self._sent.append((call, sent_to))
            if len(self._sent) > self._look_at:  # bounded: forget the answered ones
                waiting = set(self.unanswered([c for c, _ in self._sent]))
                self._sent = [(c, h) for c, h in self._sent if c in waiting]
                self._look_at = max(_KEPT_CALLS, 2 * len(self._sent))  # amortised O(1)
            return call

    def forward(self, call: RayEventual[Any], failed: ray.ObjectRef[Any]) -> bool:
        """``call`` failed as its host died: send it to the host of this name now running.

        Every call sent to the stopped host that it did not answer goes too, in the order they
        were sent (a client's commands must reach the new host in its order, whichever reply is
        read first). Whether ``call`` went to a successor (else there is none).
        """
        with self._lock:
            if call._ref is not failed:  # noqa: SLF001 - sent again already, with the others
                return True
            dead = next((h for c, h in self._sent if c is call), None)
            lookup = None if dead is None else self._lookup_of(dead)
        # Asking Ray which host runs now is a round trip to its GCS: not with the lock held, or
        # every send of this host's other callers (an event loop's too) would wait for it. One
        # reader asks; the others cut off by the same stop wait for its answer.
        handle = None if lookup is None else lookup.successor(self.name)
        with self._lock:
            if call._ref is not failed:  # noqa: SLF001 - another reader sent it again meanwhile
                return True
            if dead is not None and self._handle._actor_id not in {  # noqa: SLF001
                dead._actor_id,  # noqa: SLF001
                getattr(handle, "_actor_id", None),
            }:
                handle = self._handle  # moved on since, past the one looked up: not back to it
            if dead is None or handle is None or handle._actor_id == dead._actor_id:  # noqa: SLF001
                # No successor: ``call`` fails for good (its caller is told so), and is not sent
                # to one that starts later; the others cut off wait for their own turn.
                self._sent = [(c, h) for c, h in self._sent if c is not call]
                return False
            self._move_to(handle, dead, call)
            return call._ref is not failed  # noqa: SLF001

    def _lookup_of(self, dead: Any) -> _Lookup:  # noqa: ANN401 - a Ray ActorHandle
        """The one lookup of the host that runs after ``dead`` (made now if none is under way).

        Called with the lock held. A lookup is kept until a newer stop needs one.
        """
        key = dead._actor_id  # noqa: SLF001 - Ray's handle has no public id
        if self._lookup is None or self._lookup.dead != key:
            self._lookup = _Lookup(key)
        return self._lookup

    def _move_to(self, handle: Any, dead: Any, call: RayEventual[Any] | None = None) -> None:  # noqa: ANN401 - Ray ActorHandles
        """Send later calls to ``handle``, and to it now every call ``dead`` did not answer.

        In the order they were sent; ``call`` (whose reader found ``dead`` gone) among them.
        Called with the lock held.
        """
        self._handle = handle
        kept: list[tuple[RayEventual[Any], Any]] = []
        resent: dict[object, object] = {}  # client -> its number last sent to ``handle``
        for other, sent_to in self._sent:
            if other._done is not None or other._error is not None:  # noqa: SLF001
                continue
            if sent_to._actor_id == dead._actor_id and (  # noqa: SLF001
                other is call or not _answered(other._ref)  # noqa: SLF001
            ):
                _, _, args, ordered = other._call  # noqa: SLF001
                client, seq = args[-2:] if ordered else (None, None)
                if ordered:  # the calls ``dead`` answered are not waited for
                    args = (*args, resent.get(client, -1))
                if not _send_again(other, handle, args):
                    continue  # its reader finds it failed, and cannot forward it again
                if ordered:  # the next names this one: it was sent
                    resent[client] = seq
                other._after = ordered  # noqa: SLF001
                kept.append((other, handle))
            else:
                kept.append((other, sent_to))
        self._sent = kept

    def send_again_plain(self, call: RayEventual[Any], failed: ray.ObjectRef[Any]) -> bool:
        """Send ``call`` again without the number it follows; whether it was sent.

        For a successor of an earlier version, whose method takes no such number: every call
        sent to it with one goes again, in the order they were sent (read or not, as a forward
        sends them), and then waits for the calls its predecessor answered, as such a service
        always did.
        """
        with self._lock:
            if call._ref is not failed:  # noqa: SLF001 - sent again already
                return True
            kept = next((h for c, h in self._sent if c is call), None)
            if kept is None:  # forgotten as answered: it goes again with the others
                kept = self._handle
                self._sent.append((call, kept))
            for other, sent_to in self._sent:
                if not other._after or sent_to._actor_id != kept._actor_id:  # noqa: SLF001
                    continue
                other._after = False  # noqa: SLF001
                # Without the number; one Ray does not take, its reader finds failed.
                _send_again(other, sent_to, other._call[2])  # noqa: SLF001
            return call._ref is not failed  # noqa: SLF001

    def incarnation(self, *, timeout_s: float = 60.0) -> str:
        """Which start of the host answers now (a new value after each restart)."""
        return self._ask_actor("incarnation", timeout_s)

    def node_id(self, *, timeout_s: float = 60.0) -> str:
        """The Ray node the host runs on (the head node)."""
        return self._ask_actor("node_id", timeout_s)

    def _ask_actor(self, method: str, timeout_s: float) -> str:
        """One of the host actor's own methods (not the hosted object's), waited for.

        Asked of the host running under the name now: if the one this handle holds was
        stopped and another of its name started since, of that one (as calls go to it too).
        """
        handle = self._handle
        try:
            try:
                found: str = ray.get(getattr(handle, method).remote(), timeout=timeout_s)
            except ActorDiedError:
                running = self._running()
                if running is None or running._actor_id == handle._actor_id:  # noqa: SLF001
                    raise
                with self._lock:
                    if self._handle is handle:  # as on a forward: calls cut off go there too
                        self._move_to(running, handle)
                found = ray.get(getattr(running, method).remote(), timeout=timeout_s)
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
        groups stay, and its service's lease is ended (it is detached, to outlive the host's
        process while Ray restarts it). Ray kills asynchronously: without the wait, starting a
        host of the same name at once could find the dying actor.
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
                # Gone (or its name is another actor's already): so is its service's lease.
                gone = running._actor_id.hex()  # noqa: SLF001 - identity
                end_lease_of(gone, timeout_s=max(0.1, deadline - time.monotonic()))
                return
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


def _send_again(call: RayEventual[Any], handle: Any, args: tuple[object, ...]) -> bool:  # noqa: ANN401 - a Ray ActorHandle
    """Send ``call`` (its host's method and the object's) to ``handle`` again, with ``args``.

    Whether Ray took it; if not, ``call`` keeps the reference that failed.
    """
    runs, method, _, _ = call._call  # noqa: SLF001 - this module's own class
    if not hasattr(handle, runs):  # a successor of an earlier version: no group of polls
        runs = "wait"
    try:
        call._ref = getattr(handle, runs).remote(method, *args)  # noqa: SLF001
    except RayError:
        return False
    return True


def _answered(ref: ray.ObjectRef[Any]) -> bool:
    """Whether ``ref``'s call was answered by the host it went to (not: the host died first).

    One not answered yet counts as not answered: the caller knows its host is dead.
    """
    ready, _ = ray.wait([ref], timeout=0, fetch_local=False)
    return bool(ready) and not _died_on(ref)


def _died_on(ref: ray.ObjectRef[Any]) -> bool:
    """Whether a ready ``ref`` holds its host's death, not a reply (or the call's own error)."""
    try:
        ray.get(ref, timeout=0)
    except ActorDiedError:
        return True
    except RayError:
        pass  # the call failed on its own: that is its answer
    return False


def start_host(
    name: str,
    factory: Callable[[], object],
    *,
    timeout_s: float = 120.0,
    waiting_calls: int = WAITING_CALLS,
    polling_calls: int = POLLING_CALLS,
) -> RemoteHost:
    """Start (or find, if it runs already) the named, detached host actor of ``factory()``.

    ``factory`` must be picklable (a class, or a ``functools.partial`` of one): it runs in the
    host's own process. Its class names the methods the host calls for others in a
    ``HOSTED_METHODS`` frozenset; no other is called. The host lives in `NAMESPACE`, on the
    head node, and outlives the driver that started it; Ray restarts it if its process dies.
    ``waiting_calls`` and ``polling_calls``: the most calls waiting for a replica, and long
    polls of events, it runs at once (each kind apart from the other, and from the rest).
    """
    handle = (
        _host_class(waiting_calls, polling_calls)
        .options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            # On the head node, as Ray's own controllers are: a worker node that leaves (a spot
            # reclaim, a scale-down) must not take the service with it.
            resources={HEAD_RESOURCE: _HEAD_SHARE},
        )
        .remote(factory)
    )
    host = RemoteHost(handle, name)
    try:
        ray.get(handle.incarnation.remote(), timeout=timeout_s)  # once ``factory()`` ran
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
