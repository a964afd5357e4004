"""The commands of ``placement-actors``; each returns the process exit code."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka
from rich.console import Console
from rich.text import Text

from placement_actors.actors.deployment_placement import DeploymentPlacementActor
from placement_actors.actors.messages import (
    ClusterView,
    DefragmentationPlan,
    GetClusterView,
    GetDefragmentationPlan,
    GetPlacement,
    GetPlacementFailure,
    MoveReplica,
    NodeJoined,
    Place,
    Placement,
    PlacementFailure,
    Release,
    Released,
    ReplicaMoved,
    ReplicaReplaced,
    Subscribe,
)
from placement_actors.cli import render
from placement_actors.config_files import DeploymentSpec, load_cluster, load_deployments
from placement_actors.domain.deployments import GROUP_NAME_ROOT, group_prefix
from placement_actors.domain.errors import (
    BackendError,
    CapacityError,
    InvalidSpecError,
    PlacementError,
    PlacementGroupTimeoutError,
)
from placement_actors.domain.results import PlacementResult, ReplicaPlacement
from placement_actors.domain.topology import NodeTopology
from placement_actors.policies.bundle_shapes import plan_replica_bundle_shape
from placement_actors.policies.placement_decision import largest_first
from placement_actors.settings import head_exclusion
from placement_actors.wiring import start_on_ray

__all__ = [
    "DEMO_EGRESS",
    "DEMO_WORKERS",
    "EXIT_NO_CAPACITY",
    "EXIT_OK",
    "Output",
    "UsageError",
    "defrag",
    "demo",
    "move",
    "place",
    "plan",
    "reap",
    "release",
    "sandbox",
    "serve",
    "show",
    "status",
    "watch",
    "why",
]

EXIT_OK = 0
EXIT_NO_CAPACITY = 4

DEMO_WORKERS: Mapping[str, int] = {"gpu-a": 4, "gpu-b": 4, "gpu-c": 8, "edge-1": 0}
"""The embedded demo cluster: a CPU-only head (with egress) and these raylets (name: GPUs)."""
DEMO_EGRESS = ("edge-1",)
"""The embedded cluster's egress workers (its head is an egress node too, without GPUs)."""

_REPLY_TIMEOUT_S = 30.0
_PROBE_PAD_S = 10.0
"""Waiting for a master: the ready timeout, plus this for the probe task after readiness."""


class UsageError(Exception):
    """The arguments do not make a runnable command (exit code 2).

    Attributes:
        prog: the command whose ``--help`` explains its arguments (``"placement-actors place"``),
            or ``None`` when the command line has not named one.
    """

    def __init__(self, message: str, *, prog: str | None = None) -> None:
        """Create the error; ``prog`` names the command whose usage was broken."""
        super().__init__(message)
        self.prog = prog


@dataclass(slots=True, kw_only=True)
class Output:
    """Where a command prints: tables on ``console``, spinners on ``progress``, or JSON.

    In ``--json`` mode a command hands its one document to `emit`; the command line prints it
    (with the exit code) only once the command has returned, so a command that fails after
    emitting prints the error object instead, never two documents.

    Everything a command prints for people goes through `say` or a `render` function: user text
    (names, node ids, reasons, addresses) is never read as rich markup.
    """

    console: Console
    progress: Console
    json: bool
    document: dict[str, Any] | None = None
    stream: bool = False
    """A streaming command: with ``--json``, standard output holds `line` objects only."""
    node_names: Mapping[str, str] = field(default_factory=dict)
    """Node id -> name, once a command has read them: an error line names nodes as `status`."""

    def emit(self, data: Mapping[str, Any]) -> None:
        """Keep ``data`` as the command's JSON document (only in ``--json`` mode)."""
        if self.json:
            self.document = dict(data)

    def say(self, text: str) -> None:
        """Print one line for people (not in ``--json`` mode), literally: no markup."""
        if not self.json:
            self.console.print(Text(text), soft_wrap=True)

    def line(self, data: Mapping[str, Any], text: str) -> None:
        """Print one item of a stream at once: ``data`` as one JSON line, or ``text`` literally."""
        if self.json:
            print(json.dumps(data), file=self.console.file, flush=True)
        else:
            self.console.print(Text(text), soft_wrap=True)

    def note(self, text: str) -> None:
        """Print a progress line on standard error, literally: no markup."""
        self.progress.print(Text(text), soft_wrap=True)

    def waiting(self, what: str) -> contextlib.AbstractContextManager[Any]:
        """A spinner on standard error while something is awaited (``what`` is literal text)."""
        return self.progress.status(Text(what))


@dataclass(slots=True, kw_only=True)
class _Placed:
    results: list[PlacementResult]
    failures: list[CapacityError]


# -- Ray plumbing -------------------------------------------------------------------------------


