"""What the command line prints: JSON-ready dictionaries, and rich tables and pictures of them.

Every command builds plain data first (so ``--json`` prints exactly what the tables show), then
renders it for people. Everything in that data may be user text (deployment names, node ids and
names from files and Ray labels, reasons, messages, model ids), so it reaches rich only as `Text`,
never as markup; and it is shown whole: node ids are never shortened, and table cells that do not
fit wrap (``overflow="fold"``) instead of being cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from placement_actors.actors.messages import (
    ClusterView,
    NodeJoined,
    NodeLost,
    NodeState,
    ReplicaLost,
    ReplicaMoved,
    ReplicaReplaced,
)
from placement_actors.domain.deployments import CustomRuntime
from placement_actors.domain.errors import CapacityError, ConfigFileError
from placement_actors.domain.results import PlacementResult, ReplicaBundleSpec, ReplicaMove
from placement_actors.service import EventsMissed, ServiceEvent

__all__ = [
    "error_data",
    "event_data",
    "event_line",
    "failure_data",
    "moves_data",
    "named",
    "print_advice",
    "print_cluster",
    "print_failure",
    "print_moves",
    "print_occupancy",
    "print_replicas",
    "print_spec",
    "result_data",
    "spec_data",
    "view_data",
]

_PALETTE = (
    "green",
    "blue",
    "magenta",
    "cyan",
    "yellow",
    "bright_red",
    "bright_green",
    "bright_blue",
    "bright_magenta",
    "bright_cyan",
    "orange3",
    "purple",
)


def _name(names: Mapping[str, str], node_id: str) -> str:
    """A node's friendly name (a Ray label), else its whole id: two nodes never look the same."""
    return names.get(node_id, node_id)


def _table(title: str, columns: Sequence[str], *, show_header: bool = True) -> Table:
    """A table whose cells wrap when they do not fit: never cut, never an ellipsis."""
    table = Table(title=title, title_justify="left", show_header=show_header)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _ordinals(gpus: Sequence[int]) -> str:
    """``(0, 1, 2, 3)`` -> ``0-3``; ``(0, 2)`` -> ``0,2``."""
    if len(gpus) > 2 and list(gpus) == list(range(gpus[0], gpus[-1] + 1)):  # noqa: PLR2004
        return f"{gpus[0]}-{gpus[-1]}"
    return ",".join(map(str, gpus))


# -- data ---------------------------------------------------------------------------------------


def result_data(
    result: PlacementResult, names: Mapping[str, str], endpoints: Mapping[str, str] | None
) -> dict[str, Any]:
    """A placed deployment: per replica its nodes, GPUs, group and master address."""
    runtime = result.deployment.effective_runtime()
    groups = {r.replica_index: r.group_name for r in result.replicas}
    replicas = []
    for index in range(result.deployment.replicas):
        parts = [a for a in result.assignments if a.replica_index == index]
        group = groups.get(index)
        replicas.append(
            {
                "replica": index,
                "nodes": [
                    {"node": a.node, "name": _name(names, a.node), "gpus": list(a.gpus)}
                    for a in parts
                ],
                "group": group,
                "master": None if endpoints is None or group is None else endpoints.get(group),
            }
        )
    return {
        "deployment": result.deployment.name,
        "model": result.deployment.model,
        "runtime": runtime.name if isinstance(runtime, CustomRuntime) else runtime.value,
        "remote": not result.deployment.gpus_per_replica,
        "replicas": replicas,
    }


