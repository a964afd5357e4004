"""The ``placement-actors`` command: the composition root (parse, load files, start actors, print).

Every input ends in a result or in one typed error, never in a traceback (that takes ``-v``):

- Exit codes: 0 success, 1 unexpected failure, 2 usage error, 3 invalid spec or file,
  4 a deployment did not fit, 5 the cluster backend failed, 130 interrupted. They are mapped from
  error types in one place, `_EXIT_CODES`.
- The global flags ``--json`` and ``-v`` may stand before or after the command.
- With ``--json``, standard output holds exactly one JSON object on every path: the command's
  document (with its ``exit_code``), or ``{"error": type, "message": text, "exit_code": code}``.
  Without it, an error is one readable line on standard error. A streaming command (``watch``,
  ``sandbox``) prints one JSON object per line instead, and nothing else, once it runs (the
  service reached, the sandbox's cluster and service up): from then on its end (an error, an
  interruption) is one readable line on standard error, and the exit code tells. An error
  before that is the one JSON object, as for every command.
- User text (names, node ids, reasons, addresses) is printed literally, never read as markup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from placement_actors.cli import commands, render
from placement_actors.domain.errors import BackendError, CapacityError, InvalidSpecError
from placement_actors.domain.limits import MAX_PLAN_MOVES, MAX_TIMEOUT_S

__all__ = [
    "EXIT_BACKEND",
    "EXIT_INTERRUPTED",
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
EXIT_INTERRUPTED = 130
"""128 + SIGINT, what a shell reports for a command stopped with Ctrl-C."""

_EXIT_CODES: tuple[tuple[type[Exception], int, str], ...] = (
    (commands.UsageError, EXIT_USAGE, "usage error"),
    (InvalidSpecError, EXIT_INVALID_SPEC, "invalid spec"),
    (CapacityError, EXIT_NO_CAPACITY, "does not fit"),
    (BackendError, EXIT_BACKEND, "cluster backend failed"),
)
"""Each expected error type, its exit code and how its one-line report starts; first match wins."""

_PROG = "placement-actors"
_JSON = "--json"
_VERBOSE = ("-v", "--verbose")
_LOUD_LOGGER = "placement_actors"
"""What ``-v`` turns to DEBUG: this package, not every library it uses."""

logger = logging.getLogger("placement_actors")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (``--help`` returns 0)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    json_mode, verbose = _global_flags(arguments)
    errors = Console(stderr=True)
    out = _output(errors, json_mode=json_mode)
    with _logging(errors, verbose=verbose):
        try:
            parser = _parser()
            try:
                args = parser.parse_args(arguments)
            except SystemExit as exc:  # --help: argparse printed it and asks to stop
                return exc.code if isinstance(exc.code, int) else EXIT_OK
            except commands.UsageError as exc:
                _point_at_the_command(exc, parser, arguments)
                raise
            _require_address(args)
            # Standard output is the command's alone (a JSON stream, say): whatever else prints
            # there while it runs (Ray's messages from the cluster) goes to standard error.
            with contextlib.redirect_stdout(sys.stderr):
                code = int(args.command(args, out))
        except KeyboardInterrupt:
            _report(out, errors, "interrupted", None, EXIT_INTERRUPTED)
            return EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - the top level: every error ends as a report
            return _fail(out, errors, exc, verbose=verbose)
        if out.json and not out.stream:
            _print_json({**(out.document or {}), "exit_code": code}, out.console.file)
        return code


def _point_at_the_command(
    error: commands.UsageError, parser: argparse.ArgumentParser, arguments: Sequence[str]
) -> None:
    """Point a usage error the top level raised (an unknown flag) at the command's own help."""
    if error.prog not in {None, _PROG}:
        return
    names = next(
        (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)),  # noqa: SLF001 - argparse's own
        {},
    )
    given = arguments[: arguments.index("--")] if "--" in arguments else arguments
    command = next((a for a in given if a in names), None)
    if command is not None:
        error.prog = f"{_PROG} {command}"


def _global_flags(arguments: Sequence[str]) -> tuple[bool, bool]:
    """``(--json, -v)`` as given anywhere before ``--``: known even when parsing fails.

    Every parser refuses abbreviations, so a flag is given exactly when its token is.
    """
    given = arguments[: arguments.index("--")] if "--" in arguments else arguments
    return _JSON in given, any(flag in given for flag in _VERBOSE)