@contextlib.contextmanager
def _ray_cluster(address: str | None, out: Output) -> Iterator[Any]:
    """Connect to ``address``, or start the embedded cluster and yield it (else ``None``)."""
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray loads only when used

    if address is not None:
        with out.waiting(f"Connecting to Ray at {address}"), on_ray.connected(address):
            yield None
        return
    cluster = on_ray.LocalCluster(
        head_gpus=0,
        worker_gpus=tuple(DEMO_WORKERS.values()),
        worker_names=tuple(DEMO_WORKERS),
        egress_workers=tuple(i for i, n in enumerate(DEMO_WORKERS) if n in DEMO_EGRESS),
    )
    layout = ", ".join(
        f"{name} ({'egress, ' if name in DEMO_EGRESS else ''}"
        f"{f'{gpus} GPUs' if gpus else 'no GPUs'})"
        for name, gpus in DEMO_WORKERS.items()
    )
    layout = f"head (egress, no GPUs), {layout}"
    with out.waiting(f"Starting a local Ray cluster: {layout}"):
        cluster.__enter__()
    out.note(f"Local Ray cluster at {cluster.address}: {layout}")
    try:
        yield cluster
    finally:
        with _no_interrupts(), out.waiting("Stopping the local Ray cluster"):
            cluster.__exit__(None, None, None)
        out.note("Local Ray cluster stopped.")


