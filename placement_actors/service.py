"""The placement service on a Ray cluster, for controllers in other processes.

`PlacementClient.serve(address)` starts both actors inside a named, detached Ray actor
(`SERVICE_NAME` in the ``placement-actors`` namespace); `PlacementClient.connect(address)` lets any
driver of the cluster send it the same message values and get the same replies. A
`PlacementResult`'s IP, port and GPU-id futures come back as `RayEventual` values:
``get(timeout=...)`` or ``await`` them. The service, its ledger and its placement groups outlive
every client.

The cluster's events (`NodeJoined`, `NodeLost`, `ReplicaLost`, `ReplicaReplaced`, `ReplicaMoved`)
reach clients
in other processes too: a pykka `Subscribe` cannot cross processes, so the service subscribes a
listener of its own at start, which keeps the last `EVENT_BUFFER` events, each numbered
(`ServiceEvent`). `PlacementClient.events` long-polls them, `PlacementClient.watch` follows them
for ever.

Ray is imported only when a client connects or serves (`placement_actors.backends.ray`), so the
command line can import this module for its values without loading Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Self, TypeVar

import pykka

from placement_actors.actors.mailbox import KeepServingActor, why_stopped
from placement_actors.actors.messages import (
    PROMPT_QUERIES,
    AnswerNow,
    BundleGpusKnown,
    BundleProbed,
    BundleProbeFailed,
    ClusterView,
    GetClusterView,
    GetDefragmentationPlan,
    GetPlacement,
    GetPlacementFailure,
    GetReplicaGroups,
    GpusInUse,
    GroupRescheduling,
    MoveReplica,
    NodeJoined,
    NodeLost,
    Place,
    PlacedMany,
    PlaceMany,
    Placement,
    PlacementGroupFailed,
    PlacementGroupReady,
    PlacementGroupTimedOut,
    PlanReplica,
    Release,
    RemoveReplicaGroups,
    ReplicaFailed,
    ReplicaLost,
    ReplicaMoved,
    ReplicaReplaced,
    Subscribe,
    Unsubscribe,
)
from placement_actors.domain.deployments import is_deployment_name
from placement_actors.domain.errors import (
    BackendError,
    InvalidSpecError,
    PlacementError,
    ServiceRunningError,
    StalePlacementError,
    UnknownMessageError,
)
from placement_actors.domain.limits import DEFAULT_MAX_REMOTE_REPLICAS
from placement_actors.domain.results import (
    BundleEndpoint,
    Eventual,
    PlacementResult,
    ReplicaPlacement,
)
from placement_actors.domain.validation import check_count, check_text
from placement_actors.settings import head_exclusion
from placement_actors.wiring import start_on_ray

if TYPE_CHECKING:
    from placement_actors.backends.ray import RemoteHost

__all__ = [
    "CLIENT_MESSAGES",
    "EVENT_BUFFER",
    "MAX_CLIENT_SEQ",
    "MAX_EVENT_BATCH",
    "MAX_EVENT_WAIT_S",
    "ORDERED_CLIENTS",
    "ORDER_FIRST_WAIT_S",
    "ORDER_WAIT_S",
    "SERVICE_NAME",
    "ClientOrder",
    "EventBuffer",
    "EventNumber",
    "EventsMissed",
    "PlacementClient",
    "PlacementHost",
    "ServiceEvent",
]

SERVICE_NAME = "placement-actors-service"

EVENT_BUFFER = 10_000
"""How many of the latest events the service keeps for clients."""
MAX_EVENT_BATCH = 1_000
"""The most events one `PlacementClient.events` reply carries (ask again for the rest)."""
MAX_EVENT_WAIT_S = 60.0
"""The longest one `PlacementClient.events` call may wait for an event."""

ORDERED_CLIENTS = 4_096
"""Clients whose message order the service keeps track of at once (`ClientOrder`)."""
_HELD_EVENTS = 256
"""Events of a released name held until it is placed again (one per replica replaced or moved
in between: a few)."""

RELEASED_REMEMBERED = 4096
"""Released deployments the service remembers, so that an event sent before a `Release` and
recorded after it cannot bring their endpoints back (the latest released are kept)."""

ORDER_WAIT_S = 5.0
"""The longest a client's message waits for the one the client sent before it."""
ORDER_FIRST_WAIT_S = 0.5
"""The same, for a client the service has not seen before (or since it started again)."""
MAX_CLIENT_SEQ = 2**63 - 1
"""The largest message number a client may send."""

_INTERNAL_EVENTS = (
    ReplicaFailed,
    PlacementGroupReady,
    PlacementGroupFailed,
    PlacementGroupTimedOut,
    BundleProbed,
    BundleProbeFailed,
    BundleGpusKnown,
    NodeJoined,
    NodeLost,
    GroupRescheduling,
    GpusInUse,
)
"""Events the service raises itself (its actors, its cluster watcher): never taken from a client."""
_SUBSCRIPTIONS = (Subscribe, Unsubscribe)
CLIENT_MESSAGES = (
    Place,
    PlaceMany,
    Release,
    MoveReplica,
    RemoveReplicaGroups,
    GetClusterView,
    GetPlacement,
    GetPlacementFailure,
    GetDefragmentationPlan,
    GetReplicaGroups,
    AnswerNow,
)
"""What a client may send the service (`PlacementClient.ask`): its commands and queries."""
_REPLY_PAD_S = 30.0
"""How much longer than its own wait a client waits for an `events` reply."""
_LATEST_WAIT_S = 60.0
"""How long a watch that starts from now waits for the service's latest event number."""
_Outcome = tuple[str, Any]  # ("ok", reply) or ("error", PlacementError)
_Polled = tuple[tuple["ServiceEvent", ...], "EventNumber"]  # events, and the next position


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


# -- events for clients ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsMissed:
    """Marker: events an asker will never get, in place of them.

    It comes first in a reply when the asker fell more than `EVENT_BUFFER` events behind (the
    oldest events kept follow it), or when the service started again since the asker's last
    event (its numbering began anew; the new run's events follow).

    Attributes:
        after: the sequence number the asker asked after.
        missed: how many events are gone; ``None`` when the service started again (its earlier
            events are all gone, and how many there were is not known).
    """

    after: int
    missed: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEvent:
    """One event of the cluster as the service recorded it.

    Attributes:
        sequence: its number: 1 for the first event of the service's run, one more for each
            later one. An `EventsMissed` marker carries the number of the last missed event
            (0 when the service started again), so that passing it as ``after`` goes on.
        at: when the service recorded it, in seconds since the epoch (the service's clock).
        event: a `NodeJoined`, `NodeLost`, `ReplicaLost`, `ReplicaReplaced` or `ReplicaMoved`
            (whose placement's futures resolve through the service, as a result's do), or an
            `EventsMissed` marker.
    """

    sequence: int
    at: float
    event: object


