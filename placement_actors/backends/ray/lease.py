"""One service per namespace: the lease a running service holds on Ray.

Two services in one namespace would take each other's deployments: both read the same records,
each removes the groups the other has no record of, and their port books do not know of each
other's ports. So a service takes, before it reads anything, the lease: a named Ray actor
(``placement-actors-service-lease``, no CPU, on the head node) that its process owns. The actor
is not detached: Ray ends it with the process that made it (a driver that exits or is killed,
a service host that dies), and the service ends it when it stops. Ray's name registry makes
taking it atomic: of two services that start at once, one gets the name.

A service that starts while another holds the lease is refused (`ServiceRunningError`, naming
the holder). A lease whose holder is gone (a driver whose job ended, a host killed for good) is
ending: Ray ends it within a moment, and the starting service waits for that. A service host
that Ray restarts (same actor id) may find the lease of its earlier process: it ends it and
takes it.
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
from ray.exceptions import GetTimeoutError, RayActorError

from placement_actors.backends.ray.cluster import HEAD_RESOURCE
from placement_actors.backends.ray.connection import NAMESPACE
from placement_actors.domain.errors import BackendError, ServiceRunningError

__all__ = ["LEASE_NAME", "LEASE_WAIT_S", "ServiceLease", "lease_holder", "take_service_lease"]

logger = logging.getLogger(__name__)

LEASE_NAME = "placement-actors-service-lease"
"""The lease's actor name, in `NAMESPACE`."""

LEASE_WAIT_S = 10.0
"""How long a starting service waits for a lease that is ending (its holder is gone) or that
does not answer yet (its actor is starting) before it gives up."""

_HEAD_SHARE = 0.001
_RETRY_S = 0.05
_OPERATION = "take service lease"


@dataclass(frozen=True)
class _Holder:
    """Who holds a lease: in words, and how to tell whether it is still there."""

    words: str
    actor_id: str | None = None  # the service host's, when a host holds it
    host: str | None = None  # that host's actor name
    job: str | None = None  # the driver's job id, when a driver holds it

    def as_record(self) -> dict[str, str | None]:
        """Plain values: the lease actor is shipped by value, without this package."""
        return {"words": self.words, "actor_id": self.actor_id, "host": self.host, "job": self.job}

    @classmethod
    def of(cls, answer: Any) -> _Holder:  # noqa: ANN401 - from another process
        """A lease's answer, read as what it is whatever it is."""
        if not isinstance(answer, dict) or not isinstance(answer.get("words"), str):
            return cls(f"an actor that answered {answer!r:.80}")
        fields = {k: answer.get(k) for k in ("actor_id", "host", "job")}
        return cls(
            answer["words"], **{k: v if isinstance(v, str) else None for k, v in fields.items()}
        )

    def gone(self) -> bool:
        """Whether the holder is gone, so that Ray is ending its lease."""
        if self.host is not None:
            try:
                ray.get_actor(self.host, namespace=NAMESPACE)
            except ValueError:
                return True  # killed for good (one Ray restarts keeps its name)
            return False
        if self.job is not None:
            jobs = ray_state.jobs()  # type: ignore[no-untyped-call]
            return any(j.get("JobID") == self.job and j.get("IsDead") for j in jobs)
        return False


@functools.cache
def _lease_class() -> Any:  # noqa: ANN401 - a Ray ActorClass
    """The lease's actor class, made once per process (defined here so Ray ships it by value)."""

    class ServiceLeaseActor:
        """Held by the running service's process; says who holds it."""

        def __init__(self, holder: dict[str, str | None]) -> None:
            self._holder = holder

        def holder(self) -> dict[str, str | None]:
            return self._holder

    return ray.remote(num_cpus=0, max_restarts=-1)(ServiceLeaseActor)


class ServiceLease:
    """The lease this process holds; `release` ends it (once; later calls do nothing).

    Attributes:
        holder: who holds it, in words.
    """

    def __init__(self, handle: Any, holder: str) -> None:  # noqa: ANN401 - a Ray actor handle
        """Wrap the lease actor's ``handle``, held by ``holder``."""
        self._handle = handle
        self.holder = holder
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        """End the lease: another service may start. Quiet when Ray has ended it already."""
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            ray.kill(self._handle, no_restart=True)
        except Exception:  # the Ray boundary: a lease Ray cannot reach ends with this process
            logger.exception("could not end the service's lease; it ends with this process")

    @property
    def released(self) -> bool:
        """Whether `release` was called."""
        return self._released


