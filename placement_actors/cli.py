"""The ``placement-actors`` command: the composition root (parse, load files, start actors, print).

Exit codes: 0 success, 1 unexpected failure, 2 usage error, 3 invalid spec or file,
4 a deployment did not fit (``place`` only), 5 the cluster backend failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from placement_actors.actors.deployment_placement import (
    DeploymentPlacementActor,
    deployment_placement_proxy,
)
from placement_actors.actors.messages import ClusterView, GetClusterView, Place, Release
from placement_actors.actors.planning import PlanningActor
from placement_actors.config_files import DeploymentSpec, load_cluster, load_deployments
from placement_actors.domain.deployments import GROUP_NAME_ROOT, CustomRuntime, group_prefix
from placement_actors.domain.errors import (
    BackendError,
    CapacityError,
    InvalidSpecError,
    PlacementError,
)
from placement_actors.domain.results import PlacementResult, ReplicaPlacement

__all__ = [
    "DEMO_WORKERS",
    "EXIT_BACKEND",
    "EXIT_INVALID_SPEC",
    "EXIT_NO_CAPACITY",
    "EXIT_OK",
    "EXIT_UNEXPECTED",
    "main",
]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INVALID_SPEC = 3
EXIT_NO_CAPACITY = 4
EXIT_BACKEND = 5

DEMO_WORKERS: Mapping[str, int] = {"gpu-a": 4, "gpu-b": 4, "gpu-c": 8, "edge-1": 0}
"""The embedded demo cluster: a CPU-only head (with egress) and these raylets (name: GPUs)."""
DEMO_EGRESS = ("edge-1",)

_REPLY_TIMEOUT_S = 30.0
_EXAMPLES = Path("examples")

logger = logging.getLogger("placement_actors")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outcome:
    spec: DeploymentSpec
    result: PlacementResult | None = None
    error: CapacityError | None = None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    errors = Console(stderr=True)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False)],
    )
    try:
        return int(args.command(args, console))
    except InvalidSpecError as exc:
        errors.print(f"[bold red]invalid spec:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_INVALID_SPEC
    except BackendError as exc:
        errors.print(f"[bold red]cluster backend failed:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BACKEND
    except Exception:  # the top level: report anything else as a failure, with its traceback
        logger.exception("placement-actors failed")
        return EXIT_UNEXPECTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="placement-actors",
        description="Decide where model-serving replicas run, and reserve them with Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the actors do")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="place deployments end to end on Ray (what `make run` does)",
        description=(
            "Start a local Ray cluster with logical GPUs (or use --address), place the "
            "deployments through both actors, print each replica's nodes, GPUs, master address "
            "and port, then remove every placement group it made."
        ),
    )
    demo.add_argument("--deployments", type=Path, default=_EXAMPLES / "deployments.yaml")
    demo.add_argument(
        "--address", help="an existing Ray cluster (GCS address) instead of a local one"
    )
    demo.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long Ray may take to make each placement group ready (default 60)",
    )
    demo.set_defaults(command=_demo)

    place = commands.add_parser(
        "place",
        help="decide placements for FILE on a cluster file, without reserving anything",
    )
    place.add_argument("file", type=Path, help="a deployments YAML file")
    place.add_argument("--cluster", type=Path, required=True, help="a cluster YAML file")
    place.set_defaults(command=_place)
    return parser


# -- demo: end to end on Ray ------------------------------------------------------------------


@contextlib.contextmanager
def _ray_cluster(address: str | None, console: Console) -> Iterator[None]:
    from placement_actors.backends import ray_backend  # noqa: PLC0415 - Ray loads only when used

    if address is not None:
        with console.status(f"Connecting to Ray at {address}"), ray_backend.connected(address):
            yield
        return
    cluster = ray_backend.LocalCluster(
        head_gpus=0,
        worker_gpus=tuple(DEMO_WORKERS.values()),
        worker_names=tuple(DEMO_WORKERS),
        egress_workers=tuple(i for i, n in enumerate(DEMO_WORKERS) if n in DEMO_EGRESS),
    )
    layout = ", ".join(f"{name} ({gpus} GPUs)" for name, gpus in DEMO_WORKERS.items())
    with console.status(f"Starting a local Ray cluster: head + {layout}"):
        cluster.__enter__()
    console.print(f"Local Ray cluster at {cluster.address}: head + {layout}", highlight=False)
    try:
        yield
    finally:
        with console.status("Stopping the local Ray cluster"):
            cluster.__exit__(None, None, None)
        console.print("Local Ray cluster stopped.")


def _demo(args: argparse.Namespace, console: Console) -> int:
    specs = load_deployments(args.deployments)  # a bad file stops us before Ray starts
    with _ray_cluster(args.address, console):
        from placement_actors.backends import ray_backend  # noqa: PLC0415

        names = ray_backend.node_names()
        planner = PlanningActor.start(
            backend=ray_backend.RayBackend(), ready_timeout_s=args.ready_timeout
        )
        ref = DeploymentPlacementActor.start(
            topology=ray_backend.get_cluster_topology(),
            egress_nodes=ray_backend.get_egress_nodes(),
            planner=planner,
        )
        outcomes: list[_Outcome] = []
        try:
            _place_specs(ref, specs, outcomes)
            replicas = [r for o in outcomes if o.result for r in o.result.replicas]
            with console.status(f"Waiting for {len(replicas)} placement groups"):
                endpoints = _endpoints(replicas, args.ready_timeout + _REPLY_TIMEOUT_S)
            _print_replicas(console, outcomes, endpoints, names)
            _print_failures(console, outcomes, names)
        finally:
            # Release every name of the file, placed or not: a release also reaps groups that a
            # failed or earlier placement of that name left behind.
            for spec in specs:
                ref.ask(Release(spec.deployment.name), timeout=_REPLY_TIMEOUT_S)
            ref.stop(timeout=_REPLY_TIMEOUT_S)
            planner.stop(timeout=_REPLY_TIMEOUT_S)
            ours = {group_prefix(s.deployment.name) for s in specs}
            alive = [
                name
                for name, state in ray_backend.group_states(GROUP_NAME_ROOT).items()
                if state != "REMOVED" and any(name.startswith(p) for p in ours)
            ]
            console.print(
                f"Released every deployment; placement groups left alive: {len(alive)}.",
                highlight=False,
            )
    return EXIT_OK


def _place_specs(
    ref: pykka.ActorRef[DeploymentPlacementActor],
    specs: Sequence[DeploymentSpec],
    outcomes: list[_Outcome],
) -> list[_Outcome]:
    """Place each spec in turn, adding to ``outcomes`` as it goes.

    A caller's clean-up therefore sees every placement made before an error.
    """
    proxy = deployment_placement_proxy(ref)
    for spec in specs:
        future = proxy.place(Place(spec.deployment, spec.constraints))
        try:
            outcomes.append(_Outcome(spec=spec, result=future.get(timeout=_REPLY_TIMEOUT_S)))
        except CapacityError as exc:
            outcomes.append(_Outcome(spec=spec, error=exc))
    return outcomes


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
    return found


def _node(names: Mapping[str, str], node_id: str) -> str:
    return names.get(node_id, node_id[:12])


def _runtime(result: PlacementResult) -> str:
    runtime = result.deployment.effective_runtime()
    return runtime.name if isinstance(runtime, CustomRuntime) else runtime.value


def _ordinals(gpus: Sequence[int]) -> str:
    """``(0, 1, 2, 3)`` -> ``0-3``; ``(0, 2)`` -> ``0,2``."""
    if len(gpus) > 2 and list(gpus) == list(range(gpus[0], gpus[-1] + 1)):  # noqa: PLR2004
        return f"{gpus[0]}-{gpus[-1]}"
    return ",".join(map(str, gpus))


def _print_replicas(
    console: Console,
    outcomes: Sequence[_Outcome],
    endpoints: Mapping[str, str] | None,
    names: Mapping[str, str],
) -> None:
    """One row per replica; with ``endpoints``, its master address (bundle 0's ip:port)."""
    table = Table(title="Replicas", title_justify="left")
    columns = ["deployment", "replica", "runtime", "node(s)", "GPUs"]
    if endpoints is not None:
        columns.append("master address")
    for column in columns:
        table.add_column(column)
    for outcome in outcomes:
        result = outcome.result
        if result is None:
            continue
        groups = {r.replica_index: r.group_name for r in result.replicas}
        for index in range(result.deployment.replicas):
            parts = [a for a in result.assignments if a.replica_index == index]
            gpus = " + ".join(_ordinals(a.gpus) for a in parts if a.gpus)
            row = [
                result.deployment.name,
                str(index),
                _runtime(result),
                " + ".join(_node(names, a.node) for a in parts),
                gpus or "-",
            ]
            if endpoints is not None:
                group = groups.get(index)
                row.append(endpoints.get(group, "?") if group else "- (remote API)")
            table.add_row(*row)
    console.print(table)


def _print_failures(
    console: Console, outcomes: Sequence[_Outcome], names: Mapping[str, str]
) -> None:
    for outcome in outcomes:
        error = outcome.error
        if error is None:
            continue
        hint = "retry after a release" if error.retryable else "never fits this cluster"
        console.print(
            f"[bold red]{outcome.spec.deployment.name} did not fit[/] "
            f"({type(error).__name__}, {hint}): {error}",
            highlight=False,
            soft_wrap=True,
        )
        for rejection in sorted(error.rejections, key=lambda r: _node(names, r.node_id)):
            console.print(
                f"  {_node(names, rejection.node_id)}: {rejection.reason}",
                highlight=False,
                soft_wrap=True,
            )


# -- place: decisions only, on a cluster file -------------------------------------------------


def _place(args: argparse.Namespace, console: Console) -> int:
    cluster = load_cluster(args.cluster)
    specs = load_deployments(args.file)
    ref = DeploymentPlacementActor.start(
        topology=cluster.topology, egress_nodes=cluster.egress_nodes
    )
    try:
        outcomes = _place_specs(ref, specs, [])
        view = ref.ask(GetClusterView(), timeout=_REPLY_TIMEOUT_S)
    finally:
        ref.stop(timeout=_REPLY_TIMEOUT_S)
    _print_replicas(console, outcomes, None, {})
    _print_failures(console, outcomes, {})
    _print_cluster(console, view)
    return EXIT_NO_CAPACITY if any(o.error for o in outcomes) else EXIT_OK


def _print_cluster(console: Console, view: Any) -> None:  # noqa: ANN401 - a ClusterView
    assert isinstance(view, ClusterView)  # noqa: S101 - the actor's reply type
    table = Table(title="Cluster after placement", title_justify="left")
    for column in ("node", "GPUs free/total", "held by", "egress", "remote replicas"):
        table.add_column(column, no_wrap=column != "held by")
    for node in view.nodes:
        holders: dict[str, list[int]] = {}
        for holding in node.held:
            holders.setdefault(holding.deployment, []).append(holding.ordinal)
        table.add_row(
            node.node_id + (" (head)" if node.is_head else ""),
            f"{len(node.free_gpus)}/{node.capacity}",
            "; ".join(f"{d} [{','.join(map(str, o))}]" for d, o in holders.items()) or "-",
            "yes" if node.egress else "-",
            str(node.remote_replicas) if node.egress else "-",
        )
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