class EventNumber(int):
    """An event's sequence number that remembers the run of the service that numbered it.

    What a client hands out (`PlacementClient.events`' positions, the ``sequence`` of the events
    it returns and a watch yields, `PlacementClient.last_event`) is one: passed back as
    ``after``, it tells its own run, whatever else the client read since, so a restart of the
    service is never taken for more of the same run. It is an ``int`` in every other way; a plain
    ``int`` is taken as numbered by the run the client last heard from `events`.
    """

    run: str

    def __new__(cls, value: int, run: str) -> Self:
        """``value``, numbered by ``run``."""
        number = super().__new__(cls, value)
        number.run = run
        return number

    def __reduce__(self) -> tuple[type[EventNumber], tuple[int, str]]:
        """Pickled with its run."""
        return (EventNumber, (int(self), self.run))


def _numbered(
    found: tuple[ServiceEvent, ...], position: int, run: str
) -> tuple[tuple[ServiceEvent, ...], EventNumber]:
    """``found`` and ``position`` with their numbers as `EventNumber` values of ``run``."""
    return (
        tuple(dataclasses.replace(e, sequence=EventNumber(e.sequence, run)) for e in found),
        EventNumber(position, run),
    )


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_all(waiters: Mapping[asyncio.Future[None], asyncio.AbstractEventLoop]) -> None:
    for waiter, loop in waiters.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: no one waits there
            loop.call_soon_threadsafe(_wake, waiter)


class EventBuffer:
    """The last ``capacity`` events, numbered from 1, for askers that long-poll.

    `append` may be called from any thread; `wait` is a coroutine that never blocks its event
    loop (an append wakes it through ``loop.call_soon_threadsafe``).

    Args:
        capacity: how many events are kept; older ones are dropped (see `EventsMissed`).
    """

    def __init__(self, capacity: int = EVENT_BUFFER) -> None:
        """Keep nothing yet."""
        check_count(capacity, "capacity", minimum=1)
        self._lock = threading.Lock()
        self._kept: deque[ServiceEvent] = deque(maxlen=capacity)
        self._last = 0
        self.run = uuid.uuid4().hex
        """Which run of the service numbers these events (a new one for each buffer)."""
        # Each waiting asker's future, and its loop: one removed in O(1) when its wait ends.
        self._waiters: dict[asyncio.Future[None], asyncio.AbstractEventLoop] = {}
        self._closed = False

    @property
    def last(self) -> int:
        """The sequence number of the latest event (0 before the first)."""
        with self._lock:
            return self._last

    def append(self, event: object) -> ServiceEvent:
        """Number and keep ``event``; wake every waiting asker."""
        with self._lock:
            self._last += 1
            kept = ServiceEvent(sequence=self._last, at=time.time(), event=event)
            self._kept.append(kept)
            waiters, self._waiters = self._waiters, {}
        _wake_all(waiters)
        return kept

    def close(self) -> None:
        """No event will come: wake every waiting asker, and let later ones wait no more."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = self._waiters, {}
        _wake_all(waiters)

    def after(
        self, after: int, limit: int = MAX_EVENT_BATCH, *, run: str = ""
    ) -> tuple[tuple[ServiceEvent, ...], int]:
        """The events numbered after ``after`` (at most ``limit``), and where to go on from.

        ``run``: the `run` that numbered ``after``, if the asker knows it; another run's number
        gets the restart marker, however it compares with this run's numbers.

        Returns:
            The events, oldest first, behind an `EventsMissed` marker when some are gone; and
            the sequence number to pass as ``after`` next time (the last one returned, or
            ``after`` itself when there is nothing new).

        Raises:
            InvalidSpecError: ``after`` is not a count, or ``limit`` not in 1..`MAX_EVENT_BATCH`.
        """
        _check_after(after, limit, run)
        with self._lock:
            return self._after(after, limit, run)

    async def wait(
        self, after: int, wait_s: float, limit: int = MAX_EVENT_BATCH, *, run: str = ""
    ) -> tuple[tuple[ServiceEvent, ...], int]:
        """As `after`, but wait up to ``wait_s`` seconds for an event when there is none yet.

        Raises:
            InvalidSpecError: a malformed argument; ``wait_s`` must be in 0..`MAX_EVENT_WAIT_S`.
        """
        _check_after(after, limit, run)
        _check_wait(wait_s, zero=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            with self._lock:
                found = self._after(after, limit, run)
                remaining = deadline - loop.time()
                if found[0] or remaining <= 0 or self._closed:
                    return found
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters[waiter] = loop
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass  # one more look, then the deadline ends the loop
            finally:
                with self._lock:
                    self._waiters.pop(waiter, None)

    def _after(self, after: int, limit: int, run: str) -> tuple[tuple[ServiceEvent, ...], int]:
        oldest = self._kept[0].sequence if self._kept else self._last + 1
        marker: ServiceEvent | None = None
        if after > self._last or (run and run != self.run):  # numbered by an earlier run
            marker = self._marker(after, None, oldest)
            after = oldest - 1
        elif after < oldest - 1:  # fell behind: the events in between were dropped
            marker = self._marker(after, oldest - 1 - after, oldest)
            after = oldest - 1
        start = after - oldest + 1
        end = min(start + limit, len(self._kept))
        if start > len(self._kept) // 2:  # the newest (a reader keeping up): read from that end
            newest = itertools.islice(reversed(self._kept), len(self._kept) - end, None)
            found = tuple(reversed(tuple(itertools.islice(newest, max(end - start, 0)))))
        else:
            found = tuple(itertools.islice(self._kept, start, end))
        if marker is not None:
            found = (marker, *found)
        return found, (found[-1].sequence if found else after)

    @staticmethod
    def _marker(after: int, missed: int | None, oldest: int) -> ServiceEvent:
        return ServiceEvent(
            sequence=oldest - 1, at=time.time(), event=EventsMissed(after=after, missed=missed)
        )


def _plain_number(after: object) -> object:
    """``after`` as the plain ``int`` the host checks (an `EventNumber` sends its run apart)."""
    return int(after) if isinstance(after, EventNumber) else after


def _check_after(after: object, limit: object, run: object = "") -> None:
    check_count(after, "after")
    check_text(run, "run", longest=64)
    check_count(limit, "limit", minimum=1)
    if isinstance(limit, int) and limit > MAX_EVENT_BATCH:
        msg = f"limit must be at most {MAX_EVENT_BATCH}"
        raise InvalidSpecError(msg, field="limit")


_R = TypeVar("_R")


async def _awaited(eventual: Eventual[_R]) -> _R:
    """``await eventual`` as a coroutine (what ``asyncio.wait_for`` takes)."""
    return await eventual


def _poll_waits(wait_s: float, timeout_s: float | None) -> Iterator[float]:
    """How long each long poll of a watch waits: ``wait_s``, less as ``timeout_s`` runs out."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        wait = wait_s if deadline is None else min(wait_s, deadline - time.monotonic())
        if wait <= 0:
            return
        yield wait


