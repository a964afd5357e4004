"""Moves of running replicas that make room: a refusal's move set, and a defragmentation plan.

Best fit keeps whole nodes free for as long as it can, but arrivals and departures still scatter
free GPUs: four free GPUs as 2 + 2 on two nodes refuse a 4-GPU replica that one node would hold.
`find_move_set` looks for at most two running replicas whose moves would make a refused request
fit; `plan_defragmentation` lists moves that would give whole nodes back for large replicas.

Both work on free counts with a small overlay of the moves planned so far, never on a copy of
the ledger, and read a bounded number of nodes (`MAX_SOURCE_NODES` to move from, `MAX_PROBES`
per destination), so they cost about the same on 100 nodes and on 10,000. The search does not
change the ledger: a move is made only when it is sent as a `MoveReplica`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Protocol

from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.limits import MAX_PLAN_MOVES, MAX_REPLICA_NODES
from placement_actors.domain.results import DefragmentationPlan, ReplicaMove
from placement_actors.domain.validation import check_count
from placement_actors.policies.gpu_ledger import GpuLedger
from placement_actors.policies.replica_placement import fits_on_counts
from placement_actors.policies.scopes import SCOPE_INDEX_MIN

__all__ = [
    "MAX_PROBES",
    "MAX_READ",
    "MAX_SOURCE_NODES",
    "MAX_TRIES",
    "PLAN_READS",
    "ROOM_PLAN_MOVES",
    "Resident",
    "Residents",
    "Room",
    "find_move_set",
    "moves_make_room",
    "plan_defragmentation",
    "room_moves",
]

MAX_SOURCE_NODES = 32
"""Nodes a move set is looked for on (those closest to holding the replica first)."""

MAX_PROBES = 64
"""Nodes looked at to find where one moved replica would go."""

ROOM_PLAN_MOVES = 8
"""The most moves the service makes to fit one refused `Place` when no move set of one or two
does: a defragmentation plan of the request's nodes, carried out only if it makes room."""

_PAIRS_FROM = 24
"""Two moves off two nodes are tried among this many of the cheapest single moves."""

MAX_READ = MAX_SOURCE_NODES * 64
"""Nodes read while looking for the nodes to move from."""

PLAN_READS = MAX_READ * 4
"""Nodes and replicas one defragmentation plan reads in all: the replicas it tries to move off
a node, and the nodes it reads looking where they would go (those tried, and those passed over
as nodes with the free GPUs asked for already)."""


@dataclass(slots=True)
class _Reads:
    """What a plan may still read to place its moved replicas, shared by all its steps."""

    left: int = PLAN_READS

    def take(self) -> bool:
        """One more node read; whether that was within the budget."""
        self.left -= 1
        return self.left >= 0


MAX_TRIES = 256
"""Move sets tried, at most (each looks at up to `MAX_PROBES` nodes per move)."""

_PER_SOURCE = 8
"""Single moves, and pairs, taken from one node (the cheapest)."""

_SHARES = 4
"""Layouts a move set is looked for (one node, then the fewest nodes of an even split first)."""


@dataclass(frozen=True, slots=True)
class Resident:
    """A running replica held whole on one node: one that could be moved.

    Attributes:
        deployment: its deployment.
        replica_index: the replica.
        gpus: the GPUs it holds on its node.
        replicas: how many replicas its deployment has. A move set or a plan moves at most
            ``replicas - 1`` of them (one, for a deployment of one replica), so that each
            deployment keeps a replica serving while the moved ones start again.
    """

    deployment: str
    replica_index: int
    gpus: int
    replicas: int = 1

    def may_move(self, moved: int) -> bool:
        """Whether it may move too, when ``moved`` replicas of its deployment already do."""
        return moved < max(1, self.replicas - 1)


class Residents(Protocol):
    """What the service knows of running replicas, read node by node."""

    def on(self, node: str) -> Sequence[Resident]:
        """The movable replicas running wholly on ``node`` (split replicas stay where they are)."""

    def may_host(self, resident: Resident, node: str) -> bool:
        """Whether ``node`` is one the resident's deployment may use."""

    def scope(self, resident: Resident) -> frozenset[str] | None:
        """The nodes the resident's deployment may use at most (``None``: any node).

        A search for the resident's destination reads only these when they are few (fewer than
        `SCOPE_INDEX_MIN`); `may_host` still has the last word on each node.
        """


