"""Work inside a placement group's bundle: tasks on its node, its IP, free ports.

Every raylet of a local cluster reports the same host address, so ports are tracked per host
address (`placement_actors.policies.port_book.PortBook`), not per node.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import ray
from ray.exceptions import GetTimeoutError
from ray.remote_function import RemoteFunction
from ray.util.placement_group import PlacementGroup, placement_group_table
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from placement_actors.backends.protocol import BundleProbe, ProbeCallback
from placement_actors.domain.errors import BackendError, InvalidSpecError
from placement_actors.domain.validation import check_count, check_timeout
from placement_actors.policies.port_book import PortBook, ProbeVerdict, judge_probe, no_port_error

__all__ = [
    "PROCESS_PORTS",
    "RAY_WORKER_PORTS",
    "get_bundle_node_ip",
    "get_free_port_in_bundle",
    "port_finder",
    "probe_args",
    "probe_bundle",
    "release_ports",
    "run_in_bundle",
    "submit_in_bundle",
]

RAY_WORKER_PORTS = range(10002, 20000)
"""Ray's default worker ports (``--min-worker-port``..``--max-worker-port``): never handed out."""

_T = TypeVar("_T")

PROCESS_PORTS = PortBook()
"""The ports the blocking functions of this process handed out, unless given a book of their own.

Guarded by a lock of this module (a `PortBook` itself is a plain, single-threaded value).
"""
_PROCESS_LOCK = threading.Lock()
_SCAN = 1024
"""Ports one probe from a start port tries before giving up (with ``get_next_free_port``)."""


def _in_bundle(pg: PlacementGroup, bundle_index: int) -> PlacementGroupSchedulingStrategy:
    check_count(bundle_index, "bundle_index")
    if bundle_index >= pg.bundle_count:
        msg = f"bundle {bundle_index} does not exist: the group has {pg.bundle_count}"
        raise InvalidSpecError(msg, field="bundle_index")
    return PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=bundle_index
    )


def submit_in_bundle(
    pg: PlacementGroup, bundle_index: int, fn: Callable[..., _T], *args: object, gpus: int = 0
) -> ray.ObjectRef[_T]:
    """Start ``fn(*args)`` as a Ray task inside bundle ``bundle_index``; returns its ObjectRef.

    The task asks for no CPU of its own and ``gpus`` of the bundle's GPUs (none by default), so
    it fits any bundle. ``fn`` may also be an existing Ray remote function (it is then not
    wrapped again).

    Raises:
        InvalidSpecError: the group has no such bundle.
    """
    strategy = _in_bundle(pg, bundle_index)
    check_count(gpus, "gpus")
    remote = fn if isinstance(fn, RemoteFunction) else ray.remote(fn)
    return remote.options(  # type: ignore[no-any-return]
        num_cpus=0, num_gpus=gpus, max_retries=0, scheduling_strategy=strategy
    ).remote(*args)


def run_in_bundle(
    pg: PlacementGroup,
    bundle_index: int,
    fn: Callable[..., _T],
    *args: object,
    timeout_s: float = 60.0,
) -> _T:
    """Run ``fn(*args)`` on the node of bundle ``bundle_index`` and return its result (blocking).

    Raises:
        InvalidSpecError: the group has no such bundle.
        BackendError: the task failed or did not finish within ``timeout_s``.
    """
    check_timeout(timeout_s, "timeout_s")
    ref = submit_in_bundle(pg, bundle_index, fn, *args)
    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError as exc:
        ray.cancel(ref, force=True)
        msg = f"task in bundle {bundle_index} did not finish within {timeout_s:g}s"
        raise BackendError(msg, operation="run in bundle") from exc
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"task in bundle {bundle_index} failed: {exc}"
        raise BackendError(msg, operation="run in bundle") from exc