def _check_total(timeout_s: object) -> None:
    """Refuse a ``timeout_s`` that is neither ``None`` nor a finite number of seconds >= 0."""
    if timeout_s is not None and (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not (math.isfinite(timeout_s) and timeout_s >= 0)
    ):
        msg = "timeout_s must be a finite number of seconds, or None"
        raise InvalidSpecError(msg, field="timeout_s")


def _check_wait(wait_s: object, *, zero: bool) -> None:
    """Refuse a ``wait_s`` that is not a number of seconds up to `MAX_EVENT_WAIT_S`."""
    if (
        isinstance(wait_s, bool)
        or not isinstance(wait_s, int | float)
        or not (wait_s >= 0 if zero else wait_s > 0)
        or not wait_s <= MAX_EVENT_WAIT_S  # NaN fails every comparison
    ):
        low = "[0" if zero else "(0"
        msg = f"wait_s must be a number of seconds in {low}, {MAX_EVENT_WAIT_S:g}]"
        raise InvalidSpecError(msg, field="wait_s")


class ClientOrder:
    """Each client's messages reach the placement actor in the order the client sent them.

    The service's Ray actor is an asyncio actor, and Ray does not keep the order of calls to such
    an actor, not even from one caller: a query sent right behind a `Place` could otherwise reach
    the placement actor first and miss it. A client numbers its messages (0, 1, 2, ...); a
    message waits until the one before it has been handed to the actor, but never longer than
    ``wait_s`` (the one before may be lost). A message of a client not seen before (or no longer
    remembered) waits at most ``first_wait_s`` for the one before it: that one may be on its way,
    or gone with an earlier run of the service.

    Args:
        clients: how many clients' positions are remembered (the least recent are forgotten).
        wait_s: the longest a message waits for the one before it.
        first_wait_s: the same, for a client not seen before.
    """

    def __init__(
        self,
        *,
        clients: int = ORDERED_CLIENTS,
        wait_s: float = ORDER_WAIT_S,
        first_wait_s: float = ORDER_FIRST_WAIT_S,
    ) -> None:
        """Remember no client yet."""
        check_count(clients, "clients", minimum=1)
        self._clients = clients
        self._wait_s = wait_s
        self._first_wait_s = first_wait_s
        self._positions: OrderedDict[str, _Position] = OrderedDict()
        self._changed = asyncio.Condition()

    @staticmethod
    def check(client: object, seq: object, after: object = None) -> None:
        """Refuse a client id that is not short text, or a number that is not a count.

        ``after``, when given, must be -1 or a number below ``seq``.

        Raises:
            InvalidSpecError: one of them is malformed.
        """
        check_text(client, "client", longest=64)
        check_count(seq, "seq")
        if isinstance(seq, int) and seq > MAX_CLIENT_SEQ:
            msg = f"seq must be at most {MAX_CLIENT_SEQ}"
            raise InvalidSpecError(msg, field="seq")
        below = seq if isinstance(seq, int) else 0  # a count by now
        if after is not None and (
            isinstance(after, bool) or not isinstance(after, int) or not -1 <= after < below
        ):
            msg = f"after must be -1 or a number below seq, got {after!r:.40}"
            raise InvalidSpecError(msg, field="after")

    @contextlib.asynccontextmanager
    async def turn(self, client: str, seq: int, after: int | None = None) -> AsyncIterator[None]:
        """Wait for the turn of message ``seq`` of ``client``; the block hands it to the actor.

        A message waits for the one numbered ``after`` (by default ``seq - 1``; -1: none), and
        so for every one before that: a client's calls sent again to a successor of a stopped
        service name the one sent again before them, as the others were answered already.
        When the wait for a missing message ends, only that gap is skipped: the lowest-numbered
        message waiting goes first, then the others in their order. A message whose wait is
        cancelled, or whose block fails, gives up its turn: the next does not wait for it.
        """
        if not client:
            yield
            return
        async with self._changed:
            position = self._position(client)
            position.waiting.add(seq)
        went = False
        try:
            async with self._changed:
                while not position.may_go(seq, after):
                    try:
                        await asyncio.wait_for(
                            self._changed.wait_for(lambda: position.may_go(seq, after)),
                            self._first_wait_s if position.next is None else self._wait_s,
                        )
                    except TimeoutError:  # the one before never came: skip that gap only
                        position.skip_to(min(position.waiting))
                        self._changed.notify_all()
            went = True
            yield
        finally:
            async with self._changed:
                position.done(seq, went=went)
                self._changed.notify_all()

    def _position(self, client: str) -> _Position:
        """``client``'s position, new for a client not seen before.

        Beyond `ORDERED_CLIENTS`, the least recent clients with nothing waiting are forgotten.
        """
        position = self._positions.get(client)
        if position is None:
            position = self._positions[client] = _Position()
        self._positions.move_to_end(client)
        while len(self._positions) > self._clients:
            oldest, kept = next(iter(self._positions.items()))
            if kept.waiting:  # never forget a client with a message waiting
                break
            del self._positions[oldest]
        return position


@dataclass(slots=True)
class _Position:
    """Where one client's messages stand: the lowest number not handed over, and who waits."""

    next: int | None = None
    """``None`` until the first of the client's messages goes."""
    waiting: set[int] = dataclasses.field(default_factory=set)
    gone: set[int] = dataclasses.field(default_factory=set)
    """Numbers above ``next`` that will never be handed over (their wait was cancelled)."""

    def may_go(self, seq: int, after: int | None = None) -> bool:
        """Whether message ``seq`` may be handed over now.

        So when every one up to ``after`` (``seq - 1`` unless given) was, or is gone.
        """
        return (self.next or 0) > (seq - 1 if after is None else after)

    def done(self, seq: int, *, went: bool) -> None:
        """Message ``seq`` was handed over (``went``), or gave up its turn while waiting."""
        self.waiting.discard(seq)
        if went or (self.next is not None and seq < self.next):
            self.skip_to(seq + 1)
        else:
            self.gone.add(seq)
            if self.next is not None:
                self.skip_to(self.next)

    def skip_to(self, seq: int) -> None:
        """Every number below ``seq`` is done; so is each next one that is gone."""
        self.next = max(self.next or 0, seq)
        while self.next in self.gone:
            self.next += 1
        self.gone = {g for g in self.gone if g > self.next}


