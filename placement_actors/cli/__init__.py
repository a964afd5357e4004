"""The ``placement-actors`` command: the composition root (parse, load files, start actors, print).

Exit codes: 0 success, 1 unexpected failure, 2 usage error, 3 invalid spec or file,
4 a deployment did not fit, 5 the cluster backend failed. ``--json`` prints the same facts as the
tables, as one JSON document on standard output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from placement_actors.cli import commands
from placement_actors.domain.errors import BackendError, CapacityError, InvalidSpecError

__all__ = [
    "EXIT_BACKEND",
    "EXIT_INVALID_SPEC",
    "EXIT_NO_CAPACITY",
    "EXIT_OK",
    "EXIT_UNEXPECTED",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = commands.EXIT_OK
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_INVALID_SPEC = 3
EXIT_NO_CAPACITY = commands.EXIT_NO_CAPACITY
EXIT_BACKEND = 5

logger = logging.getLogger("placement_actors")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "needs_address", False):
        args.address = args.address or os.environ.get("RAY_ADDRESS")
        if not args.address:
            parser.error(f"{args.command_name} needs --address ADDR (or RAY_ADDRESS)")
    errors = Console(stderr=True)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False)],
    )
    out = commands.Output(
        console=Console(width=None if sys.stdout.isatty() else 120),
        progress=errors,
        json=args.json,
    )
    try:
        return int(args.command(args, out))
    except commands.UsageError as exc:
        parser.print_usage(sys.stderr)
        _report(out, errors, "usage", exc)
        return EXIT_USAGE
    except InvalidSpecError as exc:
        _report(out, errors, "invalid spec", exc)
        return EXIT_INVALID_SPEC
    except CapacityError as exc:
        _report(out, errors, "does not fit", exc)
        return EXIT_NO_CAPACITY
    except BackendError as exc:
        _report(out, errors, "cluster backend failed", exc)
        return EXIT_BACKEND
    except Exception:  # the top level: report anything else as a failure, with its traceback
        logger.exception("placement-actors failed")
        return EXIT_UNEXPECTED


def _report(out: commands.Output, errors: Console, what: str, exc: Exception) -> None:
    if out.json:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}, indent=2))  # noqa: T201
    errors.print(f"[bold red]{what}:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log what the actors do")
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser = argparse.ArgumentParser(
        prog="placement-actors",
        description="Decide where model-serving replicas run, and reserve them with Ray.",
        parents=[common],
    )
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, function: Any, *, address: str) -> Any:  # noqa: ANN401
        """Add a sub-command; ``address`` is "none", "optional" or "required" (a service)."""
        cmd = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        cmd.set_defaults(command=function, command_name=name, needs_address=address == "required")
        if address != "none":
            cmd.add_argument(
                "--address",
                help="the Ray cluster's address (default: RAY_ADDRESS)"
                + ("" if address == "required" else "; without it, a local cluster is started"),
            )
        return cmd

    demo = command(
        "demo",
        "start a local Ray cluster with logical GPUs (or use --address), place the deployments "
        "through both actors, print each replica's nodes, GPUs, master address and port, then "
        "remove every placement group it made (what `make run` does)",
        commands.demo,
        address="optional",
    )
    demo.add_argument("--deployments", type=Path, default=Path("examples/deployments.yaml"))
    _ready_timeout(demo)

    serve = command(
        "serve",
        "start the placement service on a Ray cluster: both actors in a named, detached Ray "
        "actor that outlives this command; other drivers reach it with PlacementClient.connect",
        commands.serve,
        address="required",
    )
    _ready_timeout(serve)
    serve.add_argument(
        "--ignore-head-node", action="store_true", help="keep local replicas off head nodes"
    )
    serve.add_argument("--stop", action="store_true", help="stop the running service instead")

    place = command(
        "place",
        "place the deployments of FILE: through the running service (--address), or, with "
        "--cluster, decide on a cluster file without reserving anything",
        commands.place,
        address="optional",
    )
    place.add_argument("file", type=Path, help="a deployments YAML file")
    place.add_argument("--cluster", type=Path, help="a cluster YAML file (decide only, no Ray)")
    _ready_timeout(place)

    plan = command(
        "plan",
        "plan the placement-group shape of one replica of TP size N",
        commands.plan,
        address="optional",
    )
    plan.add_argument("--tp", type=int, required=True, metavar="N", help="GPUs per replica")
    plan.add_argument("--cluster", type=Path, help="a cluster YAML file instead of a Ray cluster")
    plan.add_argument(
        "--ignore-head-node", action="store_true", help="keep the replica off head nodes"
    )

    status = command(
        "status",
        "show every node of the running service: a table and a picture of its GPUs",
        commands.status,
        address="required",
    )
    status.add_argument("--svg", type=Path, metavar="FILE", help="also save the picture as SVG")

    release = command(
        "release",
        "release a deployment (frees its GPUs, removes its groups)",
        commands.release,
        address="required",
    )
    release.add_argument("name", help="the deployment's name")

    reap = command(
        "reap",
        "release every deployment whose name starts with PREFIX and remove any placement group "
        "left with that prefix (for example by an earlier run)",
        commands.reap,
        address="required",
    )
    reap.add_argument("prefix", help="a deployment-name prefix (not empty)")

    why = command(
        "why",
        "show each node's reason for rejecting a deployment that did not fit",
        commands.why,
        address="required",
    )
    why.add_argument("name", help="the deployment's name")
    return parser


def _ready_timeout(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long Ray may take to make each placement group ready (default 60)",
    )
