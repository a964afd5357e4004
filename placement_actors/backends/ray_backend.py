"""Ray, the distributed engine: the only module of placement-actors that imports ``ray``.

It turns the service's decisions into Ray placement groups and maps Ray's failures to the
`placement_actors.domain.errors` tree (always ``raise ... from exc``). Blocking helpers
(`build_pg`, `run_in_bundle`, ...) are for drivers and the CLI; the actors use `RayBackend`, whose
methods return at once and report back through callbacks.

Facts this module relies on (Ray 2.60): placement groups never fail when infeasible, they stay
``PENDING`` and ``placement_group_table(pg)["stats"]["scheduling_state"]`` says ``INFEASIBLE`` or
``NO_RESOURCES``; ``pg.wait()`` truncates to whole seconds, so waits use ``ray.wait`` on
``pg.ready()``; the only automatic node label is ``ray.io/node-id``; every raylet of a local
cluster reports the same host address, so ports are tracked per host address, not per node.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import pykka
import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.remote_function import RemoteFunction
from ray.util.placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from placement_actors.backends.protocol import BundleProbe, ProbeCallback, ReadyCallback
from placement_actors.domain.deployments import GROUP_NAME_ROOT
from placement_actors.domain.errors import (
    BackendError,
    InvalidSpecError,
    PlacementGroupTimeoutError,
)
from placement_actors.domain.results import BundleStrategy, NodeAssignment, ReplicaBundleSpec
from placement_actors.domain.topology import NodeTopology
from placement_actors.policies.port_book import PortBook

__all__ = [
    "EGRESS_LABEL",
    "HEAD_RESOURCE",
    "NAMESPACE",
    "NAME_LABEL",
    "RAY_WORKER_PORTS",
    "LocalCluster",
    "RayBackend",
    "RayEventual",
    "RemoteHost",
    "build_pg",
    "build_replica_pg",
    "connect",
    "connected",
    "find_host",
    "get_bundle_node_ip",
    "get_cluster_topology",
    "get_egress_nodes",
    "get_free_port_in_bundle",
    "get_held_groups",
    "group_states",
    "node_names",
    "remove_named_pgs_with_prefix",
    "run_in_bundle",
    "start_host",
    "submit_in_bundle",
]

logger = logging.getLogger(__name__)

NAMESPACE = "placement-actors"
"""The Ray namespace the service's detached placement groups live in."""
HEAD_RESOURCE = "node:__internal_head__"
EGRESS_LABEL = "placement-actors.io/egress"
"""A node labelled ``placement-actors.io/egress=true`` may run remote (API) deployments."""
NAME_LABEL = "placement-actors.io/name"
"""An optional friendly node name, shown next to the node id."""
RAY_WORKER_PORTS = range(10002, 20000)
"""Ray's default worker ports (``--min-worker-port``..``--max-worker-port``): never handed out."""

_T = TypeVar("_T")
_STRATEGY = {
    BundleStrategy.STRICT_PACK: "STRICT_PACK",
    BundleStrategy.STRICT_SPREAD: "STRICT_SPREAD",
}


# -- connecting ---------------------------------------------------------------------------------