class _KnownReplicas:
    """The group of each name the service last answered with, by deployment: what `endpoint` reads.

    Thread-safe: the listener's thread adds what events tell, the host's loop the rest. Only
    the latest attempt of a name is kept (a moved or replaced replica's group is made again under
    the same name), so it grows with the groups, not with their history; a deployment's groups
    go when it is released.
    """

    def __init__(self, *, released: int = RELEASED_REMEMBERED) -> None:
        self._lock = threading.Lock()
        self._by_group: dict[str, ReplicaPlacement] = {}
        self._by_deployment: dict[str, set[str]] = {}
        # Released names -> events told of them since (held until a Place of the name again).
        self._released: OrderedDict[str, list[ReplicaPlacement]] = OrderedDict()
        self._released_kept = released
        self._since: dict[str, int] = {}  # placed again: its first attempt (older ones are gone)

    def keep(self, replicas: Iterable[ReplicaPlacement], *, placed: str | None = None) -> None:
        """A reply told of ``replicas`` (a late one keeps the newest); ``placed``: of its Place.

        A `Place` (or a query) answered after a `Release` places its deployment again: events
        told of its new groups before the reply was read are kept then, the older ones dropped
        (the planner numbers attempts in the order it makes groups).
        """
        replicas = tuple(replicas)
        with self._lock:
            held = self._released.pop(placed, None) if placed is not None else None
            if held is not None and placed is not None and replicas:
                self._since[placed] = since = min(r.attempt for r in replicas)
                replicas += tuple(r for r in held if r.attempt >= since)
            for replica in replicas:
                self._put(replica)

    def keep_unless_released(self, replica: ReplicaPlacement) -> None:
        """An event told of ``replica``: kept unless its deployment's `Release` came first.

        The listener runs on its own thread: an event sent before a `Release` was handled may
        be recorded after its reply was, and must not bring the released groups back. One
        recorded before the reply of a `Place` of the name again is held until that reply.
        """
        with self._lock:
            held = self._released.get(replica.deployment)
            if held is not None:
                if len(held) < _HELD_EVENTS:
                    held.append(replica)
            elif replica.attempt >= self._since.get(replica.deployment, 0):
                self._put(replica)

    def _put(self, replica: ReplicaPlacement) -> None:
        kept = self._by_group.get(replica.group_name)
        if kept is None or kept.attempt <= replica.attempt:
            self._by_group[replica.group_name] = replica
            self._by_deployment.setdefault(replica.deployment, set()).add(replica.group_name)

    def forget(self, deployment: str) -> None:
        """``deployment`` was released: its groups are no longer resolvable."""
        with self._lock:
            for name in self._by_deployment.pop(deployment, ()):
                self._by_group.pop(name, None)
            self._since.pop(deployment, None)
            self._released[deployment] = []  # events on their way: held, not kept
            self._released.move_to_end(deployment)
            while len(self._released) > self._released_kept:
                self._released.popitem(last=False)

    def get(self, group_name: object) -> ReplicaPlacement | None:
        """The latest group of that name, if the service answered with one."""
        with self._lock:
            return self._by_group.get(group_name) if isinstance(group_name, str) else None


class _EventListener(KeepServingActor):
    """Subscribed to the placement actor in the service's process: records each event it is told.

    A `KeepServingActor`: a failure to record one event is logged, and the next is recorded.
    """

    def __init__(self, record: Callable[[Any], None]) -> None:
        super().__init__()
        self._handlers = dict.fromkeys(
            (NodeJoined, NodeLost, ReplicaLost, ReplicaReplaced, ReplicaMoved), record
        )


# -- the host -----------------------------------------------------------------------------------