@dataclass(frozen=True, slots=True, kw_only=True)
class Room:
    """Room wanted on the ledger: ``replicas`` replicas of ``gpus`` GPUs on the given nodes.

    Attributes:
        gpus: GPUs per replica.
        replicas: replicas wanted.
        split: whether a replica may be split evenly over nodes (else each must fit one node).
        allowed: the nodes the request may use (``None``: every node).
        avoid: nodes never to use.
    """

    gpus: int
    replicas: int = 1
    split: bool = True
    allowed: frozenset[str] | None = None
    avoid: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        """A room of no GPUs or no replicas is no request: an `InvalidSpecError`."""
        check_count(self.gpus, "gpus", minimum=1)
        check_count(self.replicas, "replicas", minimum=1)

    def covers(self, ledger: GpuLedger, node: str) -> bool:
        """Whether the request may use ``node``."""
        return (
            node in ledger
            and node not in self.avoid
            and (self.allowed is None or node in self.allowed)
        )


class _Overlay:
    """Free counts as the ledger has them, with planned moves applied on top.

    It also keeps which deployments the planned moves move, and where to: no two replicas of one
    deployment are planned onto one node (a SPREAD deployment would lose its spread), and no
    deployment has more of its replicas moved than `Resident.may_move` allows.
    """

    __slots__ = ("_delta", "_landed", "_ledger", "_moved")

    def __init__(self, ledger: GpuLedger) -> None:
        self._ledger = ledger
        self._delta: dict[str, int] = {}
        self._moved: dict[str, int] = {}
        self._landed: set[tuple[str, str]] = set()

    def copy(self) -> _Overlay:
        twin = _Overlay(self._ledger)
        twin._delta = dict(self._delta)
        twin._moved = dict(self._moved)
        twin._landed = set(self._landed)
        return twin

    def may_move(self, resident: Resident) -> bool:
        """Whether ``resident`` may be moved too (its deployment's budget of moves)."""
        return resident.may_move(self._moved.get(resident.deployment, 0))

    def lands_with_own(self, resident: Resident, node: str) -> bool:
        """Whether a planned move already takes another replica of its deployment to ``node``."""
        return (resident.deployment, node) in self._landed

    def free(self, node: str) -> int:
        return self._ledger.free_count(node) + self._delta.get(node, 0)

    def apply(self, move: ReplicaMove) -> None:
        self._delta[move.from_node] = self._delta.get(move.from_node, 0) + move.gpus
        self._delta[move.to_node] = self._delta.get(move.to_node, 0) - move.gpus
        self._moved[move.deployment] = self._moved.get(move.deployment, 0) + 1
        self._landed.add((move.deployment, move.to_node))

    def histogram(self, base: list[int], room: Room) -> list[int]:
        """``base`` (the ledger's free histogram of the request's nodes) with the moves made."""
        counts = list(base)
        for node, change in self._delta.items():
            if change and room.covers(self._ledger, node):
                before = self._ledger.free_count(node)
                counts[before] -= 1
                counts[before + change] += 1
        return counts