def error_data(
    error: BaseException, exit_code: int, names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The one JSON object of a command that failed: its type, message and exit code.

    A file's problems and a capacity failure's node-by-node reasons come along as fields. With
    ``names`` (node id -> name), the message names nodes as `status` does, and each rejection
    has its node's name (its ``node`` stays the id).
    """
    data: dict[str, Any] = {
        "error": type(error).__name__,
        "message": named(str(error), names or {}),
        "exit_code": exit_code,
    }
    if isinstance(error, ConfigFileError):
        data["problems"] = [
            {"file": error.path, "line": p.line, "field": p.field, "problem": p.problem}
            for p in error.problems
        ]
    elif isinstance(error, CapacityError):
        failure = failure_data(error, names or {})
        if failure["deployment"]:  # a bundle shape (`plan`) is no deployment's
            data["deployment"] = failure["deployment"]
        data.update(
            retryable=failure["retryable"],
            rejections=failure["rejections"],
            rejections_omitted=error.rejections_omitted,
        )
    return data


def failure_data(error: CapacityError, names: Mapping[str, str]) -> dict[str, Any]:
    """A deployment that did not fit, with each node's reason."""
    return {
        "deployment": error.deployment,
        "error": type(error).__name__,
        "message": str(error),
        "retryable": error.retryable,
        "rejections": [
            {
                "node": r.node_id,
                "name": _name(names, r.node_id),
                "reason": r.reason,
                "requested": r.requested,
                "available": r.available,
            }
            for r in sorted(error.rejections, key=lambda r: _name(names, r.node_id))
        ],
        "rejections_omitted": error.rejections_omitted,
        "refusing_by_free": [
            {"free_gpus": free, "nodes": nodes}
            for free, nodes in getattr(error, "refusing_by_free", ())
        ],
        "moves": moves_data(getattr(error, "moves", ()), names),
    }


def moves_data(moves: Iterable[ReplicaMove], names: Mapping[str, str]) -> list[dict[str, Any]]:
    """Moves of running replicas, with node names."""
    return [
        {
            "deployment": m.deployment,
            "replica": m.replica_index,
            "gpus": m.gpus,
            "from": m.from_node,
            "from_name": _name(names, m.from_node),
            "to": m.to_node,
            "to_name": _name(names, m.to_node),
        }
        for m in moves
    ]


def print_advice(console: Console, moves: Sequence[dict[str, Any]], *, indent: str = "  ") -> None:
    """One line per suggested move: which replica, from which node, to which."""
    for move in moves:
        console.print(
            Text(
                f"{indent}move {move['deployment']}/r{move['replica']} "
                f"({move['gpus']} GPU{'' if move['gpus'] == 1 else 's'}): "
                f"{move['from_name']} -> {move['to_name']}"
            ),
            soft_wrap=True,
        )


def view_data(view: ClusterView, names: Mapping[str, str]) -> dict[str, Any]:
    """Every node's capacity, free GPUs and holders."""
    nodes = []
    for node in sorted(view.nodes, key=lambda n: (_name(names, n.node_id), n.node_id)):
        held: dict[str, list[int]] = {}
        for holding in node.held:
            held.setdefault(holding.deployment, []).append(holding.ordinal)
        nodes.append(
            {
                "node": node.node_id,
                "name": _name(names, node.node_id),
                "state": getattr(node, "state", NodeState.ALIVE).value,
                "head": node.is_head,
                "capacity": node.capacity,
                "free": list(node.free_gpus),
                "held": held,
                "outside": int(getattr(node, "outside", 0)),
                "outside_waiting": int(getattr(node, "outside_waiting", 0)),
                "egress": node.egress,
                "remote_replicas": node.remote_replicas,
                "labels": dict(getattr(node, "labels", {})),
            }
        )
    return {
        "nodes": nodes,
        "deployments": list(view.deployments),
        "degraded": list(getattr(view, "degraded", ())),
    }


def event_data(item: ServiceEvent, names: Mapping[str, str]) -> dict[str, Any]:
    """One event of the service: its number, time (UTC, ISO 8601), kind and what it is about.

    Kinds: ``node_joined``, ``node_lost``, ``replica_lost``, ``replica_replaced``,
    ``events_missed`` (a marker: the watcher fell behind, or the service started again).
    """
    event = item.event
    data: dict[str, Any] = {
        "sequence": item.sequence,
        "time": datetime.fromtimestamp(item.at, tz=UTC).isoformat(timespec="milliseconds"),
    }
    if isinstance(event, NodeJoined):
        node = event.node
        data.update(
            kind="node_joined",
            node=node.node_id,
            name=_name(names, node.node_id),
            gpus=node.num_gpus,
            head=node.is_head,
            egress=event.egress,
        )
    elif isinstance(event, NodeLost):
        data.update(kind="node_lost", node=event.node_id, name=_name(names, event.node_id))
    elif isinstance(event, ReplicaLost):
        data.update(
            kind="replica_lost",
            deployment=event.deployment,
            replica=event.replica_index,
            node=event.node_id,
            name=None if event.node_id is None else _name(names, event.node_id),
            will_replace=event.will_replace,
        )
    elif isinstance(event, ReplicaReplaced):
        data.update(
            kind="replica_replaced",
            deployment=event.deployment,
            replica=event.replica_index,
            nodes=[
                {"node": a.node, "name": _name(names, a.node), "gpus": list(a.gpus)}
                for a in event.assignments
            ],
            group=None if event.placement is None else event.placement.group_name,
        )
    elif isinstance(event, ReplicaMoved):
        data.update(
            kind="replica_moved",
            deployment=event.deployment,
            replica=event.replica_index,
            from_node=event.from_node,
            from_name=_name(names, event.from_node),
            node=event.to_node,
            name=_name(names, event.to_node),
            gpus=[o for a in event.assignments for o in a.gpus],
            group=None if event.placement is None else event.placement.group_name,
        )
    elif isinstance(event, EventsMissed):
        data.update(kind="events_missed", after=event.after, missed=event.missed)
    else:  # a kind this command line does not know yet: named, not dropped
        data.update(kind="other", type=type(event).__name__)
    return data


def event_line(data: Mapping[str, Any]) -> str:
    """`event_data` as one line for people: local time, number, what happened."""
    at = datetime.fromisoformat(data["time"]).astimezone()
    when = at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d}"
    return f"{when}  #{data['sequence']}  {_event_text(data)}"