class PlacementHost:
    """What runs inside the service's Ray actor: the two actors, and the futures they handed out.

    Clients call `handle`, `endpoint`, `events` and `last_event` (``HOSTED_METHODS``), nothing
    else.

    It subscribes a listener of its own to the placement actor and keeps the cluster's events
    for clients (`events`).

    Args:
        ready_timeout_s: how long Ray may take to make each placement group ready.
        ignore_head_node: keep local replicas off head nodes (``None``: the environment decides).
        max_remote_replicas: the most replicas one remote deployment may ask for.
        event_buffer: how many of the latest events are kept for clients.
        learn_gpu_ids: probe bundles from inside, so that ``gpu_ids`` are Ray's (`start_on_ray`).
    """

    HOSTED_METHODS: ClassVar[frozenset[str]] = frozenset(
        {"handle", "endpoint", "events", "last_event"}
    )
    DEFAULT_LOOP_METHODS: ClassVar[frozenset[str]] = frozenset({"handle"})
    """Served only on the host's default loop: `ClientOrder`'s waits belong to that loop."""

    def __init__(
        self,
        *,
        ready_timeout_s: float = 60.0,
        ignore_head_node: bool | None = None,
        max_remote_replicas: int = DEFAULT_MAX_REMOTE_REPLICAS,
        event_buffer: int = EVENT_BUFFER,
        learn_gpu_ids: bool = False,
    ) -> None:
        """Start the actors on the cluster this process belongs to (`start_on_ray`)."""
        self._events = EventBuffer(event_buffer)
        self._order = ClientOrder()
        self._replicas = _KnownReplicas()
        self._placement = start_on_ray(
            ready_timeout_s=ready_timeout_s,
            ignore_head_node=ignore_head_node,
            max_remote_replicas=max_remote_replicas,
            learn_gpu_ids=learn_gpu_ids,
        )
        self._listener = _EventListener.start(self._record)
        try:
            self._placement.ask(Subscribe(self._listener), timeout=30)
            self._register_recovered()
        except BaseException:
            self._listener.stop()
            self._placement.stop(timeout=30)
            raise
        threading.Thread(  # once the service stops, long polls are told so, not left waiting
            target=self._close_events_when_stopped, name="placement host: events", daemon=True
        ).start()

    def _close_events_when_stopped(self) -> None:
        self._placement.actor_stopped.wait()
        self._events.close()

    def _stopped(self) -> _Outcome | None:
        """The error a client gets once the service in this host has stopped; else ``None``."""
        if self._placement.is_alive():
            return None
        return "error", _service_stopped(why_stopped(self._placement))

    def _register_recovered(self) -> None:
        """Make the endpoints of deployments an earlier run placed resolvable again.

        A client of the earlier run asks for them by group name and attempt, which recovery keeps.
        """
        view = self._placement.ask(GetClusterView(), timeout=30)
        for name in view.deployments if isinstance(view, ClusterView) else ():
            found = self._placement.ask(GetPlacement(name), timeout=30)
            if isinstance(found, Placement) and found.result is not None:
                self._portable_result(found.result)

    async def handle(
        self, message: object, client: str = "", seq: int = 0, after: int | None = None
    ) -> _Outcome:
        """Ask the actor that handles ``message``; never raises (errors travel as values).

        A client that numbers its messages (``client``, ``seq``: `PlacementClient` does) has
        them reach the actor in its own order (`ClientOrder`), which Ray alone does not keep.
        ``after``: the number of the message this one follows, when not ``seq - 1`` (a call
        sent again to this service after the one it went to was stopped).

        `PlanReplica` is not served: replicas are planned by `Place`, whose ledger decides first.
        Nor are the events the service raises itself (`ReplicaFailed`, the planner's group and
        probe events, the cluster watcher's `NodeJoined`, `NodeLost`, `GroupRescheduling` and
        `GpusInUse`): from a client they could only make the ledger disagree with Ray.
        `Subscribe` and `Unsubscribe` need an actor in the service's process: clients use
        `events` instead.
        """
        try:
            ClientOrder.check(client, seq, after)
        except InvalidSpecError as exc:
            return "error", exc
        async with self._order.turn(client, seq, after):
            refused = _refusal(message)
            try:
                pending = None if refused is not None else self._placement.ask(message, block=False)
            except pykka.ActorDeadError:
                return "error", _service_stopped(why_stopped(self._placement))
        if pending is None:
            return "error", refused
        released = (
            message.deployment
            if isinstance(message, Release) and is_deployment_name(message.deployment)
            else None
        )
        try:
            reply = await pending
        except PlacementError as exc:
            if released is not None and not await self._placed(released):  # went all the same
                self._replicas.forget(released)
            return "error", exc
        except pykka.ActorDeadError:
            return "error", _service_stopped(why_stopped(self._placement))
        if released is not None:
            self._replicas.forget(released)  # its endpoints are no longer resolvable
        return "ok", self._portable_reply(reply)

    async def _placed(self, deployment: str) -> bool:
        """Whether ``deployment`` is placed (a `Release` that failed may have gone through)."""
        try:
            found = await self._placement.ask(AnswerNow(GetPlacement(deployment)), block=False)
        except (PlacementError, pykka.ActorDeadError):
            return True  # not known to be gone: its endpoints stay
        return not isinstance(found, Placement) or found.result is not None

    def _portable_reply(self, reply: object) -> object:
        """``reply`` with its results' futures made resolvable from another process."""
        if isinstance(reply, PlacementResult):
            return self._portable_result(reply)
        if isinstance(reply, Placement) and reply.result is not None:
            return dataclasses.replace(reply, result=self._portable_result(reply.result))
        if isinstance(reply, ReplicaMoved) and reply.placement is not None:
            return dataclasses.replace(reply, placement=self._portable(reply.placement))
        if isinstance(reply, PlacedMany):
            return PlacedMany(
                outcomes=tuple(
                    self._portable_result(o) if isinstance(o, PlacementResult) else o
                    for o in reply.outcomes
                )
            )
        return reply

    async def endpoint(
        self, group_name: str, attempt: int, bundle_index: int, group_id: str = ""
    ) -> _Outcome:
        """A bundle's ``(node_ip, port, gpu_ids)``, once known; an unknown key is an error value.

        Only the current group of each name is kept: an earlier attempt, or another Ray group
        (``group_id``, which tells groups apart across restarts too), is a `StalePlacementError`.
        Once the service has stopped (it stepped down), every endpoint is an error: the service
        that runs now may have moved or removed the group.
        """
        stopped = self._stopped()
        if stopped is not None:
            return stopped
        replica = self._replicas.get(group_name)
        if replica is not None and (
            replica.attempt != attempt or (group_id and replica.group_id != group_id)
        ):
            msg = (
                f"placement group {replica.group_name} was made again since the result asked "
                "about: ask for the deployment's placement again"
            )
            return "error", StalePlacementError(msg, field="group_id")
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
            found = (await bundle.node_ip, await bundle.port, await bundle.gpu_ids)
        except PlacementError as exc:
            return self._stopped() or ("error", exc)
        return self._stopped() or ("ok", found)

    async def events(
        self, after: int, wait_s: float, limit: int = MAX_EVENT_BATCH, run: str = ""
    ) -> _Outcome:
        """The events numbered after ``after``, waiting up to ``wait_s`` for one; see `EventBuffer`.

        ``run``: the run of the service that numbered ``after``, as the asker last heard it.
        The reply is the events, the number to go on from, and this run. Never blocks the
        host's event loop; errors travel as values, as in `handle`. Once the service has
        stopped, the events it raised before are still given; then the reply is its error.
        """
        try:
            found, position = await self._events.wait(after, wait_s, limit, run=run)
        except InvalidSpecError as exc:
            return "error", exc
        if not found and (stopped := self._stopped()) is not None:
            return stopped
        return "ok", (found, position, self._events.run)

    def last_event(self) -> _Outcome:
        """The sequence number of the latest event (0 before the first), and this run."""
        return self._stopped() or ("ok", (self._events.last, self._events.run))

    def _record(
        self, event: NodeJoined | NodeLost | ReplicaLost | ReplicaReplaced | ReplicaMoved
    ) -> None:
        """Keep an event the placement actor told the listener (in the listener's thread)."""
        if isinstance(event, ReplicaReplaced | ReplicaMoved) and event.placement is not None:
            self._replicas.keep_unless_released(event.placement)
            event = dataclasses.replace(event, placement=_stand_ins(event.placement))
        self._events.append(event)

    def _portable_result(self, result: PlacementResult) -> PlacementResult:
        self._replicas.keep(result.replicas, placed=result.deployment.name)
        return dataclasses.replace(result, replicas=tuple(_stand_ins(r) for r in result.replicas))

    def _portable(self, replica: ReplicaPlacement) -> ReplicaPlacement:
        self._replicas.keep((replica,))
        return _stand_ins(replica)

    def stop(self) -> None:
        """Stop both actors and the listener (the placement groups stay)."""
        self._listener.stop()
        self._placement.stop(timeout=30)