@functools.cache
def port_finder() -> Callable[..., int]:
    """The function that finds a free port on the node it runs on, made once per process.

    Defined inside this function so that Ray ships it by value (with the tasks and the port
    agents that call it): a worker needs only the standard library, not this package.
    """

    def find_port(  # noqa: PLR0917 - called positionally by the probes, as Ray passes arguments
        ip: str, exclude: frozenset[int], avoid_low: int, avoid_high: int, start: int, scan: int
    ) -> int:
        """A port free on ``ip``, the wildcard and loopback, not in ``exclude`` or the range.

        ``start`` 0: ports from the kernel's ephemeral range (away from Ray's fixed ports);
        otherwise ``start``, ``start + 1``, ... for ``scan`` ports.
        """
        import socket  # noqa: PLC0415 - runs on the node

        def bindable(host: str, port: int) -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    return False
                return True

        def ephemeral() -> int:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((ip, 0))
                return int(sock.getsockname()[1])

        candidates = (
            (ephemeral() for _ in range(256)) if start == 0 else iter(range(start, start + scan))
        )
        for port in candidates:
            if port in exclude or avoid_low <= port <= avoid_high or port > 65535:  # noqa: PLR2004
                continue
            if all(bindable(host, port) for host in (ip, "0.0.0.0", "127.0.0.1")):  # noqa: S104 - probing, not serving
                return port
        msg = f"no free port found on {ip}"
        raise OSError(msg)

    return find_port