class _StdoutConsole(Console):
    """Standard output's console: closed early by its reader (``| head``), it stops printing.

    The command goes on and its exit code still tells, as with ``--json``. Rich's own reaction
    would point the process's current ``sys.stdout`` at /dev/null, which, while a command runs,
    is standard error (see `main`), and exit 1 without a word.
    """

    def on_broken_pipe(self) -> None:
        """Print nothing more: point this console's own stream at /dev/null."""
        self.quiet = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.file.fileno())


def _output(errors: Console, *, json_mode: bool) -> commands.Output:
    return commands.Output(
        console=_StdoutConsole(file=sys.stdout, width=None if sys.stdout.isatty() else 120),
        progress=errors,
        json=json_mode,
    )


class _OneLine(logging.Formatter):
    """A log record as one line: an attached exception by its type and message, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """The message, and ``(Type: message)`` of the record's exception if it has one."""
        message = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        return message if error is None else f"{message} ({type(error).__name__}: {error})"


@contextlib.contextmanager
def _logging(errors: Console, *, verbose: bool) -> Iterator[None]:
    """Log to standard error for one run: warnings, one line each; ``-v``: DEBUG, tracebacks.

    Everything is put back afterwards, so `main` can run many times in one process.
    """
    handler = RichHandler(  # markup off: messages are literal
        level=logging.DEBUG if verbose else logging.WARNING, console=errors, show_path=False
    )
    handler.setFormatter(logging.Formatter("%(message)s") if verbose else _OneLine())
    root = logging.getLogger()
    ours = logging.getLogger(_LOUD_LOGGER)
    saved = (root.level, ours.level)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    if verbose:
        ours.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])


def _require_address(args: argparse.Namespace) -> None:
    if getattr(args, "needs_address", False):
        args.address = args.address or os.environ.get("RAY_ADDRESS")
        if not args.address:
            msg = f"{args.command_name} needs --address ADDR (or RAY_ADDRESS)"
            raise commands.UsageError(msg, prog=f"{_PROG} {args.command_name}")


def _fail(out: commands.Output, errors: Console, exc: Exception, *, verbose: bool) -> int:
    for kind, code, what in _EXIT_CODES:
        if isinstance(exc, kind):
            _report(out, errors, what, exc, code)
            return code
    # Not an error of ours: its traceback helps only whoever debugs, so it takes -v.
    if verbose:
        logger.debug("the traceback of the unexpected failure", exc_info=exc)
    _report(out, errors, "unexpected failure", exc, EXIT_UNEXPECTED)
    return EXIT_UNEXPECTED


def _report(
    out: commands.Output, errors: Console, what: str, exc: Exception | None, code: int
) -> None:
    """One JSON object on standard output (``--json``), else one line on standard error.

    A streaming command's standard output holds its stream only: its errors go to standard error.
    """
    if out.json and not out.stream:
        data = (
            {"error": "KeyboardInterrupt", "message": what, "exit_code": code}
            if exc is None
            else render.error_data(exc, code, out.node_names)
        )
        _print_json(data, out.console.file)
        return
    line = Text(what, style="bold red")
    if exc is not None:
        detail = str(exc) if what != "unexpected failure" else f"{type(exc).__name__}: {exc}"
        detail = render.named(detail, out.node_names)
        line.append(f": {detail}", style="default")
        if isinstance(exc, commands.UsageError):
            line.append(f" (see `{exc.prog or _PROG} --help`)", style="default")
    reasons = exc.rejections if isinstance(exc, CapacityError) else ()
    omitted = exc.rejections_omitted if isinstance(exc, CapacityError) else 0
    with contextlib.suppress(OSError):  # standard error is gone: the exit code still tells
        errors.print(line, soft_wrap=True)
        for rejection in reasons:  # each node's reason, as `place` and `why` print them
            name = out.node_names.get(rejection.node_id, rejection.node_id)
            errors.print(Text(f"  {name}: {rejection.reason}"), soft_wrap=True)
        if reasons and omitted:
            errors.print(Text(f"  ... and {omitted} more nodes"), soft_wrap=True)


