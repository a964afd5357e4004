"""Placement groups: create, wait, remove, reap, and Ray's states mapped to `GroupStatus`.

Facts relied on (Ray 2.60): placement groups never fail when infeasible, they stay ``PENDING``
and ``placement_group_table(pg)["stats"]["scheduling_state"]`` says ``INFEASIBLE`` or
``NO_RESOURCES``; ``pg.wait()`` truncates to whole seconds, so waits use ``ray.wait`` on
``pg.ready()``; ``placement_group_table()`` lists the groups of every namespace, while a lookup
by name sees only the caller's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ray
from ray import PlacementGroupID
from ray.util.placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

from placement_actors.backends.ray.bundles import release_ports
from placement_actors.domain.checkpoints import LiveGroup
from placement_actors.domain.deployments import GROUP_NAME_ROOT
from placement_actors.domain.errors import (
    BackendError,
    InvalidSpecError,
    PlacementGroupTimeoutError,
)
from placement_actors.domain.group_status import GroupStatus
from placement_actors.domain.results import BundleStrategy, NodeAssignment, ReplicaBundleSpec
from placement_actors.domain.validation import check_timeout

__all__ = [
    "GroupTable",
    "build_pg",
    "build_replica_pg",
    "bundle_nodes",
    "create_group",
    "find_group",
    "find_group_by_id",
    "get_held_groups",
    "group_gpus",
    "group_states",
    "group_table",
    "groups_in",
    "live_groups",
    "remove_group",
    "remove_named_pgs_with_prefix",
    "status_of",
]

_STRATEGY = {
    BundleStrategy.STRICT_PACK: "STRICT_PACK",
    BundleStrategy.STRICT_SPREAD: "STRICT_SPREAD",
}


_STATUS = {
    "CREATED": GroupStatus.CREATED,
    "PENDING": GroupStatus.PENDING,
    "PREPARED": GroupStatus.PENDING,
    "RESCHEDULING": GroupStatus.RESCHEDULING,
    "REMOVED": GroupStatus.REMOVED,
}
"""Ray's placement-group table states."""
_SCHEDULING = {
    "INFEASIBLE": GroupStatus.INFEASIBLE,
    "NO_RESOURCES": GroupStatus.NO_RESOURCES,
}
"""The reasons in ``stats.scheduling_state`` that tell why a pending group waits."""


_SOFT = frozenset({"PACK", "SPREAD"})
"""Ray's best-effort strategies: taken by `build_pg` as Ray takes them (the planner pins)."""


READY_TIMEOUT_S = 180.0
"""How long `build_pg` waits for a group by default (as NeMo Curator's placement module does)."""


def _strategy(strategy: BundleStrategy | str) -> str:
    if isinstance(strategy, BundleStrategy):
        return _STRATEGY[strategy]
    if strategy in _SOFT:
        return str(strategy)
    try:
        return _STRATEGY[BundleStrategy(strategy)]
    except ValueError:
        msg = f"strategy must be STRICT_PACK, STRICT_SPREAD, PACK or SPREAD, got {strategy!r}"
        raise InvalidSpecError(msg, field="strategy") from None