@contextlib.contextmanager
def _signals_handled(
    signals: Sequence[signal.Signals], handler: Callable[[int, Any], None] | signal.Handlers
) -> Iterator[None]:
    """``signals`` go to ``handler`` in the block, then to what handled them before.

    In the main thread only, where Python handles signals; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous)


_STOPPING = (signal.SIGTERM, signal.SIGHUP)
"""Signals that ask a long-running command to stop: a ``kill``, the terminal closed."""


def _no_interrupts() -> contextlib.AbstractContextManager[None]:
    """Ctrl-C (and `_STOPPING` signals) are ignored in the block: a clean-up is not cut short."""
    return _signals_handled((signal.SIGINT, *_STOPPING), signal.SIG_IGN)


def _interrupt(signum: int, frame: object) -> None:
    del signum, frame
    raise KeyboardInterrupt


def _stopped_as_by_ctrl_c() -> contextlib.AbstractContextManager[None]:
    """`_STOPPING` signals raise `KeyboardInterrupt` in the block, so they stop it as Ctrl-C does.

    Installed once Ray runs in this process (Ray's driver installs handlers of its own).
    """
    return _signals_handled(_STOPPING, _interrupt)


def _node_names(out: Output) -> dict[str, str]:
    """Node id -> name on the connected cluster; kept on ``out``, so errors name nodes too."""
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415

    names = on_ray.node_names(include_dead=True)  # a lost node is shown by its name too
    out.node_names = names
    return names


def _place_all(
    ask: Any,  # noqa: ANN401 - Callable[[Place], PlacementResult]: an actor ref's or a client's
    specs: Sequence[DeploymentSpec],
    placed: _Placed,
) -> None:
    """Place each spec, largest replicas first, recording as it goes (clean-up sees all of it).

    Largest first: small replicas placed before a large one could leave it only a split.
    """
    for index in largest_first([s.deployment for s in specs]):
        spec = specs[index]
        try:
            placed.results.append(ask(Place(spec.deployment, spec.constraints)))
        except CapacityError as exc:
            placed.failures.append(exc)


def _endpoints(replicas: Sequence[ReplicaPlacement], timeout_s: float) -> dict[str, str]:
    """Group name -> ``ip:port`` of bundle 0 (the master), or why it failed."""
    found = {}
    for replica in replicas:
        try:
            ip = replica.master.node_ip.get(timeout=timeout_s)
            port = replica.master.port.get(timeout=timeout_s)
            found[replica.group_name] = f"{ip}:{port}"
        except PlacementError as exc:
            found[replica.group_name] = f"failed: {type(exc).__name__}"
        except pykka.Timeout:
            found[replica.group_name] = f"pending after {timeout_s:g}s"
    return found


def _unknown_masters(endpoints: Mapping[str, str]) -> dict[str, str]:
    """Group name -> why its master is not known, for the groups whose master is not known."""
    return {g: e for g, e in endpoints.items() if e.startswith(("failed", "pending"))}


def _shortfall(placed: _Placed, endpoints: Mapping[str, str] | None) -> dict[str, str]:
    """The ``error`` and ``message`` of a placement that exits non-zero; empty when all is well.

    A document that goes with a non-zero exit code names an error type and says what went wrong,
    like the error object of a command that failed outright.
    """
    if placed.failures:
        kinds = {type(e).__name__ for e in placed.failures}
        names = ", ".join(e.deployment for e in placed.failures)
        return {
            "error": kinds.pop() if len(kinds) == 1 else CapacityError.__name__,
            "message": f"{len(placed.failures)} deployment(s) did not fit: {names}",
        }
    unknown = _unknown_masters(endpoints or {})
    if unknown:
        first = next(iter(unknown.values()))
        listed = "; ".join(f"{group}: {why}" for group, why in unknown.items())
        return {
            "error": (
                first.removeprefix("failed: ")
                if first.startswith("failed")
                else PlacementGroupTimeoutError.__name__
            ),
            "message": f"{len(unknown)} master address(es) not known: {listed}",
        }
    return {}


def _load(
    out: Output, path: str | Path, known_nodes: Collection[str] | None = None
) -> tuple[DeploymentSpec, ...]:
    """A deployments file's entries; one line on standard error names the keys that are unset."""
    specs = load_deployments(path, known_nodes=known_nodes)
    unset = [s for s in specs if s.unset_key_env is not None]
    if unset:  # variables' names only: never a key
        variables = ", ".join(sorted({str(s.unset_key_env) for s in unset}))
        names = ", ".join(s.deployment.name for s in unset)
        out.note(f"not set: {variables}; placed without an API key: {names}")
    return specs


def _report_placements(
    out: Output,
    placed: _Placed,
    names: Mapping[str, str],
    endpoints: Mapping[str, str] | None,
    extra: Mapping[str, object] | None = None,
) -> None:
    results = [render.result_data(r, names, endpoints) for r in placed.results]
    failures = [render.failure_data(e, names) for e in placed.failures]
    out.emit({"placed": results, "did_not_fit": failures, **(extra or {})})
    if not out.json:
        if results or not failures:  # no table of nothing placed above the refusals
            render.print_replicas(out.console, results, masters=endpoints is not None)
        for failure in failures:
            render.print_failure(out.console, failure)


def _wait_for_masters(out: Output, placed: _Placed, timeout_s: float) -> dict[str, str]:
    replicas = [r for result in placed.results for r in result.replicas]
    with out.waiting(f"Waiting for {len(replicas)} placement groups"):
        return _endpoints(replicas, timeout_s)


# -- commands -----------------------------------------------------------------------------------


def demo(args: argparse.Namespace, out: Output) -> int:
    """Place a deployments file end to end on Ray, print, then remove everything it made."""
    specs = _load(out, args.deployments)  # a bad file stops us before Ray starts
    with _ray_cluster(args.address, out) as cluster:
        from placement_actors.backends import ray as on_ray  # noqa: PLC0415
        from placement_actors.service import SERVICE_NAME  # noqa: PLC0415

        if args.address is not None and _service_runs(SERVICE_NAME):
            msg = (
                f"{SERVICE_NAME} runs on this cluster and the demo's clean-up would remove its "
                "groups; use `place FILE --address ADDR` instead"
            )
            raise UsageError(msg, prog="placement-actors demo")

        ref = start_on_ray(ready_timeout_s=args.ready_timeout)
        placed = _Placed(results=[], failures=[])
        alive: list[str] = []
        moved: list[dict[str, Any]] = []
        restart: dict[str, Any] | None = None
        try:
            _place_all(lambda m: ref.ask(m, timeout=_REPLY_TIMEOUT_S), specs, placed)
            endpoints = _wait_for_masters(out, placed, args.ready_timeout + _PROBE_PAD_S)
            names = _node_names(out)
            if cluster is not None:  # the embedded cluster: show the service following it
                moved = _a_node_leaves(
                    cluster, ref, placed, names, out=out, timeout_s=args.ready_timeout
                )
                ref, restart = _the_service_restarts(ref, out=out, timeout_s=args.ready_timeout)
        finally:
            # Release every name of the file, placed or not: a release also reaps groups that a
            # failed or earlier placement of that name left behind.
            for spec in specs:
                ref.ask(Release(spec.deployment.name), timeout=_REPLY_TIMEOUT_S)
            ref.stop(timeout=_REPLY_TIMEOUT_S)  # and its planner
            ours = {group_prefix(s.deployment.name) for s in specs}
            alive = [
                name
                for name, state in on_ray.group_states(GROUP_NAME_ROOT).items()
                if state.is_live and any(name.startswith(p) for p in ours)
            ]
        _report_placements(
            out,
            placed,
            names,
            endpoints,
            {"moved": moved, "restart": restart, "groups_left_alive": len(alive)},
        )
        if moved and not out.json:
            out.say(
                f"Then a spare node (gpu-spare, 4 GPUs) joined and {moved[0]['from_name']} left "
                f"the cluster: the service placed its {len(moved)} replica(s) again, with new "
                "masters."
            )
            render.print_moves(out.console, moved)
        if restart is not None:
            same = "unchanged" if restart["masters_unchanged"] else "CHANGED"
            out.say(
                f"Then the service stopped and started again: in {restart['seconds']:.1f}s it "
                f"took back {restart['recovered']} deployment(s) from its records in Ray, every "
                f"master address and port {same}."
            )
        out.say(f"Released every deployment; placement groups left alive: {len(alive)}.")
    return EXIT_OK


class _Events(pykka.ThreadingActor):
    """Queues the service's events (a `Subscribe`r)."""

    def __init__(self, found: queue.Queue[object]) -> None:
        super().__init__()
        self._found = found

    def on_receive(self, message: Any) -> None:  # noqa: ANN401 - any event
        self._found.put(message)


def sandbox(args: argparse.Namespace, out: Output) -> int:
    """Start a local Ray cluster and the service on it; keep both until Ctrl-C, then stop both.

    A ``kill`` (SIGTERM) or a closed terminal (SIGHUP) stops them the same way.
    """
    from placement_actors.service import PlacementClient  # noqa: PLC0415 - Ray loads here

    with _ray_cluster(None, out) as cluster, _stopped_as_by_ctrl_c():
        with out.waiting("Starting the placement service on it"):
            client = PlacementClient.serve(
                cluster.address,
                ready_timeout_s=args.ready_timeout,
                learn_gpu_ids=args.learn_gpu_ids,
            )
        out.stream = True  # it runs: one line (one JSON object), then only its end on stderr
        try:  # from the line on: a stop the moment it is printed still stops the service
            out.line(
                {
                    "address": cluster.address,
                    "service": client.name,
                    "gpus": dict(DEMO_WORKERS),
                    "egress": ["head", *DEMO_EGRESS],
                },
                f"Ray runs at {cluster.address} with the service ({client.name}) on it. In "
                f"another terminal: placement-actors place examples/deployments.yaml --address "
                f"{cluster.address}, then status, show, why, move... Ctrl-C stops both.",
            )
            threading.Event().wait()  # until Ctrl-C: the cluster serves the other terminal
        except KeyboardInterrupt:
            out.note("Stopping the service and the local cluster (their groups go with them).")
        finally:
            # A second Ctrl-C must not cut the clean-up short and leave raylets running.
            with _no_interrupts():
                time.sleep(_SIGNAL_S)  # a signal to the whole group reaches Ray's processes too
                if not cluster.gcs_answers() or not _stop_for_good(client):
                    out.note("Ray's GCS no longer answers; stopping what is left of the cluster.")
    return EXIT_OK


_GRACE_S = 2.0
"""How long clients (a `watch`) get to see the service gone before the cluster goes too."""

_SIGNAL_S = 0.5
"""How long the clean-up lets a signal sent to the whole process group act on Ray's processes
before it asks whether Ray's GCS answers: one still stopping may answer, then not."""

_STOP_WAIT_S = 20.0
"""The longest the clean-up waits for the service to stop (Ray's GCS may stop meanwhile)."""


def _stop_for_good(client: Any) -> bool:  # noqa: ANN401 - a PlacementClient
    """Stop the service running now (served again since, maybe), then give its clients a moment.

    A client whose call is in flight learns the service is gone and ends (exit 5) while Ray still
    answers: once the cluster is gone, Ray would end it only after a minute, with its own error.
    Returns ``False`` when that did not end within `_STOP_WAIT_S` (it is left to a thread of its
    own: Ray's GCS stopped during it, and each call to it would wait Ray's minute).
    """
    failed: list[BaseException] = []

    def stop() -> None:
        try:
            with contextlib.suppress(PlacementError):
                client.stop_service()
                time.sleep(_GRACE_S)
        except BaseException as exc:  # raised again in the caller's thread  # noqa: BLE001
            failed.append(exc)

    stopping = threading.Thread(target=stop, name="placement-actors-sandbox-stop", daemon=True)
    stopping.start()
    stopping.join(_STOP_WAIT_S)
    if failed:
        raise failed[0]
    return not stopping.is_alive()


def _a_node_leaves(
    cluster: Any,  # noqa: ANN401 - a LocalCluster
    ref: pykka.ActorRef[Any],
    placed: _Placed,
    names: dict[str, str],
    *,
    out: Output,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """A spare node joins, then the node under the fewest local GPUs leaves; its replicas move.

    Returns one row per moved replica (from, to, new master address).
    """
    found: queue.Queue[object] = queue.Queue()
    listener = _Events.start(found)
    try:
        ref.ask(Subscribe(listener), timeout=_REPLY_TIMEOUT_S)
        on_node: dict[str, int] = {}
        for result in placed.results:
            for assignment in result.assignments:
                if assignment.gpus and assignment.node in cluster.worker_ids:
                    on_node[assignment.node] = on_node.get(assignment.node, 0) + len(
                        assignment.gpus
                    )
        if not on_node:
            return []
        with out.waiting("A spare node (gpu-spare, 4 GPUs) joins the cluster"):
            spare = cluster.add_worker(gpus=4, name="gpu-spare")
            _next_event(found, NodeJoined, timeout_s)
        names = {**names, spare: "gpu-spare"}
        leaving = min(on_node, key=lambda n: (on_node[n], names.get(n, n)))
        lost = sum(1 for r in placed.results for a in r.assignments if a.node == leaving)
        with out.waiting(f"{names.get(leaving, leaving)} leaves the cluster"):
            cluster.remove_worker(leaving)
            return [
                _move_row(_next_event(found, ReplicaReplaced, timeout_s), leaving, names, timeout_s)
                for _ in range(lost)
            ]
    except (queue.Empty, PlacementError, pykka.Timeout) as exc:
        out.note(f"the node change did not finish: {type(exc).__name__}")
        return []
    finally:
        listener.stop()


def _the_service_restarts(
    ref: pykka.ActorRef[Any], *, out: Output, timeout_s: float
) -> tuple[pykka.ActorRef[Any], dict[str, Any] | None]:
    """Stop the service and start it again; it takes every deployment back from its records.

    Returns the new service (the old one is stopped) and what it took back.
    """

    def masters(service: pykka.ActorRef[Any]) -> dict[str, list[str]]:
        view = service.ask(GetClusterView(), timeout=_REPLY_TIMEOUT_S)
        found: dict[str, list[str]] = {}
        for name in view.deployments if isinstance(view, ClusterView) else ():
            now = service.ask(GetPlacement(name), timeout=_REPLY_TIMEOUT_S)
            result = now.result if isinstance(now, Placement) else None
            replicas = result.replicas if result is not None else ()
            found[name] = [
                f"{r.master.node_ip.get(timeout=timeout_s)}:{r.master.port.get(timeout=timeout_s)}"
                for r in replicas
            ]
        return found

    try:
        before = masters(ref)
    except (PlacementError, pykka.Timeout) as exc:
        out.note(f"the restart was skipped: {type(exc).__name__}")
        return ref, None
    with out.waiting("The service stops and starts again"):
        ref.stop(timeout=_REPLY_TIMEOUT_S)
        started = time.monotonic()
        ref = start_on_ray(ready_timeout_s=timeout_s)
        after = masters(ref)
        took = time.monotonic() - started
    return ref, {
        "recovered": len(after),
        "masters_unchanged": after == before,
        "seconds": round(took, 2),
    }


def _next_event(found: queue.Queue[object], kind: type, timeout_s: float) -> Any:  # noqa: ANN401
    deadline = time.monotonic() + timeout_s
    while True:
        event = found.get(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(event, kind):
            return event


def _move_row(
    replaced: ReplicaReplaced, leaving: str, names: Mapping[str, str], timeout_s: float
) -> dict[str, Any]:
    master = "-"
    if replaced.placement is not None:
        bundle = replaced.placement.master
        master = f"{bundle.node_ip.get(timeout=timeout_s)}:{bundle.port.get(timeout=timeout_s)}"
    return {
        "deployment": replaced.deployment,
        "replica": replaced.replica_index,
        "from": leaving,
        "from_name": names.get(leaving, leaving),
        "to": [a.node for a in replaced.assignments],  # one node, or each of a split's
        "to_names": [names.get(a.node, a.node) for a in replaced.assignments],
        "gpus": [list(a.gpus) for a in replaced.assignments],  # the ordinals on each of them
        "master": master,
    }


def place(args: argparse.Namespace, out: Output) -> int:
    """Place a deployments file through the running service, or decide on a cluster file."""
    if args.cluster is not None:
        return _place_on_file(args, out)
    address = args.address or _ray_address_from_env()
    if address is None:
        msg = "place needs --cluster FILE (decide only) or --address ADDR (a running service)"
        raise UsageError(msg, prog="placement-actors place")
    specs = _load(out, args.file)  # a bad file stops us before Ray is reached
    client = _client(address)
    view = client.ask(GetClusterView(), timeout=_REPLY_TIMEOUT_S)
    known = {n.node_id for n in view.nodes}
    if any(spec.constraints.named_nodes() - known for spec in specs):
        # Read again to name the file and line of each node the service does not know.
        specs = load_deployments(args.file, known_nodes=known)  # (its unset keys told above)
    placed = _Placed(results=[], failures=[])
    _place_all(lambda m: client.ask(m, timeout=_REPLY_TIMEOUT_S), specs, placed)
    endpoints = _wait_for_masters(out, placed, args.ready_timeout + _PROBE_PAD_S)
    shortfall = _shortfall(placed, endpoints)
    _report_placements(out, placed, _node_names(out), endpoints, shortfall)
    return EXIT_NO_CAPACITY if shortfall else EXIT_OK


def _place_on_file(args: argparse.Namespace, out: Output) -> int:
    cluster = load_cluster(args.cluster)
    specs = _load(out, args.file, known_nodes=[n.node_id for n in cluster.topology])
    ref = DeploymentPlacementActor.start(
        topology=cluster.topology,
        egress_nodes=cluster.egress_nodes,
        ignore_head_node=head_exclusion(),  # what the service would decide
    )
    placed = _Placed(results=[], failures=[])
    try:
        _place_all(lambda m: ref.ask(m, timeout=_REPLY_TIMEOUT_S), specs, placed)
        view = ref.ask(GetClusterView(), timeout=_REPLY_TIMEOUT_S)
    finally:
        ref.stop(timeout=_REPLY_TIMEOUT_S)
    assert isinstance(view, ClusterView)  # noqa: S101 - the actor's reply type
    nodes = render.view_data(view, {})
    shortfall = _shortfall(placed, None)
    _report_placements(out, placed, {}, None, {"cluster": nodes, **shortfall})
    if not out.json:
        render.print_cluster(out.console, nodes)
    return EXIT_NO_CAPACITY if shortfall else EXIT_OK


def plan(args: argparse.Namespace, out: Output) -> int:
    """Plan one replica's bundle shape on a cluster file or on Ray's total GPUs."""
    topology: Sequence[NodeTopology]
    if args.cluster is not None:
        topology = load_cluster(args.cluster).topology
    else:
        from placement_actors.backends import ray as on_ray  # noqa: PLC0415

        address = args.address or _ray_address_from_env()
        if address is None:  # a plan for a made-up cluster would mislead
            msg = "plan needs --cluster FILE or --address ADDR (a running Ray cluster)"
            raise UsageError(msg, prog="placement-actors plan")
        with _ray_cluster(address, out):
            topology = on_ray.get_cluster_topology()
    spec = plan_replica_bundle_shape(
        args.tp, topology=topology, ignore_head_node=head_exclusion(args.ignore_head_node or None)
    )
    data = render.spec_data(spec)
    out.emit(data)
    if not out.json:
        render.print_spec(out.console, args.tp, data)
    return EXIT_OK


def serve(args: argparse.Namespace, out: Output) -> int:
    """Start (or stop) the placement service on a Ray cluster."""
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415
    from placement_actors.service import SERVICE_NAME, PlacementClient  # noqa: PLC0415

    with out.waiting(f"Connecting to Ray at {args.address}"):
        on_ray.connect(args.address)
    running = _service_runs(SERVICE_NAME)
    if args.stop:
        if running:
            _client(args.address).stop_service()
        out.emit({"service": SERVICE_NAME, "running": False, "was_running": running})
        out.say(
            f"Stopped {SERVICE_NAME}; its placement groups stay."
            if running
            else f"{SERVICE_NAME} was not running on {args.address}; nothing to stop."
        )
        return EXIT_OK
    if running:  # found, not started: the settings given here do not apply
        client = PlacementClient.connect(args.address)
        out.emit(
            {"service": client.name, "address": args.address, "running": True, "started": False}
        )
        out.say(
            f"{client.name} already runs on {args.address} (namespace placement-actors), with "
            "the settings it was started with; stop it first (serve --stop) to change them."
        )
        return EXIT_OK
    with out.waiting(f"Starting {SERVICE_NAME} on {args.address}"):
        client = PlacementClient.serve(
            args.address,
            ready_timeout_s=args.ready_timeout,
            ignore_head_node=args.ignore_head_node or None,
            learn_gpu_ids=args.learn_gpu_ids,
        )
    out.emit({"service": client.name, "address": args.address, "running": True, "started": True})
    out.say(
        f"{client.name} runs on {args.address} (namespace placement-actors). "
        "Drivers reach it with PlacementClient.connect(address)."
    )
    return EXIT_OK


def status(args: argparse.Namespace, out: Output) -> int:
    """Every node of the running service: a table and an occupancy picture."""
    view = _client(args.address).ask(GetClusterView(), timeout=_REPLY_TIMEOUT_S)
    data = render.view_data(view, _node_names(out))
    if args.svg is not None:  # first: a file that cannot be written is the only thing reported
        picture = Console(record=True, width=100, file=io.StringIO())
        render.print_cluster(picture, data)
        render.print_occupancy(picture, data)
        try:
            picture.save_svg(str(args.svg), title="placement-actors status")
        except OSError as exc:
            msg = f"cannot write --svg {args.svg}: {exc.strerror or exc}"
            raise UsageError(msg, prog="placement-actors status") from exc
    out.emit(data)
    if not out.json:
        render.print_cluster(out.console, data)
        render.print_occupancy(out.console, data)
    return EXIT_OK


def release(args: argparse.Namespace, out: Output) -> int:
    """Release one deployment through the running service."""
    released = _client(args.address).ask(Release(args.name), timeout=_REPLY_TIMEOUT_S)
    assert isinstance(released, Released)  # noqa: S101 - the service's reply type
    out.emit(
        {
            "deployment": released.deployment,
            "was_placed": released.was_placed,
            "gpus_freed": released.gpus_freed,
            "replicas_freed": released.replicas_freed,
        }
    )
    gpus, replicas = released.gpus_freed, released.replicas_freed
    what = (
        f"freed {gpus} GPU{'' if gpus == 1 else 's'} of {replicas} "
        f"replica{'' if replicas == 1 else 's'}"
        if released.was_placed
        else "was not placed (any leftover groups were removed)"
    )
    out.say(f"{released.deployment}: {what}.")
    return EXIT_OK


def reap(args: argparse.Namespace, out: Output) -> int:
    """Release the service's deployments named PREFIX..., then remove leftover groups."""
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415

    if not args.prefix:
        msg = "reap needs a non-empty prefix"
        raise UsageError(msg, prog="placement-actors reap")
    client = _client(args.address)
    view = client.ask(GetClusterView(), timeout=_REPLY_TIMEOUT_S)
    released = [d for d in view.deployments if d.startswith(args.prefix)]
    for name in released:
        client.ask(Release(name), timeout=_REPLY_TIMEOUT_S)
    leftovers = on_ray.remove_named_pgs_with_prefix(GROUP_NAME_ROOT + args.prefix)
    out.emit({"released": released, "leftover_groups_removed": leftovers})
    out.say(
        f"Released {len(released)} deployment(s): {', '.join(released) or '-'}; "
        f"removed {leftovers} leftover placement group(s)."
    )
    return EXIT_OK


def why(args: argparse.Namespace, out: Output) -> int:
    """Each node's reason for rejecting a deployment's last Place."""
    client = _client(args.address)
    failure = client.ask(GetPlacementFailure(args.name), timeout=_REPLY_TIMEOUT_S)
    assert isinstance(failure, PlacementFailure)  # noqa: S101 - the service's reply type
    if failure.error is None:
        found = client.ask(GetPlacement(args.name), timeout=_REPLY_TIMEOUT_S)
        placed = isinstance(found, Placement) and found.result is not None
        out.emit({"deployment": args.name, "did_not_fit": None, "placed": placed})
        out.say(
            f"{args.name}: placed, and its last Place did not fail."
            if placed
            else f"{args.name}: not placed, and no failed Place of it is on record."
        )
        return EXIT_OK
    names = _node_names(out)
    data = render.failure_data(failure.error, names)
    data["message"] = render.named(data["message"], names)  # as error lines name nodes
    out.emit(data)
    if not out.json:
        render.print_failure(out.console, data)
    return EXIT_NO_CAPACITY


def show(args: argparse.Namespace, out: Output) -> int:
    """Where a deployment's replicas run now: nodes (bundle 0 first), GPUs, master addresses."""
    client = _client(args.address)
    found = client.ask(GetPlacement(args.name), timeout=_REPLY_TIMEOUT_S)
    assert isinstance(found, Placement)  # noqa: S101 - the service's reply type
    if found.result is None:
        failure = client.ask(GetPlacementFailure(args.name), timeout=_REPLY_TIMEOUT_S)
        failed = isinstance(failure, PlacementFailure) and failure.error is not None
        hint = f" (its last Place failed: `why {args.name}` says why)" if failed else ""
        msg = f"deployment {args.name} is not placed{hint}"
        raise InvalidSpecError(msg, field="name")
    placed = _Placed(results=[found.result], failures=[])
    endpoints = _wait_for_masters(out, placed, args.ready_timeout + _PROBE_PAD_S)
    data = {**render.result_data(found.result, _node_names(out), endpoints)}
    data["missing"] = list(found.missing)
    shortfall = _shortfall(placed, endpoints)
    out.emit({**data, **shortfall})
    if not out.json:
        render.print_replicas(out.console, [data], masters=True)
        if found.missing:
            listed = ", ".join(str(i) for i in found.missing)
            out.say(
                f"Not placed now: replica(s) {listed} of {args.name} (their node was lost); the "
                "service places them again when capacity returns."
            )
    return EXIT_NO_CAPACITY if shortfall else EXIT_OK


def defrag(args: argparse.Namespace, out: Output) -> int:
    """Moves of running replicas that would free whole nodes; with ``--apply``, made too."""
    client = _client(args.address)
    query = GetDefragmentationPlan(gpus=args.gpus, max_moves=args.max_moves)
    plan = client.ask(query, timeout=_REPLY_TIMEOUT_S)
    assert isinstance(plan, DefragmentationPlan)  # noqa: S101 - the service's reply type
    names = _node_names(out)
    moves = render.moves_data(plan.moves, names)
    freed = [{"node": n, "name": names.get(n, n)} for n in plan.freed_nodes]
    if not plan.moves:
        out.emit({"gpus": plan.gpus, "moves": moves, "freed_nodes": freed, "applied": 0})
        if not out.json:  # only the line for people needs the largest node
            view = client.ask(GetClusterView(), timeout=_REPLY_TIMEOUT_S)
            largest = max((n.capacity for n in view.nodes), default=0)
            out.say(
                f"No node has {plan.gpus} GPUs in all (the largest has {largest}): no move frees "
                "one."
                if plan.gpus > largest
                else f"No moves found that would leave a node with {plan.gpus} GPUs free."
            )
        return EXIT_OK
    if not out.json:
        shown = ", ".join(n["name"] for n in freed)
        verb = "will" if args.apply else "would"
        out.console.print(
            Text(f"{len(plan.moves)} move(s) {verb} leave {plan.gpus} GPUs free on: {shown}"),
            soft_wrap=True,
        )
        render.print_advice(out.console, moves)
    applied = 0
    if args.apply:
        for move in plan.moves:  # in the plan's order; the first that fails stops the rest
            try:
                moved = client.ask(MoveReplica.of(move), timeout=_REPLY_TIMEOUT_S)
                _wait_moved(moved, out)  # one replica down at a time
            except PlacementError:
                out.note(f"{applied} of {len(plan.moves)} move(s) made before this one failed")
                raise
            applied += 1
        out.say(f"Made {applied} move(s): {_RESTART_NOTE}")
    out.emit({"gpus": plan.gpus, "moves": moves, "freed_nodes": freed, "applied": applied})
    return EXIT_OK


_RESTART_NOTE = (
    "a moved replica has a new placement group; whatever ran in its old group stopped with "
    "it, and its controller starts it again on the new one (`watch` shows it as replica moved)"
)


_MOVED_READY_S = 120.0
"""How long a command waits for a moved replica's new group and endpoints."""


def _wait_moved(moved: ReplicaMoved, out: Output) -> None:
    """Wait until a moved replica's new group is ready and each bundle has its endpoint."""
    if moved.placement is None:
        return
    what = f"{moved.deployment} #{moved.replica_index} on its new node"
    try:
        with out.waiting(f"Waiting for {what}"):
            for bundle in moved.placement.bundles:
                bundle.port.get(timeout=_MOVED_READY_S)
    except pykka.Timeout as exc:
        msg = f"{what} moved, but its new group was not ready within {_MOVED_READY_S:g}s"
        raise BackendError(msg, operation="wait for placement group") from exc


def move(args: argparse.Namespace, out: Output) -> int:
    """Move one running replica of a deployment to another node, through the running service."""
    client = _client(args.address)  # connects this process to Ray: names are read after
    names = _node_names(out)
    by_name = {name: node for node, name in names.items()}
    # A name status shows, else the text as given: the service refuses a node it does not know.
    target = args.to if args.to in names else by_name.get(args.to, args.to)
    # Where it runs now goes with the move: sent again (as Ray sends a restarted service the
    # calls on their way), a move carried out already is answered as done.
    now = client.ask(GetPlacement(args.name), timeout=_REPLY_TIMEOUT_S)
    held = (
        [a for a in now.result.assignments if a.replica_index == args.replica]
        if isinstance(now, Placement) and now.result is not None
        else []
    )
    source, gpus = (held[0].node, len(held[0].gpus)) if len(held) == 1 else (None, None)
    moved = client.ask(
        MoveReplica(args.name, args.replica, target, from_node=source, gpus=gpus),
        timeout=_REPLY_TIMEOUT_S,
    )
    assert isinstance(moved, ReplicaMoved)  # noqa: S101 - the service's reply type
    _wait_moved(moved, out)
    data = {
        "deployment": moved.deployment,
        "replica": moved.replica_index,
        "from": moved.from_node,
        "from_name": names.get(moved.from_node, moved.from_node),
        "to": moved.to_node,
        "to_name": names.get(moved.to_node, moved.to_node),
        "gpus": [o for a in moved.assignments for o in a.gpus],
        "group": None if moved.placement is None else moved.placement.group_name,
    }
    out.emit(data)
    out.say(
        f"Moved {moved.deployment} #{moved.replica_index} from {data['from_name']} to "
        f"{data['to_name']}: {_RESTART_NOTE}."
    )
    return EXIT_OK


def watch(args: argparse.Namespace, out: Output) -> int:
    """Stream the service's events until ``--count``, ``--timeout``, Ctrl-C or the service ends."""
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415 - Ray loads only when used

    client = _client(args.address)  # until the service is reached, an error is one object
    names = _node_names(out)
    stream = client.watch(None if args.new else args.after, timeout_s=args.timeout)
    out.stream = True  # from here on, standard output holds the stream only
    seen = 0
    try:
        for item in stream:
            if isinstance(item.event, NodeJoined):  # a name for when it is lost, too
                label = item.event.node.labels.get(on_ray.NAME_LABEL)
                if label is not None:
                    names[item.event.node.node_id] = str(label)
            data = render.event_data(item, names)
            out.line(data, render.event_line(data))
            seen += 1
            if args.count is not None and seen >= args.count:
                return EXIT_OK
    except (BackendError, pykka.Timeout) as exc:  # the service stopped, or no longer answers
        cause = (str(exc).splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, pykka.Timeout):
            cause = f"no reply within {cause}"
        msg = f"the service stopped answering after {seen} event(s) ({cause})"
        raise BackendError(msg, operation="watch") from exc
    finally:
        stream.close()
    out.note(f"watched for {args.timeout:g}s: {seen} event(s)")
    return EXIT_OK


def _client(address: str) -> Any:  # noqa: ANN401 - a PlacementClient
    from placement_actors.service import PlacementClient  # noqa: PLC0415

    return PlacementClient.connect(address)


def _service_runs(name: str) -> bool:
    from placement_actors.backends import ray as on_ray  # noqa: PLC0415
    from placement_actors.domain.errors import BackendError  # noqa: PLC0415

    try:
        on_ray.find_host(name)
    except BackendError:
        return False
    return True


def _ray_address_from_env() -> str | None:
    return os.environ.get("RAY_ADDRESS") or None