def _print_json(data: object, file: IO[str] | None = None) -> None:
    with contextlib.suppress(OSError):  # standard output is gone: the exit code still tells
        print(json.dumps(data, indent=2), file=file or sys.stdout)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are `commands.UsageError`, reported like every error.

    argparse would print its usage and exit; raising instead lets ``--json`` print the error
    object. ``--help`` still prints the help and exits 0.
    """

    def error(self, message: str) -> NoReturn:
        """Raise a `commands.UsageError` for ``message``."""
        raise commands.UsageError(message, prog=self.prog)


def _global_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        *_VERBOSE, action="store_true", default=default, help="log what the actors do"
    )
    parser.add_argument(
        _JSON, action="store_true", default=default, help="print JSON instead of tables"
    )


def _serving_options(cmd: argparse.ArgumentParser) -> None:
    """Add what a command that starts the service takes: a ready timeout, GPU-id probes."""
    _ready_timeout(cmd)
    cmd.add_argument(
        "--learn-gpu-ids",
        action="store_true",
        help="probe each bundle with a task that holds its GPUs, so that each replica's GPU ids "
        "are the ones Ray gave it (slower: a task per bundle instead of each node's port agent)",
    )


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - a statement per command and flag
    # The sub-commands repeat the global flags so that they may also follow the command. Their
    # copies default to SUPPRESS: a flag not given after the command leaves the value parsed
    # before it alone (a default of False would overwrite it).
    common = _Parser(add_help=False, allow_abbrev=False)
    _global_options(common, default=argparse.SUPPRESS)
    parser = _Parser(
        prog=_PROG,
        description="Decide where model-serving replicas run, and reserve them with Ray.",
        allow_abbrev=False,
    )
    _global_options(parser, default=False)
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(
        name: str,
        help_text: str,
        function: Any,  # noqa: ANN401 - a command function
        *,
        address: str,
        named: bool = False,
    ) -> Any:  # noqa: ANN401
        """Add a sub-command, with ``--address`` unless ``address`` is "none".

        ``address``: "optional" (without it, a local cluster is started), "or-cluster" (without
        it, ``--cluster FILE``) or "required" (a running service).

        ``named``: its first argument is a deployment's name.
        """
        cmd = sub.add_parser(
            name, help=help_text, description=help_text, parents=[common], allow_abbrev=False
        )
        cmd.set_defaults(command=function, command_name=name, needs_address=address == "required")
        if address != "none":
            # "--address" or "--cluster", never both (which would be used is not obvious).
            where = cmd.add_mutually_exclusive_group() if address == "or-cluster" else cmd
            where.add_argument(
                "--address",
                help={
                    # RAY_ADDRESS is not read: `make run` keeps to a cluster of its own.
                    "optional": "the Ray cluster's address; without it, a local cluster is "
                    "started (RAY_ADDRESS is not read)",
                    "or-cluster": "the Ray cluster's address (default: RAY_ADDRESS); needed "
                    "unless --cluster is given",
                }.get(address, "the Ray cluster's address (default: RAY_ADDRESS)"),
            )
        if address == "or-cluster":
            where.add_argument(
                "--cluster",
                type=Path,
                help="a cluster YAML file to decide on instead of a Ray cluster (no Ray)",
            )
        if named:
            cmd.add_argument("name", help="the deployment's name")
        return cmd

    demo = command(
        "demo",
        "start a local Ray cluster with logical GPUs (or use --address), place the deployments "
        "through both actors, print each replica's nodes, GPUs, master address and port; on the "
        "local cluster a node then joins, another leaves and its replicas move; then remove "
        "every placement group it made (what `make run` does)",
        commands.demo,
        address="optional",
    )
    demo.add_argument(
        "--deployments",
        type=Path,
        default=Path("examples/deployments.yaml"),
        metavar="FILE",
        help="the deployments YAML file to place (default: %(default)s, from the current "
        "folder: the project's, as `make run` runs it)",
    )
    _ready_timeout(demo)

    _serving_options(
        command(
            "sandbox",
            "start a local Ray cluster with logical GPUs (gpu-a 4, gpu-b 4, gpu-c 8; the head and "
            "edge-1 are egress nodes) and the placement service on it, print its address for the "
            "other commands, and keep both until Ctrl-C (or a kill, or the terminal closing), "
            "which stops both",
            commands.sandbox,
            address="none",
        )
    )

    serve = command(
        "serve",
        "start the placement service on a Ray cluster: both actors in a named, detached Ray "
        "actor that outlives this command; other drivers reach it with PlacementClient.connect",
        commands.serve,
        address="required",
    )
    _serving_options(serve)
    serve.add_argument(
        "--ignore-head-node", action="store_true", help="keep local replicas off head nodes"
    )
    serve.add_argument("--stop", action="store_true", help="stop the running service instead")

    place = command(
        "place",
        "place the deployments of FILE: through the running service (--address), or, with "
        "--cluster, decide on a cluster file without reserving anything",
        commands.place,
        address="or-cluster",
    )
    place.add_argument("file", type=Path, help="a deployments YAML file")
    _ready_timeout(place)

    plan = command(
        "plan",
        "plan the placement-group shape of one replica of TP size N",
        commands.plan,
        address="or-cluster",
    )
    plan.add_argument(
        "--tp", type=_count(minimum=1), required=True, metavar="N", help="GPUs per replica"
    )
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

    command(
        "release",
        "release a deployment (frees its GPUs, removes its groups)",
        commands.release,
        address="required",
        named=True,
    )

    reap = command(
        "reap",
        "release every deployment whose name starts with PREFIX and remove any placement group "
        "left with that prefix (for example by an earlier run)",
        commands.reap,
        address="required",
    )
    reap.add_argument("prefix", help="a deployment-name prefix (not empty)")

    command(
        "why",
        "show each node's reason for rejecting a deployment that did not fit",
        commands.why,
        address="required",
        named=True,
    )

    show = command(
        "show",
        "show where a deployment's replicas run now: each replica's nodes (its master's node "
        "first), GPUs and master address, and the replicas not placed now",
        commands.show,
        address="required",
        named=True,
    )
    _ready_timeout(show)

    defrag = command(
        "defrag",
        "list moves of running replicas that would free whole nodes for large replicas; with "
        "--apply, make them",
        commands.defrag,
        address="required",
    )
    defrag.add_argument(
        "--gpus",
        type=_count(minimum=1),
        metavar="N",
        help="free GPUs a freed node must have (default: the largest node's GPU count)",
    )
    defrag.add_argument(
        "--max-moves",
        type=_count(minimum=1, maximum=MAX_PLAN_MOVES),
        default=16,
        metavar="N",
        help=f"the most moves to list (default 16, at most {MAX_PLAN_MOVES})",
    )
    defrag.add_argument(
        "--apply",
        action="store_true",
        help="make the moves, in order (each replica gets a new placement group on its new "
        "node; what ran in the old one stops)",
    )

    move = command(
        "move",
        "move one running replica to another node (a new placement group there; what ran in "
        "the old one stops, and its controller starts it again)",
        commands.move,
        address="required",
        named=True,
    )
    move.add_argument("replica", type=_count(minimum=0), help="the replica's index")
    move.add_argument("to", metavar="NODE", help="the node to move it to: its id, or its name")

    watch = command(
        "watch",
        "stream the service's events (nodes that join or are lost, replicas lost, placed "
        "again or moved): one line each, or with --json one JSON object per line; Ctrl-C stops",
        commands.watch,
        address="required",
    )
    start = watch.add_mutually_exclusive_group()
    start.add_argument(
        "--after",
        type=_count(minimum=0),
        default=0,
        metavar="SEQ",
        help="start after the event numbered SEQ (default 0: every event the service still keeps)",
    )
    start.add_argument("--new", action="store_true", help="only the events from now on")
    watch.add_argument(
        "--count", type=_count(minimum=1), metavar="N", help="stop after N events (markers count)"
    )
    watch.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="stop after this many seconds in all, events or not (exit 0)",
    )
    return parser


def _count(*, minimum: int, maximum: int | None = None) -> Any:  # noqa: ANN401 - an argparse type
    """An argparse type: a whole number, at least ``minimum`` (and at most ``maximum``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            msg = f"not a whole number: {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if value < minimum:
            msg = f"must be at least {minimum}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        if maximum is not None and value > maximum:
            msg = f"must be at most {maximum}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def _seconds(text: str) -> float:
    """A ``--ready-timeout`` or ``--timeout``: a number of seconds, more than 0, at most a day."""
    try:
        value = float(text)
    except ValueError:
        msg = f"not a number of seconds: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        msg = f"must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _ready_timeout(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--ready-timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long Ray may take to make each placement group ready (default 60)",
    )