def _stand_ins(replica: ReplicaPlacement) -> ReplicaPlacement:
    """``replica`` with each bundle's futures replaced by what a client resolves through us."""
    bundles = []
    for index, bundle in enumerate(replica.bundles):
        stand_in = _RemoteEndpoint(
            group_name=replica.group_name, attempt=replica.attempt, bundle_index=index
        )
        bundles.append(
            dataclasses.replace(bundle, node_ip=stand_in, port=stand_in, gpu_ids=stand_in)
        )
    return dataclasses.replace(replica, bundles=tuple(bundles))


def _service_stopped(why: str) -> BackendError:
    """What a host whose service stopped (``why``, if known) while the host runs on answers."""
    cause = why or ("another service took the namespace's lease (its log says which), or it failed")
    msg = (
        f"the service in this host has stopped: {cause}; stop this host (serve --stop) and "
        "use the service that runs"
    )
    return BackendError(msg, operation="call service")


def _refusal(message: object) -> PlacementError | None:
    """Why the service does not take ``message`` from a client, or ``None`` when it does.

    A client sends the service's commands and queries (`CLIENT_MESSAGES`), nothing else: not
    the events between its own actors, nor pykka's own messages (a stop, a proxy's call or
    attribute), which would reach the placement actor past its handlers.
    """
    if isinstance(message, PlanReplica):
        msg = "the service plans replicas through Place; send Place, not PlanReplica"
        return InvalidSpecError(msg, field="message")
    if isinstance(message, _INTERNAL_EVENTS):
        msg = f"{type(message).__name__} is an event between the service's own actors"
        return InvalidSpecError(msg, field="message")
    if isinstance(message, _SUBSCRIPTIONS):
        msg = (
            f"{type(message).__name__} needs a pykka actor in the service's own process; from "
            "another process, follow the events with PlacementClient.watch or .events"
        )
        return InvalidSpecError(msg, field="message")
    if type(message) not in CLIENT_MESSAGES:
        return UnknownMessageError("the placement service", message)
    return None


def _unwrap(outcome: _Outcome) -> Any:  # noqa: ANN401 - any reply of the protocol
    kind, value = outcome
    if kind == "error":
        raise value
    return value


# -- the client ---------------------------------------------------------------------------------


_TRACKED = 64
"""Unanswered calls a client keeps before it looks which have been answered (then twice as many
as are still unanswered)."""


