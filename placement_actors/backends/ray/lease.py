"""One service per namespace: the lease a running service holds on Ray.

Two services in one namespace would take each other's deployments: both read the same records,
each removes the groups the other has no record of, and their port books do not know of each
other's ports. So a service takes, before it reads anything, the lease: a named Ray actor
(``placement-actors-service-lease``, no CPU, on the head node) that says who holds it. Ray's
name registry makes taking it atomic: of two services that start at once, one gets the name.

- A service in a driver holds a lease its process owns (not detached): Ray ends it with the
  driver's job, whether the driver exits, is killed or stops the service.
- A service host holds a detached lease, so that the lease outlives the host's process while Ray
  restarts it: the new process finds its own lease (same actor id) and keeps it, and nothing
  can start in between. A host stopped for good has its lease ended by `end_lease_of`, and a
  lease whose host Ray lists as dead is ended by the next service that starts.

A service that starts while another holds the lease is refused (`ServiceRunningError`, naming
the holder). A lease whose holder is gone is ending, or is ended, and the starting service
waits for that (up to `LEASE_WAIT_S`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray._private import state as ray_state
from ray.exceptions import ActorAlreadyExistsError, GetTimeoutError, RayActorError

from placement_actors.backends.ray.cluster import HEAD_RESOURCE
from placement_actors.backends.ray.connection import NAMESPACE
from placement_actors.domain.errors import BackendError, ServiceRunningError

__all__ = [
    "LEASE_NAME",
    "LEASE_WAIT_S",
    "ServiceLease",
    "end_lease_of",
    "lease_holder",
    "take_service_lease",
]

logger = logging.getLogger(__name__)

LEASE_NAME = "placement-actors-service-lease"
"""The lease's actor name, in `NAMESPACE`."""

LEASE_WAIT_S = 10.0
"""How long a starting service waits for a lease that is ending (its holder is gone) or that
does not answer yet (its actor is starting) before it gives up."""

_HEAD_SHARE = 0.001
_RETRY_S = 0.05
_KEEP_WAIT_S = 2.0
_MAX_WORDS = 200
_OPERATION = "take service lease"
_GONE_STATES = frozenset({"DEAD", ""})  # "" : Ray has no record of the actor


@dataclass(frozen=True)
class _Holder:
    """Who holds a lease: in words, and how to tell whether it is still there."""

    words: str
    actor_id: str | None = None  # the service host's, when a host holds it
    job: str | None = None  # the driver's job id, when a driver holds it

    def as_record(self) -> dict[str, str | None]:
        """Plain values: the lease actor is shipped by value, without this package."""
        return {"words": self.words, "actor_id": self.actor_id, "job": self.job}

    @classmethod
    def of(cls, answer: Any) -> _Holder:  # noqa: ANN401 - from another process
        """A lease's answer, read as what it is whatever it is."""
        if not isinstance(answer, dict) or not isinstance(answer.get("words"), str):
            return cls(f"an actor that answered {answer!r:.80}")
        actor_id, job = answer.get("actor_id"), answer.get("job")
        return cls(
            answer["words"][:_MAX_WORDS],
            actor_id if isinstance(actor_id, str) else None,
            job if isinstance(job, str) else None,
        )

    def gone(self) -> bool:
        """Whether the holder is gone: a host Ray lists as dead, a driver whose job ended.

        A host Ray is restarting is not gone: it comes back and keeps its lease.
        """
        if self.actor_id is not None:
            found = ray_state.actors(actor_id=self.actor_id)
            return str(found.get("State", "")) in _GONE_STATES
        if self.job is not None:
            jobs = ray_state.jobs()  # type: ignore[no-untyped-call]
            return any(j.get("JobID") == self.job and j.get("IsDead") for j in jobs)
        return False


@functools.cache
def _lease_class() -> Any:  # noqa: ANN401 - a Ray ActorClass
    """The lease's actor class, made once per process (defined here so Ray ships it by value)."""

    class ServiceLeaseActor:
        """Held by the running service; says who holds it."""

        def __init__(self, holder: dict[str, str | None]) -> None:
            self._holder = holder

        def holder(self) -> dict[str, str | None]:
            return self._holder

    return ray.remote(num_cpus=0, max_restarts=-1)(ServiceLeaseActor)