def _event_text(data: Mapping[str, Any]) -> str:  # noqa: PLR0911 - one return per kind
    kind = data["kind"]
    if kind == "node_joined":
        extra = "".join(
            f", {what}"
            for what, given in (("head", data["head"]), ("egress", data["egress"]))
            if given
        )
        gpus = f"{data['gpus']} GPU" + ("" if data["gpus"] == 1 else "s")
        return f"node joined: {data['name']} ({gpus}{extra})"
    if kind == "node_lost":
        return f"node lost: {data['name']}"
    if kind == "replica_lost":
        where = f"on {data['name']}" if data["name"] is not None else "(Ray rescheduled its group)"
        then = (
            "the service places it again when it fits"
            if data["will_replace"]
            else "not placed again (its Place turned replace_lost off)"
        )
        return f"replica lost: {data['deployment']} #{data['replica']} {where}; {then}"
    if kind == "replica_replaced":
        nodes = " + ".join(n["name"] for n in data["nodes"]) or "-"
        gpus = " + ".join(_ordinals(n["gpus"]) for n in data["nodes"] if n["gpus"])
        return f"replica placed again: {data['deployment']} #{data['replica']} on {nodes}" + (
            f" (GPUs {gpus})" if gpus else ""
        )
    if kind == "replica_moved":
        gpus = f" (GPUs {_ordinals(data['gpus'])})" if data["gpus"] else ""
        return (
            f"replica moved: {data['deployment']} #{data['replica']} "
            f"from {data['from_name']} to {data['name']}{gpus}"
        )
    if kind == "events_missed":
        if data["missed"] is None:
            return "events missed: the service started again; its earlier events are gone"
        return f"events missed: {data['missed']} (this watch fell behind the service's buffer)"
    return f"event: {data['type']}"


def spec_data(spec: ReplicaBundleSpec) -> dict[str, Any]:
    """A replica's bundle shape."""
    return {
        "strategy": spec.strategy.value,
        "nnodes": spec.nnodes,
        "per_node_gpus": spec.per_node_gpus,
        "total_gpus": spec.total_gpus,
        "bundles": [dict(b) for b in spec.bundles],
        "bundle_label_selector": (
            None
            if spec.bundle_label_selector is None
            else [dict(s) for s in spec.bundle_label_selector]
        ),
    }


# -- pictures -----------------------------------------------------------------------------------