def connect(address: str | None = None, *, namespace: str = NAMESPACE) -> bool:
    """Connect this process to Ray (``None``: the cluster ``RAY_ADDRESS`` names, else a new one).

    A ``host:port`` address is checked with a plain TCP connection first: ``ray.init`` waits for
    minutes on an address where nothing listens.

    Returns:
        ``True`` if this call connected, ``False`` if the process was connected to it already.

    Raises:
        BackendError: Ray could not be reached, or this process is connected to another cluster.
    """
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in {None, "auto", current}:
            msg = f"this process is already connected to Ray at {current}, not {address}"
            raise BackendError(msg, operation="connect")
        return False
    if address is not None:
        _check_reachable(address)
    try:
        ray.init(
            address=address,
            namespace=namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (RayError, ConnectionError, RuntimeError, ValueError) as exc:
        msg = f"cannot connect to Ray at {address or 'the default address'}: {exc}"
        raise BackendError(msg, operation="connect") from exc
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "ray://..." and the like: Ray resolves them itself
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        msg = f"nothing answers at {address} ({exc.strerror or exc}); is the Ray head running?"
        raise BackendError(msg, operation="connect") from exc


@contextlib.contextmanager
def connected(address: str, *, namespace: str = NAMESPACE) -> Iterator[None]:
    """Connect to the cluster at ``address`` for the ``with`` block; disconnect only if it did."""
    made = connect(address, namespace=namespace)
    try:
        yield
    finally:
        if made:
            ray.shutdown()


@dataclass(kw_only=True)
class LocalCluster:
    """A Ray cluster of several raylets on this machine, with logical GPUs (no GPU needed).

    Use as a context manager: it starts the head and one raylet per entry of ``worker_gpus``,
    connects this process to it in the service's namespace, and on exit disconnects and stops
    exactly this cluster (never ``ray stop``, which would kill every Ray process of the user).

    Attributes:
        head_gpus: logical GPUs of the head.
        worker_gpus: logical GPUs of each worker raylet.
        worker_names: friendly names, labelled ``placement-actors.io/name`` on the workers.
        egress_workers: indexes of workers labelled as egress nodes (the head always is).
        cpus_per_node: logical CPUs per raylet (each bundle asks for one); a worker with more
            GPUs than that gets one CPU per GPU, so every GPU can hold a bundle.
        temp_dir: Ray's temporary directory; a fresh one under the system's by default.
    """

    head_gpus: int = 0
    worker_gpus: Sequence[int] = (4, 4, 8)
    worker_names: Sequence[str] = ()
    egress_workers: Sequence[int] = ()
    cpus_per_node: int = 8
    temp_dir: Path | None = None
    _cluster: Any = field(default=None, init=False, repr=False)
    _made_temp: bool = field(default=False, init=False, repr=False)
    _saved_env: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)

    def __enter__(self) -> Self:
        """Start the raylets and connect."""
        from ray.cluster_utils import Cluster  # noqa: PLC0415 - test utility, loaded on use

        if self.temp_dir is None:
            # Ray's socket paths must stay short: a short directory under /tmp, not pytest's.
            self.temp_dir = Path(tempfile.mkdtemp(prefix="pa-ray-", dir="/tmp"))
            self._made_temp = True
        self._saved_env = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
        os.environ["RAY_TMPDIR"] = str(self.temp_dir)
        # A throw-away local cluster: token auth needs a token file set up beforehand, so it is
        # off unless the caller chose a mode (the raylets inherit this environment).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        head_labels = {EGRESS_LABEL: "true", NAME_LABEL: "head"}
        try:
            self._cluster = Cluster(
                initialize_head=True,
                connect=False,
                head_node_args={
                    "num_cpus": self.cpus_per_node,
                    "num_gpus": self.head_gpus,
                    "labels": head_labels,
                },
            )
            for index, gpus in enumerate(self.worker_gpus):
                labels = {}
                if index < len(self.worker_names):
                    labels[NAME_LABEL] = self.worker_names[index]
                if index in self.egress_workers:
                    labels[EGRESS_LABEL] = "true"
                self._cluster.add_node(
                    num_cpus=max(self.cpus_per_node, gpus), num_gpus=gpus, labels=labels
                )
            self._cluster.wait_for_nodes()
            ray.init(
                address=self._cluster.address,
                namespace=NAMESPACE,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception as exc:
            self.__exit__(None, None, None)
            msg = f"cannot start a local Ray cluster: {exc}"
            raise BackendError(msg, operation="start local cluster") from exc
        return self

    @property
    def address(self) -> str:
        """The cluster's GCS address, for other drivers."""
        return str(self._cluster.address)

    def __exit__(self, *exc_info: object) -> None:
        """Disconnect, stop this cluster's raylets, restore the environment, delete temp files."""
        if ray.is_initialized():
            ray.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._made_temp and self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


# -- topology -----------------------------------------------------------------------------------


def _alive_nodes(nodes: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    listed = list(ray.nodes()) if nodes is None else list(nodes)  # type: ignore[no-untyped-call]
    return [n for n in listed if n.get("Alive", n.get("alive", False))]


def get_cluster_topology(
    head_node_id: str | None = None, nodes: Iterable[Mapping[str, Any]] | None = None
) -> tuple[NodeTopology, ...]:
    """The alive nodes with at least one whole GPU, from their total resources, by node id.

    Args:
        head_node_id: the head's node id; by default the node holding Ray's head resource, else
            the node this driver runs on.
        nodes: ``ray.nodes()``-shaped records to read instead of asking the cluster.
    """
    alive = _alive_nodes(nodes)
    if head_node_id is None:
        head_node_id = next(
            (n["NodeID"] for n in alive if HEAD_RESOURCE in n.get("Resources", {})), None
        )
    if head_node_id is None:
        head_node_id = ray.get_runtime_context().get_node_id()
    topology = []
    for node in alive:
        gpus = int(node.get("Resources", {}).get("GPU", 0))
        if gpus >= 1:
            topology.append(
                NodeTopology(
                    node_id=node["NodeID"],
                    num_gpus=gpus,
                    is_head=node["NodeID"] == head_node_id,
                    labels={str(k): str(v) for k, v in (node.get("Labels") or {}).items()},
                )
            )
    return tuple(sorted(topology, key=lambda n: n.node_id))


def get_egress_nodes(nodes: Iterable[Mapping[str, Any]] | None = None) -> tuple[str, ...]:
    """Ids of alive nodes labelled ``placement-actors.io/egress=true``."""
    return tuple(
        sorted(
            n["NodeID"]
            for n in _alive_nodes(nodes)
            if str((n.get("Labels") or {}).get(EGRESS_LABEL, "")).lower() == "true"
        )
    )


def node_names(nodes: Iterable[Mapping[str, Any]] | None = None) -> dict[str, str]:
    """Node id -> friendly name, for nodes labelled ``placement-actors.io/name``."""
    return {
        n["NodeID"]: str(n["Labels"][NAME_LABEL])
        for n in _alive_nodes(nodes)
        if NAME_LABEL in (n.get("Labels") or {})
    }


# -- placement groups ---------------------------------------------------------------------------


def _create(
    bundles: Sequence[Mapping[str, float]],
    strategy: BundleStrategy,
    *,
    name: str,
    bundle_label_selector: Sequence[Mapping[str, str]] | None,
) -> PlacementGroup:
    if not name:
        msg = "a placement group needs a name"
        raise InvalidSpecError(msg, field="name")
    try:
        pg: PlacementGroup = placement_group(
            [dict(b) for b in bundles],
            strategy=_STRATEGY[strategy],
            name=name,
            lifetime="detached",
            bundle_label_selector=(
                None if bundle_label_selector is None else [dict(s) for s in bundle_label_selector]
            ),
        )
    except ValueError as exc:
        raise InvalidSpecError(str(exc), field="bundles") from exc
    except Exception as exc:  # the Ray error-mapping boundary: any Ray failure is a backend error
        msg = f"Ray refused placement group {name}: {exc}"
        raise BackendError(msg, operation="create placement group") from exc
    return pg


def _state(pg: PlacementGroup) -> str:
    table = placement_group_table(pg)
    if table.get("state") == "CREATED":
        return "CREATED"
    return str(table.get("stats", {}).get("scheduling_state") or table.get("state") or "UNKNOWN")


def _remove(pg: PlacementGroup) -> None:
    try:
        remove_placement_group(pg)
    except Exception as exc:  # the Ray error-mapping boundary
        try:
            gone = placement_group_table(pg).get("state") in {None, "REMOVED"}
        except Exception:  # noqa: BLE001 - the lookup failing too is reported as the removal failing
            gone = False
        if gone:
            return
        msg = f"cannot remove placement group {pg.id.hex()}: {exc}"
        raise BackendError(msg, operation="remove placement group") from exc


def build_pg(
    bundles: Sequence[Mapping[str, float]],
    strategy: BundleStrategy,
    *,
    name: str,
    bundle_label_selector: Sequence[Mapping[str, str]] | None = None,
    ready_timeout_s: float,
) -> PlacementGroup:
    """Create a detached, named placement group and wait until it is ready.

    The group lives in the namespace this driver connected with (`NAMESPACE` through `connect`).

    Raises:
        PlacementGroupTimeoutError: not ready in time; the group was removed. Its
            ``scheduling_state`` tells ``INFEASIBLE`` from ``NO_RESOURCES``.
        InvalidSpecError: Ray rejected the bundles or selectors as malformed.
        BackendError: any other Ray failure (a duplicate name, a lost connection...).
    """
    pg = _create(bundles, strategy, name=name, bundle_label_selector=bundle_label_selector)
    try:
        ready, _ = ray.wait([pg.ready()], timeout=ready_timeout_s)
        if ready:
            ray.get(ready[0])
            return pg
        state = _state(pg)
    except Exception as exc:  # the Ray error-mapping boundary
        _remove(pg)
        msg = f"placement group {name} failed: {exc}"
        raise BackendError(msg, operation="wait for placement group") from exc
    _remove(pg)
    raise PlacementGroupTimeoutError(group=name, timeout_s=ready_timeout_s, scheduling_state=state)


def build_replica_pg(
    spec: ReplicaBundleSpec, *, name: str, ready_timeout_s: float = 60.0
) -> PlacementGroup:
    """`build_pg` for one replica's `ReplicaBundleSpec`."""
    return build_pg(
        spec.bundles,
        spec.strategy,
        name=name,
        bundle_label_selector=spec.bundle_label_selector,
        ready_timeout_s=ready_timeout_s,
    )


def group_states(prefix: str = "") -> dict[str, str]:
    """Name -> state (``CREATED``, ``PENDING``, ``REMOVED``...) of the groups named ``prefix...``.

    Reads ``placement_group_table()``, which lists the groups of every namespace and keeps removed
    ones: when a name was used again, the live group's state wins over the removed ones'.
    """
    states: dict[str, str] = {}
    for info in placement_group_table().values():
        name = str(info.get("name") or "")
        if name and name.startswith(prefix) and states.get(name, "REMOVED") == "REMOVED":
            states[name] = str(info["state"])
    return states


def remove_named_pgs_with_prefix(prefix: str) -> int:
    """Remove every live placement group of this namespace named ``prefix...``; returns how many.

    ``placement_group_table()`` lists the groups of every namespace, but only groups of the
    namespace this driver connected with are removed: a name is looked up in that namespace
    first, so another service's groups with the same names are left alone.

    Raises:
        InvalidSpecError: ``prefix`` is empty (it would remove every named group).
        BackendError: Ray failed to list or remove the groups.
    """
    if not prefix:
        msg = "refusing to remove placement groups with an empty prefix"
        raise InvalidSpecError(msg, field="prefix")
    try:
        names = {
            str(info["name"])
            for info in placement_group_table().values()
            if str(info.get("name", "")).startswith(prefix) and info.get("state") != "REMOVED"
        }
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"cannot list placement groups: {exc}"
        raise BackendError(msg, operation="list placement groups") from exc
    removed = 0
    for name in sorted(names):
        try:
            pg = get_placement_group(name)
        except ValueError:
            continue  # not in this namespace
        _remove(pg)
        removed += 1
    return removed


def get_held_groups(root: str = GROUP_NAME_ROOT) -> dict[str, tuple[NodeAssignment, ...]]:
    """The GPUs that live groups named ``root<deployment>:r<replica>`` of this namespace hold.

    For a new service to start from what Ray really holds: a detached group of an earlier run
    keeps its GPUs. Only ``CREATED`` groups are counted (a pending group holds nothing yet);
    GPU ordinals are not known to Ray's table, so each assignment lists the GPU count as
    ordinals ``0..n-1`` for the ledger to re-number.
    """
    held: dict[str, list[NodeAssignment]] = {}
    for info in placement_group_table().values():
        name = str(info.get("name") or "")
        if not name.startswith(root) or info.get("state") != "CREATED":
            continue
        deployment, _, replica = name[len(root) :].rpartition(":r")
        if not deployment or not replica.isdigit():
            continue
        try:
            get_placement_group(name)  # only groups of this namespace
        except ValueError:
            continue
        for index, node in sorted(info["bundles_to_node_id"].items()):
            gpus = int(info["bundles"].get(index, {}).get("GPU", 0))
            if gpus:
                held.setdefault(deployment, []).append(
                    NodeAssignment(replica_index=int(replica), node=node, gpus=tuple(range(gpus)))
                )
    return {name: tuple(assignments) for name, assignments in held.items()}


# -- work inside bundles ------------------------------------------------------------------------


def _in_bundle(pg: PlacementGroup, bundle_index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=bundle_index
    )


def submit_in_bundle(
    pg: PlacementGroup, bundle_index: int, fn: Callable[..., _T], *args: object
) -> ray.ObjectRef[_T]:
    """Start ``fn(*args)`` as a Ray task inside bundle ``bundle_index``; returns its ObjectRef.

    The task asks for no CPU or GPU of its own, so it fits any bundle. ``fn`` may also be an
    existing Ray remote function (it is then not wrapped again).
    """
    remote = fn if isinstance(fn, RemoteFunction) else ray.remote(fn)
    return remote.options(  # type: ignore[no-any-return]
        num_cpus=0, num_gpus=0, max_retries=0, scheduling_strategy=_in_bundle(pg, bundle_index)
    ).remote(*args)


def run_in_bundle(
    pg: PlacementGroup, bundle_index: int, fn: Callable[..., _T], *args: object, timeout_s: float
) -> _T:
    """Run ``fn(*args)`` on the node of bundle ``bundle_index`` and return its result.

    Raises:
        BackendError: the task failed or did not finish within ``timeout_s``.
    """
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
def _node_tasks() -> tuple[Any, Any]:  # two RemoteFunction values
    """The two tasks run on a bundle's node, made once per process.

    They are defined inside this function so that Ray ships them by value: a worker needs only
    the standard library and Ray, not this package, to run them.
    """

    def node_ip() -> str:
        import ray as ray_on_node  # noqa: PLC0415 - runs on the node

        return str(ray_on_node.util.get_node_ip_address())  # type: ignore[no-untyped-call]

    def free_port(exclude: frozenset[int], avoid_low: int, avoid_high: int) -> tuple[str, int]:
        """The node's routable IP and a port free on it, its wildcard and its loopback."""
        import socket  # noqa: PLC0415 - runs on the node

        import ray as ray_on_node  # noqa: PLC0415

        ip = str(ray_on_node.util.get_node_ip_address())  # type: ignore[no-untyped-call]

        def bindable(host: str, port: int) -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    return False
                return True

        for _ in range(256):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((ip, 0))  # the kernel's ephemeral range, away from Ray's fixed ports
                port = int(sock.getsockname()[1])
            if port in exclude or avoid_low <= port <= avoid_high:
                continue
            if all(bindable(host, port) for host in (ip, "0.0.0.0", "127.0.0.1")):  # noqa: S104 - probing, not serving
                return ip, port
        msg = f"no free port found on {ip}"
        raise OSError(msg)

    return ray.remote(node_ip), ray.remote(free_port)


def _probe_args(exclude: frozenset[int]) -> tuple[frozenset[int], int, int]:
    return exclude, RAY_WORKER_PORTS.start, RAY_WORKER_PORTS.stop - 1


def get_bundle_node_ip(pg: PlacementGroup, bundle_index: int, *, timeout_s: float = 30.0) -> str:
    """The routable IP address of the node bundle ``bundle_index`` landed on."""
    node_ip, _ = _node_tasks()
    return str(run_in_bundle(pg, bundle_index, node_ip, timeout_s=timeout_s))


def get_free_port_in_bundle(
    pg: PlacementGroup,
    bundle_index: int,
    *,
    holder: str,
    book: PortBook,
    timeout_s: float = 30.0,
    attempts: int = 5,
) -> int:
    """A port free on bundle ``bundle_index``'s node, recorded in ``book`` for ``holder``.

    The port is probed on the node's routable address, the wildcard and loopback, lies outside
    Ray's worker-port range, and is never one ``book`` has already given out on that host.

    Raises:
        BackendError: no port could be found and claimed.
    """
    _, free_port = _node_tasks()
    for _ in range(attempts):
        ip, port = run_in_bundle(
            pg, bundle_index, free_port, *_probe_args(book.given()), timeout_s=timeout_s
        )
        if book.claim(str(ip), int(port), holder):
            return int(port)
    msg = f"no unclaimed free port found in bundle {bundle_index} after {attempts} probes"
    raise BackendError(msg, operation="probe port")


# -- the backend the actors use -----------------------------------------------------------------


def _pg(group: object) -> PlacementGroup:
    if not isinstance(group, PlacementGroup):
        msg = f"not a Ray placement group: {group!r}"
        raise InvalidSpecError(msg, field="group")
    return group


class RayBackend:
    """`placement_actors.backends.protocol.ClusterBackend` on Ray; every method returns at once.

    The process must be connected to Ray (`connect` or `LocalCluster`) before the first call.
    """

    def topology(self) -> tuple[NodeTopology, ...]:
        """The alive GPU nodes (`get_cluster_topology`)."""
        return get_cluster_topology()

    def create_group(self, spec: ReplicaBundleSpec, *, name: str) -> object:
        """Ask Ray for the group; Ray answers before scheduling it."""
        return _create(
            spec.bundles,
            spec.strategy,
            name=name,
            bundle_label_selector=spec.bundle_label_selector,
        )

    def when_ready(self, group: object, callback: ReadyCallback) -> None:
        """Call ``callback`` from Ray's thread when the group is ready (or its wait failed)."""
        try:
            future = _pg(group).ready().future()
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"cannot watch placement group: {exc}"
            raise BackendError(msg, operation="watch placement group") from exc

        def done(settled: Any) -> None:  # noqa: ANN401 - a concurrent.futures.Future
            error = settled.exception()
            callback(None if error is None else error)

        future.add_done_callback(done)

    def scheduling_state(self, group: object) -> str:
        """``CREATED``, or Ray's scheduling state of a pending group (``INFEASIBLE``...)."""
        try:
            return _state(_pg(group))
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"cannot read placement group state: {exc}"
            raise BackendError(msg, operation="read placement group") from exc

    def remove_group(self, group: object) -> None:
        """Remove the group (quietly if it is gone already)."""
        _remove(_pg(group))

    def probe_bundle(
        self,
        group: object,
        bundle_index: int,
        *,
        exclude_ports: frozenset[int],
        callback: ProbeCallback,
    ) -> None:
        """Start a probe task in the bundle; ``callback`` gets its `BundleProbe` or failure."""
        try:
            _, free_port = _node_tasks()
            ref = submit_in_bundle(_pg(group), bundle_index, free_port, *_probe_args(exclude_ports))
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
            ip, port = settled.result()
            callback(BundleProbe(node_ip=ip, port=port))

        future.add_done_callback(done)

    def remove_groups_with_prefix(self, prefix: str) -> int:
        """`remove_named_pgs_with_prefix`."""
        return remove_named_pgs_with_prefix(prefix)


# -- hosting a service object in a named, detached Ray actor -------------------------------------


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