def _same(found: Any, handle: Any) -> bool:  # noqa: ANN401 - Ray actor handles
    """Whether the lease actor ``found`` (``None``: none) is the one ``handle`` names."""
    return found is not None and found._actor_id == handle._actor_id  # noqa: SLF001 - identity


def _end(handle: Any, wait_s: float) -> None:  # noqa: ANN401 - a Ray actor handle
    """Kill the lease actor ``handle`` and wait (up to ``wait_s``) until its name is free.

    Ray kills asynchronously: without the wait, a service started at once could find it.
    """
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        found = _find_lease()
        if not _same(found, handle):
            return
        time.sleep(_RETRY_S)


class ServiceLease:
    """The lease this process holds; `release` ends it (once; later calls do nothing).

    Attributes:
        holder: who holds it, in words.
        lost_to: who took the lease after it was ended from outside (`keep` found it), in
            words; ``None`` while this process holds it (or took it back).
    """

    def __init__(self, handle: Any, holder: str) -> None:  # noqa: ANN401 - a Ray actor handle
        """Wrap the lease actor's ``handle``, held by ``holder``."""
        self._handle = handle
        self.holder = holder
        self._lock = threading.Lock()
        self._released = False
        self.lost_to: str | None = None  # the other holder `keep` last found

    def release(self) -> None:
        """End the lease and wait until another service may start. Quiet when it has ended."""
        with self._lock:
            if self._released:
                return
            self._released = True
            handle = self._handle
        try:
            _end(handle, LEASE_WAIT_S)
        except Exception:  # the Ray boundary: a driver's lease ends with its process anyway
            logger.exception("could not end the service's lease")

    @property
    def released(self) -> bool:
        """Whether `release` was called."""
        return self._released

    def keep(self) -> bool:
        """Make sure this process still holds the lease; take it again if it was ended.

        Someone may end the lease actor from outside (``ray kill``, the dashboard): the
        service would run on while a second could start. Returns whether the lease is held;
        ``False`` (logged) when another service holds it now, or it was released.
        """
        if self._released:
            return False
        try:
            found = _find_lease()
            if _same(found, self._handle):
                return True
            taken = take_service_lease(wait_s=_KEEP_WAIT_S)
        except ServiceRunningError as exc:
            return self._refused(exc.holder)
        except BackendError:
            logger.exception("could not make sure the service still holds its lease")
            return True  # not known to be lost: asked again on the next look
        with self._lock:
            if self._released:  # released meanwhile: end what was just taken
                _end(taken._handle, LEASE_WAIT_S)  # noqa: SLF001
                return False
            self._handle = taken._handle  # noqa: SLF001
            self.lost_to = None
        logger.warning("this service's lease was ended from outside; it holds it again")
        return True

    def _refused(self, holder: str) -> bool:
        """`keep` could not take the lease again: whether it is held all the same."""
        if self._released or self._holds_it():  # stopped meanwhile, or a look that missed it
            return not self._released
        if holder != self.lost_to:  # once per other holder
            self.lost_to = holder
            logger.error(
                "this service's lease was ended from outside and %s holds it now: two "
                "services run in the namespace",
                holder,
            )
        return False

    def _holds_it(self) -> bool:
        """Whether the namespace's lease is this one's (looked up again)."""
        try:
            found = _find_lease()
        except Exception:  # noqa: BLE001 - the Ray boundary: not known to be this one's
            return False
        return _same(found, self._handle)


def _this_process() -> _Holder:
    """Who takes the lease: the service host this runs in, or this driver."""
    context = ray.get_runtime_context()
    actor_id = context.get_actor_id()
    if actor_id is not None:
        host = context.get_actor_name()
        return _Holder(f"the service host {host!r} (actor {actor_id})", actor_id=actor_id)
    node = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    job = context.get_job_id()
    return _Holder(f"a driver (pid {os.getpid()} on {node}, job {job})", job=job)