def print_replicas(console: Console, results: Sequence[dict[str, Any]], *, masters: bool) -> None:
    """One row per replica."""
    columns = ["deployment", "replica", "runtime", "node(s)", "GPUs"]
    if masters:
        columns.append("master address")
    table = _table("Replicas", columns)
    for result in results:
        for replica in result["replicas"]:
            row = [
                result["deployment"],
                str(replica["replica"]),
                result["runtime"],
                " + ".join(n["name"] for n in replica["nodes"]),
                " + ".join(_ordinals(n["gpus"]) for n in replica["nodes"] if n["gpus"]) or "-",
            ]
            if masters:
                row.append(
                    replica["master"]
                    or (
                        "- (remote API)"
                        if result["remote"]
                        else "not placed now"
                        if not replica["nodes"]
                        else "?"
                    )
                )
            table.add_row(*map(Text, row))
    console.print(table)


def print_failure(console: Console, failure: dict[str, Any]) -> None:
    """Why a deployment did not fit, node by node."""
    hint = "retry after a release" if failure["retryable"] else "never fits this cluster"
    console.print(
        Text.assemble(
            (f"{failure['deployment']} did not fit", "bold red"),
            f" ({failure['error']}, {hint}): {failure['message']}",
        ),
        soft_wrap=True,
    )
    for rejection in failure["rejections"]:
        console.print(Text(f"  {rejection['name']}: {rejection['reason']}"), soft_wrap=True)
    if failure.get("rejections_omitted"):  # not every node named: the counts give the picture
        console.print(Text(f"  ... and {failure['rejections_omitted']:,} more nodes"))
    if failure.get("rejections_omitted") and failure.get("refusing_by_free"):
        counts = ", ".join(
            f"{c['nodes']:,} with {c['free_gpus']} free" for c in failure["refusing_by_free"]
        )
        console.print(Text(f"Nodes that turned it down, by free GPUs: {counts}"), soft_wrap=True)
    if failure.get("moves"):
        console.print(Text("Moving these running replicas would make room:", style="bold"))
        print_advice(console, failure["moves"])


_SHOWN_ELSEWHERE = ("placement-actors.io/", "ray.io/")
"""Label prefixes the table does not repeat: the service's own (the name and egress columns
show them) and Ray's automatic ``ray.io/node-id``."""


def _own_labels(node: Mapping[str, Any]) -> dict[str, str]:
    """A node's labels that a ``label_selector`` would be written with, for the table."""
    return {
        k: v for k, v in (node.get("labels") or {}).items() if not k.startswith(_SHOWN_ELSEWHERE)
    }


def print_cluster(console: Console, view: dict[str, Any]) -> None:
    """A row per node: state, free and total GPUs, holders, egress; then degraded deployments.

    The ``outside`` column (GPUs other Ray users hold; ``+N waiting``: N more they took from
    under groups of the service's not made yet) is shown only when some node has any, and the
    ``labels`` column only when some node has labels of its own.
    """
    outside = any(node.get("outside") or node.get("outside_waiting") for node in view["nodes"])
    labelled = any(_own_labels(node) for node in view["nodes"])
    columns = ["node", "state", "free GPUs", "held by"]
    columns += ["outside"] if outside else []
    table = _table("Nodes", [*columns, "egress", "remote", *(["labels"] if labelled else [])])
    for node in view["nodes"]:
        lost = node.get("state") == NodeState.LOST.value
        row = [
            Text(node["name"] + (" (head)" if node["head"] else "")),
            Text(node.get("state", NodeState.ALIVE.value), style="bold red" if lost else ""),
            Text("-" if lost else f"{len(node['free'])}/{node['capacity']}"),
            Text("; ".join(f"{d} [{_ordinals(o)}]" for d, o in node["held"].items()) or "-"),
        ]
        if outside:
            waiting = node.get("outside_waiting") or 0
            shown = str(node.get("outside") or ("0" if waiting else "-"))
            row.append(Text(shown + (f" +{waiting} waiting" if waiting else "")))
        row += [
            Text("yes" if node["egress"] else "-"),
            Text(str(node["remote_replicas"]) if node["egress"] else "-"),
        ]
        if labelled:
            own = _own_labels(node)
            row.append(Text(", ".join(f"{k}={v}" for k, v in sorted(own.items())) or "-"))
        table.add_row(*row)
    console.print(table)
    degraded = view.get("degraded") or []
    if degraded:
        console.print(
            Text.assemble(
                ("Degraded", "bold red"),
                f" (replicas missing): {', '.join(degraded)}",
            ),
            soft_wrap=True,
        )


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
"""Each holder's mark where colours do not show (a file, a pipe): its letter in the legend."""