class PlacementClient:
    """Talks to the placement service running on a Ray cluster.

    Send it the same message values as the actors (`Place`, `Release`, `GetClusterView`,
    `GetPlacement`, ...); replies and errors are the same too. The cluster's events come through
    `events` and `watch` (not `Subscribe`, which needs an actor in the service's process).

    A query is answered at once, even while another client's `Place` is under way: while none
    of this client's own commands is, it is sent as `AnswerNow`. While one is, it waits behind
    it, as it would in the actor's mailbox, so it sees it done.
    """

    def __init__(self, host: RemoteHost) -> None:
        """Wrap a host found by `connect` or started by `serve`."""
        self._host = host
        self._lock = threading.Lock()
        self._id = uuid.uuid4().hex  # with _seq, numbers this client's messages (`ClientOrder`)
        self._run = ""  # the run of the service whose event numbers this client last heard
        self._seq = itertools.count()
        self._commands: list[Any] = []  # this client's commands whose replies have not come
        self._look_at = _TRACKED  # how many of them before looking which have been answered

    def __reduce__(self) -> tuple[type[PlacementClient], tuple[RemoteHost]]:
        """Pickle as the host handle alone (a client may be passed to a Ray task)."""
        return (PlacementClient, (self._host,))

    @classmethod
    def connect(cls, address: str | None = None, *, name: str = SERVICE_NAME) -> PlacementClient:
        """Connect to the running service of the cluster at ``address``.

        Raises:
            BackendError: the cluster cannot be reached, or no service runs there.
        """
        from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray loads here

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
        event_buffer: int = EVENT_BUFFER,
        learn_gpu_ids: bool = False,
    ) -> PlacementClient:
        """Start the service on the cluster at ``address`` (or find it, if it runs already).

        The settings are `PlacementHost`'s; ``learn_gpu_ids`` makes each replica's ``gpu_ids``
        the ids Ray gave its bundles, at the price of a probe task per bundle. With
        ``ignore_head_node`` ``None``, ``PLACEMENT_ACTORS_IGNORE_HEAD_NODE`` in *this* process
        decides (the service's Ray worker does not see the caller's environment).

        One service per Ray namespace: while another runs (a host of another name, or a service
        a driver started with `start_on_ray`), this one is refused.

        Raises:
            ServiceRunningError: another service runs in the namespace.
            BackendError: the cluster cannot be reached, or the service did not start.
        """
        from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray loads here

        on_ray.connect(address)
        on_ray.check_namespace()  # the host, and the groups it makes, are named in this one
        try:
            on_ray.find_host(name)  # it runs: found, not started
        except BackendError:
            holder = on_ray.lease_holder()
            if holder is not None:  # refused here, not by a host that fails to start
                raise ServiceRunningError(holder=holder, namespace=on_ray.NAMESPACE) from None
        factory = functools.partial(
            PlacementHost,
            ready_timeout_s=ready_timeout_s,
            ignore_head_node=head_exclusion(ignore_head_node),
            max_remote_replicas=max_remote_replicas,
            event_buffer=event_buffer,
            learn_gpu_ids=learn_gpu_ids,
        )
        try:
            return cls(on_ray.start_host(name, factory))
        except BackendError as exc:  # another service won a race to start: say so, typed
            holder = on_ray.lease_holder()
            if holder is not None and f"service host {name!r}" not in holder:
                raise ServiceRunningError(holder=holder, namespace=on_ray.NAMESPACE) from exc
            raise

    @property
    def name(self) -> str:
        """The service's Ray actor name."""
        return self._host.name

    def ask_later(self, message: object) -> Eventual[Any]:
        """Send ``message``; the reply arrives later (``get(timeout=...)`` or ``await`` it).

        Raises:
            InvalidSpecError: ``message`` is a `Subscribe` or `Unsubscribe` (use `watch`), or
                cannot be sent to the service.
        """
        if isinstance(message, _SUBSCRIPTIONS):
            refused = _refusal(message)
            assert refused is not None  # noqa: S101 - _refusal refuses every subscription
            raise refused
        with self._lock:  # numbered and sent in one step: the service keeps this order
            if isinstance(message, PROMPT_QUERIES):
                self._commands = self._host.unanswered(self._commands)
                if not self._commands:  # nothing of ours under way: no need to wait in line
                    message = AnswerNow(message)
                return self._send(message)
            sent = self._send(message)
            if not isinstance(message, AnswerNow):
                self._commands.append(sent)
                if len(self._commands) > self._look_at:  # a client that never queries: bounded
                    self._commands = self._host.unanswered(self._commands)
                    self._look_at = max(_TRACKED, 2 * len(self._commands))  # amortised O(1)
            return sent

    def _send(self, message: object) -> Eventual[Any]:
        seq = next(self._seq)
        try:
            return self._host.later(
                "handle", message, self._id, seq, transform=self._reply, ordered=True
            )
        except PlacementError:  # never sent: the next message takes this number
            self._seq = itertools.count(seq)
            raise

    def ask(self, message: object, *, timeout: float = 60.0) -> Any:  # noqa: ANN401 - a reply
        """Send ``message`` and wait for the reply; the actor's typed errors are raised here."""
        return self.ask_later(message).get(timeout=timeout)

    def events(
        self, after: int = 0, *, wait_s: float = 0.0, limit: int = MAX_EVENT_BATCH
    ) -> tuple[tuple[ServiceEvent, ...], int]:
        """The service's events numbered after ``after``; waits up to ``wait_s`` for one.

        The service keeps the last `EVENT_BUFFER` events of its run (``after=0``: all it still
        keeps). A client more than that behind gets an `EventsMissed` marker first, then the
        oldest events still kept; so does a client whose ``after`` comes from an earlier run of
        the service (the marker's ``missed`` is then ``None``, and the new run's events follow).
        The numbers it returns are `EventNumber` values, which remember their run: passed back,
        they tell it whatever the numbers. A plain ``int`` is taken as numbered by the run this
        client's `events` calls last heard; one from elsewhere (another client, a command line)
        is known to be another run's only while it is above the new run's last number.
        A `ReplicaReplaced`'s placement resolves through the service, as a result's does.

        Args:
            after: the last sequence number the caller has seen (0: none).
            wait_s: how long to wait when there is no event yet (0 to `MAX_EVENT_WAIT_S`).
            limit: the most events to return (1 to `MAX_EVENT_BATCH`).

        Returns:
            The events, oldest first (empty when ``wait_s`` passed without one), and the sequence
            number to pass as ``after`` next time.

        Raises:
            InvalidSpecError: a malformed argument.
            BackendError: the service does not answer (it stopped, or the cluster is gone).
        """
        pending = self.events_later(after, wait_s=wait_s, limit=limit)
        try:
            found: tuple[tuple[ServiceEvent, ...], int] = pending.get(timeout=wait_s + _REPLY_PAD_S)
        except pykka.Timeout as exc:  # the caller chose no timeout: the service did not answer
            raise self._silent(wait_s) from exc
        return found

    def events_later(
        self, after: int = 0, *, wait_s: float = 0.0, limit: int = MAX_EVENT_BATCH
    ) -> Eventual[tuple[tuple[ServiceEvent, ...], int]]:
        """`events` without waiting here: the reply arrives later (``await`` it, or ``get``).

        For asyncio callers: ``found, after = await client.events_later(after, wait_s=10)``
        long-polls without holding up the event loop. The reply never takes much longer than
        ``wait_s``, unless the service stopped answering (then ``await`` waits on: bound it
        with ``asyncio.wait_for``, as `awatch` does).
        """
        _check_wait(wait_s, zero=True)
        return self._host.later(
            "events",
            _plain_number(after),
            wait_s,
            limit,
            self._run_of(after),
            transform=self._event_reply,
            polls=True,
        )

    def _run_of(self, after: object) -> str:
        """The run that numbered ``after``: its own, or the one this client last heard."""
        return after.run if isinstance(after, EventNumber) else self._run

    def _silent(self, wait_s: float) -> BackendError:
        return self._no_answer(wait_s + _REPLY_PAD_S)

    def _no_answer(self, seconds: float) -> BackendError:
        msg = f"the service {self.name} did not answer within {seconds:g}s"
        return BackendError(msg, operation="read events")

    def last_event(self, *, timeout: float = 60.0) -> EventNumber:
        """The sequence number of the service's latest event (0 before the first).

        Raises:
            BackendError: the service did not answer within ``timeout``, or has stopped.
        """
        return self._latest(timeout)

    def _latest(self, timeout: float) -> EventNumber:
        """The latest event's number, with its run (the run this client last heard, now)."""
        try:
            number, run = self._host.later("last_event", transform=_unwrap).get(timeout=timeout)
        except pykka.Timeout as exc:
            raise self._no_answer(timeout) from exc
        self._run = str(run)
        return EventNumber(number, self._run)

    def _poll(self, after: EventNumber, wait_s: float) -> Eventual[_Polled]:
        """One long poll of a watch, which keeps its own position and the run that numbered it.

        Not the client's run: two watches of one client may stand on either side of a restart.
        """
        return self._host.later(
            "events",
            int(after),
            wait_s,
            MAX_EVENT_BATCH,
            after.run,
            transform=self._polled,
            polls=True,
        )

    def _polled(self, outcome: _Outcome) -> _Polled:
        found, position, run = _unwrap(outcome)
        found, after = _numbered(found, position, run)
        return tuple(self._resolvable_event(e) for e in found), after

    def watch(
        self, after: int | None = 0, *, wait_s: float = 10.0, timeout_s: float | None = None
    ) -> Generator[ServiceEvent, None, None]:
        """Follow the service's events: each once, in order, long-polling for ever.

        Stop by leaving the loop (``break``, or ``close()`` on the generator); ``timeout_s``
        ends it after that many seconds in all. A client that falls behind by more than
        `EVENT_BUFFER` events gets an `EventsMissed` marker, then the oldest events still kept
        (see `events`).

        Args:
            after: the last sequence number already seen: 0 for every event the service still
                keeps, ``None`` for only the events from now on.
            wait_s: how long each long poll waits (more than 0, at most `MAX_EVENT_WAIT_S`).
            timeout_s: stop after this many seconds; ``None``: never.

        Raises:
            InvalidSpecError: a malformed argument.
            BackendError: the service went away (its actor stopped, or the cluster is gone).
        """
        _check_wait(wait_s, zero=False)
        _check_total(timeout_s)
        return self._watch(self._start_of(after), wait_s, timeout_s)

    def awatch(
        self, after: int | None = 0, *, wait_s: float = 10.0, timeout_s: float | None = None
    ) -> AsyncIterator[ServiceEvent]:
        """`watch` for asyncio: ``async for item in client.awatch(): ...``.

        The same events, in the same order, each long poll awaited without holding up the
        event loop. Arguments and errors as for `watch`; leaving the loop (or cancelling the
        task that runs it) stops it.
        """
        _check_wait(wait_s, zero=False)
        _check_total(timeout_s)
        return self._awatch(self._start_of(after), wait_s, timeout_s)

    def _start_of(self, after: int | None) -> EventNumber | None:
        """Where a watch starts (``None``: from now), with its run as the watch is made."""
        if after is None:
            return None
        check_count(after, "after")
        return EventNumber(after, self._run_of(after))

    async def _awatch(
        self, after: EventNumber | None, wait_s: float, timeout_s: float | None
    ) -> AsyncIterator[ServiceEvent]:
        """`awatch`, from ``after`` (with its run, fixed when the watch was made)."""
        if after is None:
            latest = self._host.later("last_event", transform=_unwrap)
            try:
                number, run = await asyncio.wait_for(_awaited(latest), _LATEST_WAIT_S)
            except TimeoutError as exc:
                raise self._no_answer(_LATEST_WAIT_S) from exc
            self._run = str(run)
            after = EventNumber(number, self._run)
        position = after
        for wait in _poll_waits(wait_s, timeout_s):
            pending = self._poll(position, wait)
            try:
                found, position = await asyncio.wait_for(_awaited(pending), wait + _REPLY_PAD_S)
            except TimeoutError as exc:
                raise self._silent(wait) from exc
            for item in found:
                yield item

    def _watch(
        self, after: EventNumber | None, wait_s: float, timeout_s: float | None
    ) -> Generator[ServiceEvent, None, None]:
        """`watch`, from ``after`` (with its run, fixed when the watch was made)."""
        position = self._latest(_LATEST_WAIT_S) if after is None else after
        for wait in _poll_waits(wait_s, timeout_s):
            try:
                found, position = self._poll(position, wait).get(timeout=wait + _REPLY_PAD_S)
            except pykka.Timeout as exc:
                raise self._silent(wait) from exc
            yield from found

    def stop_service(self) -> None:
        """Stop the service's actor. Its placement groups stay: release deployments first."""
        self._host.kill()

    def restart_service(self, *, timeout_s: float = 120.0) -> None:
        """Kill the service's process and wait until Ray has started it again.

        As a crash would: the new service rebuilds every deployment from its checkpoints and
        the live placement groups, and this client (and every other) goes on talking to it.
        """
        self._host.restart(timeout_s=timeout_s)

    def _reply(self, outcome: _Outcome) -> Any:  # noqa: ANN401 - any reply of the protocol
        reply = _unwrap(outcome)
        if isinstance(reply, PlacementResult):
            reply = self._resolvable_result(reply)
        elif isinstance(reply, Placement) and reply.result is not None:
            reply = dataclasses.replace(reply, result=self._resolvable_result(reply.result))
        elif isinstance(reply, ReplicaMoved) and reply.placement is not None:
            reply = dataclasses.replace(reply, placement=self._resolvable(reply.placement))
        elif isinstance(reply, PlacedMany):
            reply = PlacedMany(
                outcomes=tuple(
                    self._resolvable_result(o) if isinstance(o, PlacementResult) else o
                    for o in reply.outcomes
                )
            )
        return reply

    def _event_reply(self, outcome: _Outcome) -> tuple[tuple[ServiceEvent, ...], EventNumber]:
        found, position, self._run = _unwrap(outcome)  # plain numbers from now on are that run's
        found, after = _numbered(found, position, self._run)
        return tuple(self._resolvable_event(e) for e in found), after

    def _resolvable_event(self, item: ServiceEvent) -> ServiceEvent:
        event = item.event
        if not isinstance(event, ReplicaReplaced | ReplicaMoved) or event.placement is None:
            return item
        placement = self._resolvable(event.placement)
        return dataclasses.replace(item, event=dataclasses.replace(event, placement=placement))

    def _resolvable_result(self, result: PlacementResult) -> PlacementResult:
        return dataclasses.replace(
            result, replicas=tuple(self._resolvable(r) for r in result.replicas)
        )

    def _resolvable(self, replica: ReplicaPlacement) -> ReplicaPlacement:
        bundles = []
        for index, bundle in enumerate(replica.bundles):
            known = _Endpoint(
                self._host, replica.group_name, replica.attempt, index, replica.group_id
            )
            bundles.append(
                BundleEndpoint(
                    node=bundle.node,
                    node_ip=_Part(known, 0),
                    port=_Part(known, 1),
                    gpu_ids=_Part(known, 2),
                )
            )
        return dataclasses.replace(replica, bundles=tuple(bundles))


