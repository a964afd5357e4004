"""The ``placement-actors`` command: the composition root (parse, load files, start actors, print).

Exit codes: 0 success, 1 unexpected failure, 2 usage error, 3 invalid spec or file,
4 a deployment did not fit (no capacity).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pykka
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from placement_actors.actors.deployment_placement import (
    DeploymentPlacementActor,
    deployment_placement_proxy,
)
from placement_actors.actors.messages import ClusterView, GetClusterView, Place
from placement_actors.config_files import DeploymentSpec, load_cluster, load_deployments
from placement_actors.domain.errors import CapacityError, InvalidSpecError
from placement_actors.domain.results import PlacementResult

__all__ = ["EXIT_INVALID_SPEC", "EXIT_NO_CAPACITY", "EXIT_OK", "EXIT_UNEXPECTED", "main"]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INVALID_SPEC = 3
EXIT_NO_CAPACITY = 4

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
    console = Console()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    try:
        return int(args.command(args, console))
    except InvalidSpecError as exc:
        Console(stderr=True).print(
            f"[bold red]invalid spec:[/] {exc}", highlight=False, soft_wrap=True, markup=True
        )
        return EXIT_INVALID_SPEC
    except Exception:  # the top level: report anything else as a failure, with its traceback
        logger.exception("placement-actors failed")
        return EXIT_UNEXPECTED
    finally:
        pykka.ActorRegistry.stop_all(timeout=_REPLY_TIMEOUT_S)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="placement-actors",
        description="Decide where model-serving replicas run, and reserve their GPUs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the actors do")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="place the example deployments on the example cluster (what `make run` does)"
    )
    demo.add_argument("--cluster", type=Path, default=_EXAMPLES / "cluster.yaml")
    demo.add_argument("--deployments", type=Path, default=_EXAMPLES / "deployments.yaml")
    demo.set_defaults(command=_demo)

    place = commands.add_parser("place", help="place the deployments of FILE on a cluster file")
    place.add_argument("file", type=Path, help="a deployments YAML file")
    place.add_argument("--cluster", type=Path, required=True, help="a cluster YAML file")
    place.set_defaults(command=_place)
    return parser


def _demo(args: argparse.Namespace, console: Console) -> int:
    _place_all(args.deployments, args.cluster, console)
    return EXIT_OK


def _place(args: argparse.Namespace, console: Console) -> int:
    outcomes = _place_all(args.file, args.cluster, console)
    return EXIT_NO_CAPACITY if any(o.error for o in outcomes) else EXIT_OK


def _place_all(deployments: Path, cluster: Path, console: Console) -> list[_Outcome]:
    nodes = load_cluster(cluster)
    specs = load_deployments(deployments)
    ref = DeploymentPlacementActor.start(topology=nodes.topology, egress_nodes=nodes.egress_nodes)
    proxy = deployment_placement_proxy(ref)
    outcomes = []
    for spec in specs:
        future = proxy.place(Place(spec.deployment, spec.constraints))
        try:
            outcomes.append(_Outcome(spec=spec, result=future.get(timeout=_REPLY_TIMEOUT_S)))
        except CapacityError as exc:
            outcomes.append(_Outcome(spec=spec, error=exc))
    view = proxy.get_cluster_view(GetClusterView()).get(timeout=_REPLY_TIMEOUT_S)
    ref.stop(timeout=_REPLY_TIMEOUT_S)
    _print_outcomes(console, outcomes, deployments, cluster)
    _print_cluster(console, view)
    return outcomes


def _print_outcomes(
    console: Console, outcomes: list[_Outcome], deployments: Path, cluster: Path
) -> None:
    table = Table(title=f"Placements: {deployments} on {cluster}", title_justify="left")
    for column in ("deployment", "runtime", "replica", "node", "GPUs", "API key"):
        table.add_column(column)
    for outcome in outcomes:
        if outcome.result is None:
            continue
        deployment = outcome.result.deployment
        runtime = deployment.effective_runtime()
        runtime_name = runtime.value if hasattr(runtime, "value") else runtime.name
        for assignment in outcome.result.assignments:
            table.add_row(
                deployment.name,
                runtime_name,
                str(assignment.replica_index),
                assignment.node,
                ",".join(map(str, assignment.gpus)) or "-",
                str(deployment.api_key) if deployment.api_key else "-",
            )
    console.print(table)
    for outcome in outcomes:
        if outcome.error is None:
            continue
        error = outcome.error
        hint = "retry after a release" if error.retryable else "never fits this cluster"
        console.print(
            f"[bold red]{outcome.spec.deployment.name} did not fit[/] "
            f"({type(error).__name__}, {hint}): {error}",
            highlight=False,
            soft_wrap=True,
        )
        for rejection in error.rejections:
            console.print(
                f"  {rejection.node_id}: {rejection.reason}", highlight=False, soft_wrap=True
            )


def _print_cluster(console: Console, view: ClusterView) -> None:
    table = Table(title="Cluster after placement", title_justify="left")
    for column in ("node", "GPUs free / total", "held by", "egress", "remote replicas"):
        table.add_column(column)
    for node in view.nodes:
        holders: dict[str, list[int]] = {}
        for holding in node.held:
            holders.setdefault(holding.deployment, []).append(holding.ordinal)
        table.add_row(
            node.node_id + (" (head)" if node.is_head else ""),
            f"{len(node.free_gpus)} / {node.capacity}",
            "; ".join(f"{d} [{','.join(map(str, o))}]" for d, o in holders.items()) or "-",
            "yes" if node.egress else "-",
            str(node.remote_replicas) if node.egress else "-",
        )
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