def print_occupancy(console: Console, view: dict[str, Any]) -> None:
    """A row per node, a cell per GPU, coloured by the deployment holding it.

    Where colours do not show (output to a file or a pipe, ``NO_COLOR``), each deployment's
    cells carry its own letter instead, named in the legend (``■`` past the 62nd).
    """
    holders = sorted({d for node in view["nodes"] for d in node["held"]})  # remote ones hold none
    colours = {d: _PALETTE[i % len(_PALETTE)] for i, d in enumerate(holders)}
    lettered = (console.color_system is None or console.no_color) and not console.record
    marks = {
        d: _LETTERS[i] if lettered and i < len(_LETTERS) else "■" for i, d in enumerate(holders)
    }
    width = max((len(n["name"]) for n in view["nodes"]), default=4)
    console.print(Text("GPU occupancy", style="bold"))
    for node in view["nodes"]:
        if not node["capacity"]:
            continue
        owner = {o: d for d, ordinals in node["held"].items() for o in ordinals}
        free = set(node["free"])
        line = Text(f"{node['name']:<{width}}  ")
        for ordinal in range(node["capacity"]):
            holder = owner.get(ordinal)
            if holder is not None:
                line.append(f"{marks.get(holder, '■')} ", style=colours.get(holder, "grey50"))
            elif ordinal in free:
                line.append("□ ", style="grey50")
            else:  # neither free nor held by a deployment: another Ray user holds it
                line.append("▣ ", style="grey50")
        console.print(line)
    legend = Text("legend: ")
    for deployment, colour in colours.items():
        legend.append(f"{marks[deployment]} {deployment}  ", style=colour)
    if any(n.get("outside") for n in view["nodes"]):
        legend.append("▣ outside the service  ", style="grey50")
    legend.append("□ free", style="grey50")
    console.print(legend)


def print_spec(console: Console, tp: int, spec: dict[str, Any]) -> None:
    """A planned bundle shape."""
    table = _table(f"Replica of TP size {tp}", ("field", "value"), show_header=False)
    rows = [
        ("strategy", spec["strategy"]),
        ("nodes", str(spec["nnodes"])),
        ("GPUs per node", str(spec["per_node_gpus"])),
        ("bundles", ", ".join(str(b) for b in spec["bundles"])),
    ]
    if spec["bundle_label_selector"]:
        rows.append(("label selector", str(spec["bundle_label_selector"][0])))
    for row in rows:
        table.add_row(*map(Text, row))
    console.print(table)


def print_moves(console: Console, moves: Sequence[dict[str, Any]]) -> None:
    """The replicas that moved when a node left: from where, to where, their new master."""
    table = Table(title="Moved when a node left", title_justify="left")
    for column in ("deployment", "replica", "from", "to", "GPUs", "new master address"):
        table.add_column(column, overflow="fold")
    for move in moves:
        table.add_row(
            Text(str(move["deployment"])),
            Text(str(move["replica"])),
            Text(str(move["from_name"])),
            Text(" + ".join(move["to_names"])),
            Text(" + ".join(_ordinals(g) for g in move["gpus"]) or "-"),
            Text(str(move["master"])),
        )
    console.print(table)


def named(text: str, names: Mapping[str, str]) -> str:
    """``text`` with each node id in it written as its name, as `status` shows nodes.

    One pass, longest ids first, whole ids only: an id inside a longer one, or a name that is
    another node's id, is left alone.
    """
    found = sorted((n for n in names if names[n] != n and n in text), key=len, reverse=True)
    if not found:
        return text
    ids = "|".join(re.escape(n) for n in found)
    pattern = re.compile(rf"(?<![\w.:-])({ids})(?![\w-]|[.:]\w)")  # "on n1: ..." and "n1." too
    return pattern.sub(lambda m: names[m.group(1)], text)