def create_group(
    bundles: Sequence[Mapping[str, float]],
    strategy: BundleStrategy | str,
    *,
    name: str,
    bundle_label_selector: Sequence[Mapping[str, str]] | None = None,
) -> PlacementGroup:
    """Ask Ray for a detached, named group; Ray answers before it schedules anything.

    Raises:
        InvalidSpecError: no name, an unknown strategy, or bundles or selectors Ray rejects.
        BackendError: any other Ray failure (a duplicate name, a lost connection...).
    """
    if not name:
        msg = "a placement group needs a name"
        raise InvalidSpecError(msg, field="name")
    ray_strategy = _strategy(strategy)
    try:
        pg: PlacementGroup = placement_group(
            [dict(b) for b in bundles],
            strategy=ray_strategy,
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


def _status_from(info: Mapping[str, object]) -> GroupStatus:
    """The `GroupStatus` of one ``placement_group_table()`` record."""
    state = str(info.get("state") or "")
    if state in {"PENDING", "PREPARED"}:
        stats = info.get("stats")
        reason = stats.get("scheduling_state") if isinstance(stats, Mapping) else None
        return _SCHEDULING.get(str(reason), GroupStatus.PENDING)
    return _STATUS.get(state, GroupStatus.UNKNOWN)


def status_of(pg: PlacementGroup) -> GroupStatus:
    """What Ray says of ``pg`` now.

    Raises:
        BackendError: Ray could not be asked.
    """
    try:
        return _status_from(placement_group_table(pg))
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"cannot read placement group state: {exc}"
        raise BackendError(msg, operation="read placement group") from exc


def remove_group(pg: PlacementGroup) -> None:
    """Remove ``pg``; quietly when it is gone already.

    Raises:
        BackendError: Ray failed to remove a group that is still there.
    """
    try:
        remove_placement_group(pg)
    except Exception as exc:  # the Ray error-mapping boundary
        try:
            gone = placement_group_table(pg).get("state") in {None, "REMOVED"}
        except Exception:  # noqa: BLE001 - the lookup failing too is reported as the removal failing
            gone = False
        if not gone:
            msg = f"cannot remove placement group {pg.id.hex()}: {exc}"
            raise BackendError(msg, operation="remove placement group") from exc
    release_ports(pg.id.hex())  # what the blocking port probes gave it, by default


def build_pg(
    bundles: Sequence[Mapping[str, float]],
    strategy: BundleStrategy | str,
    *,
    name: str,
    bundle_label_selector: Sequence[Mapping[str, str]] | None = None,
    ready_timeout_s: float | None = READY_TIMEOUT_S,
) -> PlacementGroup:
    """Create a detached, named placement group and wait until it is ready (blocking).

    The group lives in the namespace this driver connected with. ``strategy`` is a
    `BundleStrategy` or its name (``"STRICT_PACK"``, ``"STRICT_SPREAD"``). ``ready_timeout_s``
    ``None`` waits as long as Ray takes (as ``ray.get`` without a timeout does).

    Raises:
        PlacementGroupTimeoutError: not ready in time; the group was removed. Its
            ``scheduling_state`` tells `GroupStatus.INFEASIBLE` from `GroupStatus.NO_RESOURCES`.
        InvalidSpecError: Ray rejected the bundles or selectors as malformed.
        BackendError: any other Ray failure (a duplicate name, a lost connection...).
    """
    if ready_timeout_s is not None:
        check_timeout(ready_timeout_s, "ready_timeout_s")
    pg = create_group(bundles, strategy, name=name, bundle_label_selector=bundle_label_selector)
    try:
        ready, _ = ray.wait([pg.ready()], timeout=ready_timeout_s)
        if ready:
            ray.get(ready[0])
            return pg
        try:
            state = status_of(pg)
        except BackendError:  # why it waits is unknown; the group goes all the same
            state = GroupStatus.UNKNOWN
    except Exception as exc:  # the Ray error-mapping boundary
        error = BackendError(
            f"placement group {name} failed: {exc}", operation="wait for placement group"
        )
        _remove_failed(pg, error)
        raise error from exc
    except BaseException as exc:  # interrupted while waiting: the group must not outlive the call
        _remove_failed(pg, exc)
        raise
    timed_out = PlacementGroupTimeoutError(  # only with a timeout: without, the wait ends ready
        group=name, timeout_s=ready_timeout_s or 0.0, scheduling_state=state
    )
    _remove_failed(pg, timed_out)
    raise timed_out


def _remove_failed(pg: PlacementGroup, error: BaseException) -> None:
    """Remove a group `build_pg` gives up on; if Ray will not, say so on ``error`` (raised next)."""
    try:
        remove_group(pg)
    except BackendError as exc:
        error.add_note(f"placement group {pg.id.hex()} could not be removed either: {exc}")


def build_replica_pg(
    spec: ReplicaBundleSpec, *, name: str, ready_timeout_s: float | None = READY_TIMEOUT_S
) -> PlacementGroup:
    """`build_pg` for one replica's `ReplicaBundleSpec`."""
    return build_pg(
        spec.bundles,
        spec.strategy,
        name=name,
        bundle_label_selector=spec.bundle_label_selector,
        ready_timeout_s=ready_timeout_s,
    )


def group_states(prefix: str = "") -> dict[str, GroupStatus]:
    """Name -> `GroupStatus` of the groups named ``prefix...`` (of every namespace).

    Reads ``placement_group_table()``, which keeps removed groups: when a name was used again,
    the live group's state wins over the removed ones'.
    """
    states: dict[str, GroupStatus] = {}
    for info in placement_group_table().values():
        name = str(info.get("name") or "")
        if name and name.startswith(prefix) and not states.get(name, GroupStatus.REMOVED).is_live:
            states[name] = _status_from(info)
    return states


GroupTable = Iterable[Mapping[str, Any]]
"""The records of ``placement_group_table()``, read once for several readers."""


def group_table() -> list[Mapping[str, Any]]:
    """Every record of Ray's placement-group table (every namespace, removed groups too)."""
    return list(placement_group_table().values())


def groups_in(
    status: GroupStatus, prefix: str = "", table: GroupTable | None = None
) -> dict[str, str]:
    """Ray's id (hex) -> name of the groups named ``prefix...`` in ``status`` now.

    ``table``: the records to read (`group_table`, read now by default).
    """
    return {
        str(info.get("placement_group_id")): str(info.get("name"))
        for info in (group_table() if table is None else table)
        if str(info.get("name") or "").startswith(prefix) and _status_from(info) is status
    }


def bundle_nodes(prefix: str = "") -> dict[str, dict[int, str]]:
    """Name -> {bundle index: node id} of the created groups named ``prefix...``.

    Where each bundle of a live group landed, as Ray's table says (of every namespace).
    """
    found: dict[str, dict[int, str]] = {}
    for info in placement_group_table().values():
        name = str(info.get("name") or "")
        if name.startswith(prefix) and _status_from(info) is GroupStatus.CREATED:
            found[name] = {int(i): str(n) for i, n in info["bundles_to_node_id"].items()}
    return found


def group_gpus(prefix: str = "", table: GroupTable | None = None) -> dict[str, dict[str, int]]:
    """Name -> {node id: GPUs} that each live group named ``prefix...`` holds, by Ray's table.

    The bundles Ray has placed (of a created group, or one it reschedules), of every namespace;
    a group that holds no GPU is left out. ``table``: as for `groups_in`.
    """
    found: dict[str, dict[str, int]] = {}
    for info in group_table() if table is None else table:
        name = str(info.get("name") or "")
        if not name.startswith(prefix) or _status_from(info) is GroupStatus.REMOVED:
            continue
        bundles = info.get("bundles") or {}
        for index, node in (info.get("bundles_to_node_id") or {}).items():
            gpus = int((bundles.get(index) or {}).get("GPU", 0))
            if gpus and node:
                held = found.setdefault(name, {})
                held[str(node)] = held.get(str(node), 0) + gpus
    return found


def remove_named_pgs_with_prefix(prefix: str) -> int:
    """Remove every live placement group of this namespace named ``prefix...``; returns how many.

    ``placement_group_table()`` lists the groups of every namespace, but only groups of the
    namespace this driver connected with are removed: a name is looked up in that namespace
    first, so another service's groups with the same names are left alone.

    Raises:
        InvalidSpecError: ``prefix`` is empty (it would remove every named group).
        BackendError: Ray failed to list or remove the groups.
    """
    if not isinstance(prefix, str) or not prefix:
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
        except Exception as exc:  # the Ray error-mapping boundary
            msg = f"cannot look up placement group {name}: {exc}"
            raise BackendError(msg, operation="find placement group") from exc
        remove_group(pg)
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
        if not name.startswith(root) or _status_from(info) is not GroupStatus.CREATED:
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


def find_group(name: str, group_id: str) -> PlacementGroup | None:
    """The live group of this namespace named ``name`` with Ray's id ``group_id``, else ``None``.

    Raises:
        BackendError: Ray could not be asked.
    """
    try:
        pg = get_placement_group(name)
    except ValueError:
        return None  # no such group in this namespace
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"cannot look up placement group {name}: {exc}"
        raise BackendError(msg, operation="find placement group") from exc
    if pg.id.hex() != group_id or not status_of(pg).is_live:
        return None
    found: PlacementGroup = pg
    return found


def find_group_by_id(*, group_id: str, name: str) -> PlacementGroup | None:
    """The live group with Ray's id ``group_id`` if it is named ``name``, else ``None``.

    Unlike `find_group`, this works for a group of any namespace: Ray's table is read by id.

    Raises:
        InvalidSpecError: ``group_id`` is not a Ray placement-group id.
        BackendError: Ray could not be asked.
    """
    if not _is_group_id(group_id):  # Ray would log an error and hand back a nil id
        msg = f"{group_id!r:.80} is not a Ray placement-group id"
        raise InvalidSpecError(msg, field="group_id")
    pg = PlacementGroup(PlacementGroupID.from_hex(group_id))
    try:
        info = placement_group_table(pg)
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"cannot read placement group {name}: {exc}"
        raise BackendError(msg, operation="read placement group") from exc
    if info.get("name") != name or not _status_from(info).is_live:
        return None
    return pg


def _is_group_id(text: object) -> bool:
    """Whether ``text`` is the hex of a placement-group id (``2 * PlacementGroupID.size()``)."""
    return (
        isinstance(text, str)
        and len(text) == 2 * PlacementGroupID.size()
        and all(c in "0123456789abcdef" for c in text)
    )


def live_groups(root: str = GROUP_NAME_ROOT) -> dict[str, LiveGroup]:
    """Name -> `LiveGroup` of this namespace's groups named ``root...`` that are not removed.

    What a starting service reconciles its records with (`placement_actors.policies.recovery`).

    Raises:
        BackendError: Ray could not be asked.
    """
    found: dict[str, LiveGroup] = {}
    try:
        for info in placement_group_table().values():
            name = str(info.get("name") or "")
            status = _status_from(info)
            if not name.startswith(root) or not status.is_live:
                continue
            group_id = str(info.get("placement_group_id"))
            try:
                if get_placement_group(name).id.hex() != group_id:
                    continue  # another namespace's group of that name
            except ValueError:
                continue
            found[name] = LiveGroup(name=name, group_id=group_id, status=status)
    except Exception as exc:  # the Ray error-mapping boundary
        msg = f"cannot list placement groups: {exc}"
        raise BackendError(msg, operation="list placement groups") from exc
    return found