def _fits(counts: list[int], room: Room) -> bool:
    if room.split:
        return fits_on_counts(list(counts), room.gpus, room.replicas)
    whole = sum(counts[k] * (k // room.gpus) for k in range(room.gpus, len(counts)))
    return whole >= room.replicas


def _as_laid_out(ledger: GpuLedger, room: Room) -> tuple[Room, int]:
    """``room`` as a replica is laid out, and the largest node it may use.

    A replica kept whole is kept whole only where one node can hold it: larger, it is split.
    """
    largest = ledger.max_capacity(room.allowed, room.avoid)
    if not room.split and room.gpus > largest:
        room = replace(room, split=True)
    return room, largest


def _out_of_reach(ledger: GpuLedger, base: list[int], room: Room, moves: int, largest: int) -> bool:
    """Whether ``moves`` moves could not make ``room`` fit, however chosen.

    A move takes as many GPUs on one node as it gives back on another: the cluster (less the
    room's avoided nodes, where no replica is moved) must have the room's GPUs free. It gives
    back at most one node's worth (``largest``) on the room's nodes. And a room of whole
    replicas gains at most ``largest // gpus`` replicas per move. A room short by more is out
    of reach, and no search is needed to say so (a refusal of thousands of replicas costs no
    more than one).
    """
    need = room.gpus * room.replicas
    if ledger.total_free(None, room.avoid) < need:
        return True
    if sum(k * count for k, count in enumerate(base)) + moves * largest < need:
        return True
    if room.split or room.gpus > largest:
        return False
    now = sum(base[k] * (k // room.gpus) for k in range(room.gpus, len(base)))
    return now + moves * (largest // room.gpus) < room.replicas


def _shares(room: Room, largest: int) -> list[int]:
    """The free GPUs one node needs to take a replica or its share of an even split, largest first.

    One node's worth (``gpus``) when a node is large enough; with ``split``, also each even
    share (``gpus / n`` for ``n`` dividing ``gpus``), at most `_SHARES` of them.
    """
    shares = [room.gpus] if largest >= room.gpus else []
    if room.split:
        divisors = (n for n in range(2, min(room.gpus, MAX_REPLICA_NODES) + 1))
        shares.extend(room.gpus // n for n in divisors if room.gpus % n == 0)
    return [s for s in shares if s <= largest][:_SHARES]


def _fullest_below(ledger: GpuLedger, share: int, room: Room) -> Iterator[str]:
    """Nodes of the request with fewer than ``share`` free but room for it: most free first.

    At most `MAX_READ` nodes are read, whatever the cluster: nodes too small for the share, or
    avoided, are passed over within that budget. A long node list is read from the ledger's
    index of it, most free first: the same nodes whatever order the list is in.
    """
    allowed = room.allowed
    if allowed is not None and len(allowed) < SCOPE_INDEX_MIN:  # a short list: read it all
        nodes = (n for n in allowed if room.covers(ledger, n))
        fitting = [n for n in nodes if ledger.capacity(n) >= share > ledger.free_count(n)]
        yield from sorted(fitting, key=lambda n: (-ledger.free_count(n), n))
        return
    read = 0
    for free in range(min(share, ledger.max_capacity() + 1) - 1, -1, -1):
        for node in ledger.with_free(free, allowed):
            read += 1
            if read > MAX_READ:
                return
            if ledger.capacity(node) >= share and room.covers(ledger, node):
                yield node


def _destination(
    ledger: GpuLedger,
    residents: Residents,
    overlay: _Overlay,
    resident: Resident,
    shut: AbstractSet[str],
    *,
    keep: Room | None = None,
    reads: _Reads | None = None,
) -> str | None:
    """Where ``resident`` would go: the best fit of the nodes it may use, none of ``shut``.

    With ``keep`` (a plan's room), never a node of that room it would take from ``keep.gpus``
    free GPUs or more to fewer: a plan that frees nodes must not undo a node that has that many
    free already. Such nodes are passed over within `MAX_READ` reads, beside the `MAX_PROBES`
    nodes tried; with ``reads``, every node read counts against the plan's budget too.
    """
    allowed = residents.scope(resident)
    if allowed is not None and len(allowed) <= len(shut) and allowed <= shut:
        return None  # every node it may use is shut (one pinned to the node it would leave)
    looked = passed = 0
    for node in _best_fits(ledger, resident.gpus, allowed):
        if node in shut:
            continue
        if reads is not None and not reads.take():
            return None
        free = overlay.free(node)
        if (
            keep is not None
            and free >= keep.gpus > free - resident.gpus
            and keep.covers(ledger, node)
        ):
            passed += 1
            if passed > MAX_READ:
                return None
            continue
        looked += 1
        if looked > MAX_PROBES:
            return None
        if (
            free >= resident.gpus
            and not overlay.lands_with_own(resident, node)
            and residents.may_host(resident, node)
        ):
            return node
    return None


def _best_fits(ledger: GpuLedger, gpus: int, allowed: frozenset[str] | None) -> Iterator[str]:
    """Nodes with ``gpus`` free, fewest free first (then by id): of ``allowed`` when it is short.

    A short list is read whole; a long one (or none) is read from the ledger's own index, and
    the caller's `Residents.may_host` keeps to the list. No index of a list is built, nor any
    other remembered: a search reads replicas of many deployments, and must not push out the
    indexes their placements use.
    """
    if allowed is None or len(allowed) >= SCOPE_INDEX_MIN:
        return ledger.candidates(gpus)
    fitting = [n for n in allowed if n in ledger and ledger.free_count(n) >= gpus]
    return iter(sorted(fitting, key=lambda n: (ledger.free_count(n), n)))


def _move(resident: Resident, source: str, target: str) -> ReplicaMove:
    return ReplicaMove(
        deployment=resident.deployment,
        replica_index=resident.replica_index,
        gpus=resident.gpus,
        from_node=source,
        to_node=target,
    )


_Planned = tuple[Resident, str]
"""A replica to move, and the node it leaves."""


@dataclass(slots=True)
class _Search:
    """One move-set search: the ledger, the replicas, and the room as it is now."""

    ledger: GpuLedger
    residents: Residents
    room: Room
    base: list[int]
    stuck: set[_Planned] = field(default_factory=set)
    """Replicas found to have nowhere to go from their node: not looked at again."""

    def destination(
        self, overlay: _Overlay, resident: Resident, shut: AbstractSet[str]
    ) -> str | None:
        return _destination(self.ledger, self.residents, overlay, resident, shut)

    def makes_room(self, planned: Sequence[_Planned]) -> tuple[ReplicaMove, ...]:
        """The moves of ``planned`` (destinations chosen in turn), if the room then fits."""
        shut = {source for _, source in planned}
        overlay = _Overlay(self.ledger)
        moves: list[ReplicaMove] = []
        for resident, source in planned:
            if not overlay.may_move(resident):
                return ()
            target = self.destination(overlay, resident, shut)
            if target is None:
                # Nowhere to go with only its own node shut and no other move made: nor in any
                # other set (a move made first only takes GPUs, another node shut only hides).
                if not moves and shut == {source}:
                    self.stuck.add((resident, source))
                return ()
            moves.append(_move(resident, source, target))
            overlay.apply(moves[-1])
        return tuple(moves) if _fits(overlay.histogram(self.base, self.room), self.room) else ()

    def options(self, largest: int) -> tuple[list[_Planned], list[tuple[_Planned, _Planned]]]:
        """Replicas whose move alone could give a node a share; pairs off one node that could.

        Each list is cheapest (fewest GPUs moved) first; a replica is named once in the first.
        """
        ones: list[_Planned] = []
        twos: list[tuple[_Planned, _Planned]] = []
        for share in _shares(self.room, largest):
            for source in islice(_fullest_below(self.ledger, share, self.room), MAX_SOURCE_NODES):
                on = sorted(self.residents.on(source), key=lambda r: r.gpus)
                if not on:
                    continue
                short = share - self.ledger.free_count(source)
                sizes = [r.gpus for r in on]
                enough = bisect.bisect_left(sizes, short)  # on[enough:] free the share alone
                ones.extend((r, source) for r in on[enough : enough + _PER_SOURCE])
                # For each smaller replica, the smallest partner that makes up the shortfall:
                # the cheapest pair it is in (not every pair: a node may hold hundreds).
                pairs = []
                for i, first in enumerate(on[:enough]):
                    j = bisect.bisect_left(sizes, short - first.gpus, lo=i + 1)
                    if j < len(on):
                        pairs.append(((first, source), (on[j], source)))
                pairs.sort(key=lambda pair: pair[0][0].gpus + pair[1][0].gpus)
                twos.extend(pairs[:_PER_SOURCE])
        ones = list(dict.fromkeys(sorted(ones, key=lambda p: p[0].gpus)))
        return ones, sorted(twos, key=lambda pair: pair[0][0].gpus + pair[1][0].gpus)


def find_move_set(
    ledger: GpuLedger, residents: Residents, room: Room, *, max_moves: int = 2
) -> tuple[ReplicaMove, ...]:
    """At most ``max_moves`` moves after which ``room`` fits the ledger; ``()`` when none is found.

    Only refusals the cluster's free GPUs could cover are looked at: enough are free, but scattered,
    or on nodes the request may not use, where a replica moved off its nodes may go. For each layout
    the room could take (one node; each even split, fewest nodes first), the nodes closest to the
    layout's share are looked at: which one or two of their replicas, moved out, would give them
    that share. Sets are tried cheapest first (one move before two, fewer GPUs moved first); two
    moves either empty one node or give two nodes a share each. Each moved replica goes to the
    best-fit node its deployment may use, never to a node a move of the set empties.

    Raises:
        InvalidSpecError: ``max_moves`` is not 1 or 2.
    """
    if max_moves not in (1, 2):
        msg = f"a move set holds 1 or 2 moves, got {max_moves!r}"
        raise InvalidSpecError(msg, field="max_moves")
    room, largest = _as_laid_out(ledger, room)
    base = ledger.free_histogram(room.allowed, room.avoid)
    if _fits(base, room) or _out_of_reach(ledger, base, room, max_moves, largest):
        return ()
    search = _Search(ledger, residents, room, base)
    ones, twos = search.options(largest)
    tries = MAX_TRIES
    for one in ones[:tries]:
        found = search.makes_room((one,))
        if found:
            return found
    tries -= min(tries, len(ones))
    if max_moves == 1 or not tries:
        return ()
    # Two moves: off one node, or one off each of two. A replica found to have nowhere to go
    # is left out of the pairs before they are tried (nor does such a pair use up a try).
    cheapest = [one for one in ones[:_PAIRS_FROM] if one not in search.stuck]
    apart = [(a, b) for i, a in enumerate(cheapest) for b in cheapest[i + 1 :] if a[1] != b[1]]
    pairs = sorted(twos + apart, key=lambda pair: pair[0][0].gpus + pair[1][0].gpus)
    for pair in pairs:
        if pair[0] in search.stuck or pair[1] in search.stuck:
            continue
        found = search.makes_room(pair)
        if found:
            return found
        tries -= 1
        if not tries:
            break
    return ()


def _empty(  # noqa: PLR0917 - one step of the plan, with the plan's state
    ledger: GpuLedger,
    residents: Residents,
    overlay: _Overlay,
    source: str,
    room: Room,
    shut: AbstractSet[str],
    budget: int,
    reads: _Reads,
) -> tuple[_Overlay, list[ReplicaMove]] | None:
    """The moves (at most ``budget``) that leave ``source`` with ``room.gpus`` free, or ``None``.

    Its replicas are tried largest first; one that may not move, or has nowhere to go, stays,
    and the smaller ones may still free enough around it.
    """
    target = room.gpus
    trial = overlay.copy()
    planned: list[ReplicaMove] = []
    on_source = sorted(residents.on(source), key=lambda r: -r.gpus)
    left = sum(r.gpus for r in on_source)  # what the replicas not tried yet could still free
    roomiest = ledger.max_free()  # no node (but the plan's sources, shut) has more free
    for resident in on_source:
        if trial.free(source) >= target:
            break
        if len(planned) >= budget or trial.free(source) + left < target or not reads.take():
            return None  # each replica tried counts against the plan's reads, as a node does
        left -= resident.gpus
        if resident.gpus > roomiest or not trial.may_move(resident):
            continue
        goes = _destination(
            ledger, residents, trial, resident, {*shut, source}, keep=room, reads=reads
        )
        if goes is not None:
            planned.append(_move(resident, source, goes))
            trial.apply(planned[-1])
    return (trial, planned) if trial.free(source) >= target else None


def plan_defragmentation(
    ledger: GpuLedger,
    residents: Residents,
    *,
    gpus: int | None = None,
    max_moves: int = 16,
    allowed: frozenset[str] | None = None,
    avoid: frozenset[str] = frozenset(),
) -> DefragmentationPlan:
    """Moves that would leave nodes with ``gpus`` free (whole nodes by default), fewest first.

    The nodes closest to that are emptied first, each only if the replicas it gives up have
    somewhere to go (best fit, never onto a node the plan frees or moves from); a replica that
    cannot move stays, when the others free enough around it. At most
    ``max_moves`` moves; at most `MAX_READ` nodes are read to find the nodes to free, and
    `PLAN_READS` to find where their replicas would go. With no GPU node, the plan is empty
    (``gpus`` 0).

    Raises:
        InvalidSpecError: ``gpus`` or ``max_moves`` is not a count in range.
    """
    check_count(max_moves, "max_moves", minimum=1)
    if max_moves > MAX_PLAN_MOVES:
        msg = f"max_moves must be at most {MAX_PLAN_MOVES}, got {max_moves}"
        raise InvalidSpecError(msg, field="max_moves")
    room = Room(gpus=1, allowed=allowed, avoid=avoid, split=False)
    if gpus is not None:
        check_count(gpus, "gpus", minimum=1)
    target = ledger.max_capacity(room.allowed, room.avoid) if gpus is None else gpus
    if target == 0:  # no GPU node to free
        return DefragmentationPlan(gpus=0, moves=(), freed_nodes=())
    room = replace(room, gpus=target)
    overlay = _Overlay(ledger)
    moves: list[ReplicaMove] = []
    freed: list[str] = []
    shut: set[str] = set()
    touched: set[str] = set()
    reads = _Reads()
    for source in islice(_fullest_below(ledger, target, room), MAX_SOURCE_NODES * 8):
        if len(moves) >= max_moves or reads.left <= 0:
            break
        if source in touched:
            continue
        budget = max_moves - len(moves)
        emptied = _empty(ledger, residents, overlay, source, room, shut, budget, reads)
        if emptied is None:
            continue
        overlay, planned = emptied
        moves.extend(planned)
        freed.append(source)
        shut.add(source)
        touched.update(m.to_node for m in planned)
    return DefragmentationPlan(gpus=target, moves=tuple(moves), freed_nodes=tuple(freed))


def moves_make_room(ledger: GpuLedger, moves: Sequence[ReplicaMove], room: Room) -> bool:
    """Whether ``room`` fits the ledger once ``moves`` are made (worked out on free counts)."""
    room, _ = _as_laid_out(ledger, room)
    overlay = _Overlay(ledger)
    for move in moves:
        overlay.apply(move)
    return _fits(overlay.histogram(ledger.free_histogram(room.allowed, room.avoid), room), room)


def room_moves(
    ledger: GpuLedger, residents: Residents, room: Room, *, max_plan_moves: int = ROOM_PLAN_MOVES
) -> tuple[ReplicaMove, ...]:
    """The moves that make ``room`` fit, to be carried out in order; ``()`` when none is found.

    A move set of one or two (`find_move_set`) first; else, when GPUs enough are free in the cluster
    (scattered, or off the room's nodes), a defragmentation plan of the room's nodes
    (`plan_defragmentation`, at most ``max_plan_moves`` moves) for one node's worth of the replica,
    cut after the first node it frees with which the room fits. Either is returned only if the room
    fits once it is made (`moves_make_room`), so no move is made in vain; a room that fits already
    needs none.
    """
    if moves_make_room(ledger, (), room):
        return ()
    moves = find_move_set(ledger, residents, room)
    if not moves:
        largest = ledger.max_capacity(room.allowed, room.avoid)
        size = min(room.gpus, largest)
        base = ledger.free_histogram(room.allowed, room.avoid)
        if size == 0 or _out_of_reach(ledger, base, room, max_plan_moves, largest):
            return ()
        plan = plan_defragmentation(
            ledger,
            residents,
            gpus=size,
            max_moves=max_plan_moves,
            allowed=room.allowed,
            avoid=room.avoid,
        )
        return _enough_of(plan.moves, ledger, room)
    return moves if moves and moves_make_room(ledger, moves, room) else ()


def _enough_of(
    plan: Sequence[ReplicaMove], ledger: GpuLedger, room: Room
) -> tuple[ReplicaMove, ...]:
    """The shortest prefix of ``plan``, cut where a node is freed, with which ``room`` fits.

    A plan frees its nodes one after another (each node's moves together), and keeps freeing
    nodes while it has moves left: the nodes after the first ones that make room are not needed.
    """
    for end in range(1, len(plan) + 1):
        node_done = end == len(plan) or plan[end].from_node != plan[end - 1].from_node
        if node_done and moves_make_room(ledger, plan[:end], room):
            return tuple(plan[:end])
    return ()