@functools.cache
def _node_tasks() -> tuple[Any, Any]:  # two RemoteFunction values
    """The two tasks run on a bundle's node, made once per process (shipped by value)."""
    find_port = port_finder()

    def node_ip() -> str:
        import ray as ray_on_node  # noqa: PLC0415 - runs on the node

        return str(ray_on_node.util.get_node_ip_address())  # type: ignore[no-untyped-call]

    def free_port(
        exclude: frozenset[int], avoid_low: int, avoid_high: int, start: int, scan: int
    ) -> tuple[str, int, tuple[int, ...]]:
        """The node's routable IP, a port free there (wildcard, loopback too), the task's GPUs."""
        import ray as ray_on_node  # noqa: PLC0415 - runs on the node

        ip = str(ray_on_node.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        port = find_port(ip, exclude, avoid_low, avoid_high, start, scan)
        gpu_ids = tuple(sorted(int(i) for i in ray_on_node.get_gpu_ids()))
        return ip, port, gpu_ids

    return ray.remote(node_ip), ray.remote(free_port)


def probe_args(exclude: frozenset[int], start: int = 0, scan: int = 1) -> tuple[object, ...]:
    """What a port probe is given: the ports to skip, Ray's worker range, where to start."""
    if start:  # a port the caller asked for is probed even inside Ray's worker range
        return exclude, 1, 0, start, scan
    return exclude, RAY_WORKER_PORTS.start, RAY_WORKER_PORTS.stop - 1, start, scan


def probe_bundle(
    pg: PlacementGroup,
    bundle_index: int,
    *,
    exclude_ports: frozenset[int],
    callback: ProbeCallback,
    gpus: int = 0,
) -> None:
    """Start a probe task in the bundle; ``callback`` gets its `BundleProbe` or the failure.

    Returns at once; the callback runs on a Ray thread. The one probe the actors' backend and the
    blocking functions share. With ``gpus`` (the bundle's GPU count) the probe holds the
    bundle's GPUs while it runs and reports their ids; it must run before anything else uses
    them.
    """
    try:
        _, free_port = _node_tasks()
        ref = submit_in_bundle(pg, bundle_index, free_port, *probe_args(exclude_ports), gpus=gpus)
    except Exception as exc:  # noqa: BLE001 - the Ray error-mapping boundary, reported not raised
        callback(BackendError(f"cannot start probe: {exc}", operation="probe bundle"))
        return
    future = ref.future()

    def done(settled: Any) -> None:  # noqa: ANN401 - a concurrent.futures.Future
        error = settled.exception()
        if error is not None:
            failure = BackendError(f"probe failed: {error}", operation="probe bundle")
            failure.__cause__ = error
            callback(failure)
            return
        ip, port, gpu_ids = settled.result()
        callback(BundleProbe(node_ip=ip, port=port, gpu_ids=tuple(gpu_ids)))

    future.add_done_callback(done)


def get_bundle_node_ip(pg: PlacementGroup, bundle_index: int, *, timeout_s: float = 60.0) -> str:
    """The routable IP address of the node bundle ``bundle_index`` landed on (blocking)."""
    node_ip, _ = _node_tasks()
    return str(run_in_bundle(pg, bundle_index, node_ip, timeout_s=timeout_s))


def get_free_port_in_bundle(
    pg: PlacementGroup,
    bundle_index: int,
    start_port: int | None = None,
    get_next_free_port: bool = True,  # noqa: FBT001, FBT002 - the seed's positional signature
    *,
    holder: str | None = None,
    book: PortBook | None = None,
    timeout_s: float = 60.0,
) -> int:
    """A port free on bundle ``bundle_index``'s node, held in a port book until released.

    The port is probed on the node's routable address, the wildcard and loopback; without
    ``start_port`` it comes from the kernel's ephemeral range and lies outside Ray's worker-port
    range. With ``start_port``, the first free port from there (only ``start_port`` itself when
    ``get_next_free_port`` is false). It is never a port ``book`` has already given out on that
    host: two calls never return the same port on one host while the first is held.

    Args:
        pg: the placement group.
        bundle_index: the bundle whose node the port is on.
        start_port: where to start looking; ``None`` for an ephemeral port.
        get_next_free_port: with ``start_port``, whether ports after it may be tried.
        holder: who holds the port (released with `release_ports`); by default the group, whose
            ports are released when `placement_actors.backends.ray.groups.remove_group` removes it.
        book: the port book; by default `PROCESS_PORTS`, shared by the whole process.
        timeout_s: how long one probe task may take.

    Raises:
        InvalidSpecError: the group has no such bundle, or ``start_port`` is not a port.
        BackendError: no port could be found and claimed.
    """
    if start_port is not None:
        check_count(start_port, "start_port", minimum=1)
        if start_port > 65535:  # noqa: PLR2004 - the largest TCP port
            msg = f"start_port must be at most 65535, got {start_port}"
            raise InvalidSpecError(msg, field="start_port")
    owner = holder if holder is not None else pg.id.hex()
    shared = book is None
    ports = PROCESS_PORTS if book is None else book
    scan = _SCAN if get_next_free_port else 1
    _, free_port = _node_tasks()
    probes, purged = 0, not shared
    while True:
        probes += 1
        with _PROCESS_LOCK if shared else contextlib.nullcontext():
            exclude = ports.given()
        args = probe_args(exclude, start_port or 0, scan)
        try:
            ip, port, _ = run_in_bundle(pg, bundle_index, free_port, *args, timeout_s=timeout_s)
        except BackendError as exc:
            timed_out = isinstance(exc.__cause__, GetTimeoutError)  # not a port question: no retry
            if not timed_out and not purged and _forget_removed_groups():  # they held the ports
                purged = True
                continue
            raise
        with _PROCESS_LOCK if shared else contextlib.nullcontext():
            verdict = judge_probe(ports, str(ip), int(port), owner, probes_made=probes)
        if verdict is ProbeVerdict.CLAIMED:
            return int(port)
        if verdict is ProbeVerdict.GIVE_UP:
            if not purged and _forget_removed_groups():
                purged, probes = True, 0
                continue
            raise no_port_error(str(ip))


_GROUP_ID_HEX = 36
"""Characters in a placement group id's hex form (the default holder of a port here)."""


def _forget_removed_groups() -> int:
    """Release the ports of `PROCESS_PORTS` holders that are groups Ray no longer has.

    A group removed with Ray's own ``remove_placement_group`` (not `remove_group`) keeps its
    ports held here, as this process cannot see the removal: once the ports a caller asks for
    are all held, one read of Ray's group table finds such holders. Holders that are not group
    ids (given as ``holder``) are left. Returns how many ports were released.
    """
    with _PROCESS_LOCK:
        groups = {h for h in PROCESS_PORTS.holders() if _is_group_id(h)}
    if not groups:
        return 0
    try:
        table = placement_group_table()
    except Exception:  # noqa: BLE001 - the Ray error-mapping boundary: nothing is released
        return 0
    live = {str(key) for key, info in table.items() if info.get("state") != "REMOVED"}
    with _PROCESS_LOCK:
        return sum(PROCESS_PORTS.release(holder) for holder in groups - live)


def _is_group_id(holder: str) -> bool:
    """Whether ``holder`` is a group id as Ray writes it (36 lowercase hex characters)."""
    return len(holder) == _GROUP_ID_HEX and all(c in "0123456789abcdef" for c in holder)


def release_ports(holder: str, book: PortBook | None = None) -> int:
    """Forget the ports ``holder`` was given in ``book`` (`PROCESS_PORTS` by default)."""
    if book is not None:
        return book.release(holder)
    with _PROCESS_LOCK:
        return PROCESS_PORTS.release(holder)