def _this_process() -> _Holder:
    """Who takes the lease: the service host this runs in, or this driver."""
    context = ray.get_runtime_context()
    actor_id = context.get_actor_id()
    if actor_id is not None:
        host = context.get_actor_name()
        return _Holder(f"the service host {host!r} (actor {actor_id})", actor_id, host=host)
    node = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    job = context.get_job_id()
    return _Holder(f"a driver (pid {os.getpid()} on {node}, job {job})", job=job)


def _find_lease() -> Any:  # noqa: ANN401 - a Ray actor handle
    """The lease actor's handle; ``None`` when there is none, or when it is ending.

    Measured on Ray 2.60: once the job that made the lease has ended, Ray drops the lease's
    class (shipped by value) from its function table at once, while the actor lives on for a
    moment; looking it up then fails inside Ray with an ``AssertionError``. Such a lease is
    ending with its job.
    """
    try:
        return ray.get_actor(LEASE_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
    except AssertionError:  # its job ended: Ray can no longer load its class
        return None


def take_service_lease(*, wait_s: float = LEASE_WAIT_S) -> ServiceLease:
    """Take the namespace's service lease for this process.

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
                    # On the head node: a worker node that leaves must not end the lease.
                    resources={HEAD_RESOURCE: _HEAD_SHARE},
                )
                .remote(me.as_record())
            )
            return ServiceLease(handle, me.words)
        except (ValueError, AssertionError):  # the name is taken (see `_find_lease`)
            pass
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"could not take the service's lease: {exc}"
            raise BackendError(msg, operation=_OPERATION) from exc
        _meet_holder(me, deadline, wait_s)
        time.sleep(_RETRY_S)


def _meet_holder(me: _Holder, deadline: float, wait_s: float) -> None:
    """Ask who holds the lease; return when it is ending, so that it can be taken again.

    Raises:
        ServiceRunningError: another service holds it.
        BackendError: as `take_service_lease`.
    """
    try:
        found = _find_lease()
        if found is None:  # gone already, or ending
            ending, other = True, None
        else:
            other = _Holder.of(
                ray.get(found.holder.remote(), timeout=max(0.0, deadline - time.monotonic()))
            )
            if me.actor_id is not None and other.actor_id == me.actor_id:
                ray.kill(found, no_restart=True)  # this host's, before Ray restarted it
                return
            ending = other.gone()
    except RayActorError:  # ending
        ending, other = True, None
    except GetTimeoutError:
        msg = "the service's lease is held by an actor that did not answer"
        raise BackendError(msg, operation=_OPERATION) from None
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"could not ask who holds the service's lease: {exc}"
        raise BackendError(msg, operation=_OPERATION) from exc
    if not ending and other is not None:
        raise ServiceRunningError(holder=other.words, namespace=NAMESPACE)
    if time.monotonic() >= deadline:
        msg = f"the service's lease did not end within the {wait_s:g} s waited"
        raise BackendError(msg, operation=_OPERATION)


def lease_holder(*, timeout_s: float = LEASE_WAIT_S) -> str | None:
    """Who holds the namespace's service lease, in words; ``None`` when nobody does.

    A lease whose holder is gone (Ray is ending it) counts as nobody's.

    Raises:
        BackendError: Ray could not be asked, or the holder did not answer within ``timeout_s``.
    """
    try:
        found = _find_lease()
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"could not ask who holds the service's lease: {exc}"
        raise BackendError(msg, operation="find service lease") from exc
    if found is None:
        return None
    try:
        holder = _Holder.of(ray.get(found.holder.remote(), timeout=timeout_s))
        return None if holder.gone() else holder.words
    except RayActorError:
        return None
    except GetTimeoutError:
        msg = "the service's lease is held by an actor that did not answer"
        raise BackendError(msg, operation="find service lease") from None
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"could not ask who holds the service's lease: {exc}"
        raise BackendError(msg, operation="find service lease") from exc