class _Endpoint:
    """A bundle's ``(node_ip, port, gpu_ids)`` from the service, asked for on first use.

    A reply carries one per bundle; asking the service for each at once would cost every
    `Place` a call per bundle whether or not the caller ever reads them.
    """

    def __init__(
        self, host: RemoteHost, group_name: str, attempt: int, index: int, group_id: str
    ) -> None:
        self._call = (group_name, attempt, index, group_id)
        self._host = host
        self._lock = threading.Lock()
        self._known: Eventual[tuple[str, int, tuple[int, ...]]] | None = None

    def eventual(self) -> Eventual[tuple[str, int, tuple[int, ...]]]:
        with self._lock:
            if self._known is None:
                self._known = self._host.later(
                    "endpoint", *self._call, transform=_unwrap, waits=True
                )
            return self._known


class _Part:
    """One element of a bundle's eventual ``(node_ip, port, gpu_ids)``, as an `Eventual`."""

    def __init__(self, known: _Endpoint, index: int) -> None:
        self._known = known
        self._index = index

    def get(self, *, timeout: float | None = None) -> Any:  # noqa: ANN401 - str, int or ids
        return self._known.eventual().get(timeout=timeout)[self._index]

    async def _resolve(self) -> Any:  # noqa: ANN401 - str, int or ids
        return (await self._known.eventual())[self._index]

    def __await__(self) -> Any:  # noqa: ANN401 - a generator of the awaited value
        return self._resolve().__await__()