def _find_lease() -> Any:  # noqa: ANN401 - a Ray actor handle
    """The lease actor's handle; ``None`` when there is none, or when it is ending.

    Measured on Ray 2.60: once the job that made a driver's lease has ended, Ray drops the
    lease's class (shipped by value) from its function table at once, while the actor lives on
    for a moment; looking it up then fails inside Ray with an ``AssertionError``. Such a lease
    is ending with its job.
    """
    try:
        return ray.get_actor(LEASE_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
    except AssertionError:  # its job ended: Ray can no longer load its class
        return None


def _holder_of(found: Any, timeout_s: float) -> _Holder:  # noqa: ANN401 - a Ray actor handle
    """Ask the lease actor ``found`` who holds it (waiting up to ``timeout_s``)."""
    return _Holder.of(ray.get(found.holder.remote(), timeout=timeout_s))


def take_service_lease(*, wait_s: float = LEASE_WAIT_S) -> ServiceLease:
    """Take the namespace's service lease for this process (a host keeps its own).

    Raises:
        ServiceRunningError: another service holds it.
        BackendError: Ray could not be asked, or a lease did not answer or end within
            ``wait_s``.
    """
    me = _this_process()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            handle = (
                _lease_class()
                .options(
                    name=LEASE_NAME,
                    namespace=NAMESPACE,
                    lifetime="detached" if me.actor_id is not None else None,
                    # On the head node: a worker node that leaves must not end the lease.
                    resources={HEAD_RESOURCE: _HEAD_SHARE},
                )
                .remote(me.as_record())
            )
            return ServiceLease(handle, me.words)
        except ActorAlreadyExistsError:
            pass
        except AssertionError:  # held by a lease that is ending (see `_find_lease`)
            pass
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"could not take the service's lease: {exc}"
            raise BackendError(msg, operation=_OPERATION) from exc
        kept = _meet_holder(me, deadline, wait_s)
        if kept is not None:
            return kept
        time.sleep(_RETRY_S)


def _meet_holder(me: _Holder, deadline: float, wait_s: float) -> ServiceLease | None:
    """Ask who holds the lease: this host's own (kept, returned), or one that is ending.

    Returns ``None`` when the lease is ending or ended, so that it can be taken again.

    Raises:
        ServiceRunningError: another service holds it.
        BackendError: as `take_service_lease`.
    """
    other: _Holder | None = None
    try:
        found = _find_lease()
        if found is not None:
            other = _holder_of(found, max(0.0, deadline - time.monotonic()))
            if me.actor_id is not None and other.actor_id == me.actor_id:
                return ServiceLease(found, me.words)  # this host's, from before Ray restarted it
            if other.gone():
                _end(found, max(0.0, deadline - time.monotonic()))
                other = None
    except RayActorError:  # ending
        other = None
    except GetTimeoutError:
        msg = "the service's lease is held by an actor that did not answer"
        raise BackendError(msg, operation=_OPERATION) from None
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"could not ask who holds the service's lease: {exc}"
        raise BackendError(msg, operation=_OPERATION) from exc
    if other is not None:
        raise ServiceRunningError(holder=other.words, namespace=NAMESPACE)
    if time.monotonic() >= deadline:
        msg = f"the service's lease did not end within the {wait_s:g} s waited"
        raise BackendError(msg, operation=_OPERATION)
    return None


def lease_holder(*, timeout_s: float = LEASE_WAIT_S) -> str | None:
    """Who holds the namespace's service lease, in words; ``None`` when nobody does.

    A lease whose holder is gone counts as nobody's.

    Raises:
        BackendError: Ray could not be asked, or the holder did not answer within ``timeout_s``.
    """
    try:
        found = _find_lease()
        if found is None:
            return None
        holder = _holder_of(found, timeout_s)
        return None if holder.gone() else holder.words
    except RayActorError:
        return None
    except GetTimeoutError:
        msg = "the service's lease is held by an actor that did not answer"
        raise BackendError(msg, operation="find service lease") from None
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"could not ask who holds the service's lease: {exc}"
        raise BackendError(msg, operation="find service lease") from exc


def end_lease_of(actor_id: str, *, timeout_s: float = LEASE_WAIT_S) -> bool:
    """End the lease the service host ``actor_id`` held (it was stopped for good).

    Returns whether there was such a lease; another holder's is left alone.

    Raises:
        BackendError: Ray could not be asked.
    """
    try:
        found = _find_lease()
        if found is None:
            return False
        holder = _holder_of(found, timeout_s)
        if holder.actor_id != actor_id:
            return False
        _end(found, timeout_s)
    except RayActorError:
        return False
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"could not end the stopped service's lease: {exc}"
        raise BackendError(msg, operation="stop service") from exc
    return True
