"""Deployment and cluster YAML files, validated, with errors that name the file, line and field.

``deployments.yaml``::

    deployments:
      - name: llama-8b                 # letters, digits, '.', '_', '-'
        model: meta-llama/Llama-3.1-8B-Instruct
        replicas: 2                    # default 1
        gpus: 1                        # GPUs per replica (tensor-parallel size), local only
        runtime: vllm                  # optional; inferred from the model name
        strategy: spread               # GPU replicas: pack (default) or spread over nodes
        gpu_nodes: [gpu-a, gpu-b]      # optional: only these GPU nodes
        label_selector: {zone: "in(a,b)"}  # optional: only nodes whose labels match (Ray's syntax)
        keep_whole: true               # never split a replica one node could hold (default false)
        movable: true                  # may be moved to make room for others (default false)
      - name: gpt
        model: gpt-4o
        api_key_env: OPENAI_API_KEY    # the variable that holds the key, never the key itself
        egress_strategy: spread        # remote replicas: spread (default) or pack on egress nodes
        egress_nodes: [cpu-1]          # optional: only these egress nodes

``cluster.yaml``::

    nodes:
      - id: gpu-a
        gpus: 8                        # 0-1024
        head: false                    # default false
        egress: false                  # default false: may it reach remote providers?
        labels: {zone: a}

A file with any error yields nothing: every problem of the file, from its YAML to the values it
describes (schema and domain checks alike), is reported in one `ConfigFileError`, one
``file:line: field: problem`` each, in file order. Past 100 problems, the first 100 found are
shown (the YAML's own, such as duplicate keys, are found before the values are checked) and a
last line counts the rest.

The files are human-written specs, so the loader refuses, with the line, what YAML would
otherwise let through silently: a key that appears twice in one mapping (YAML keeps the last;
both lines are named), more than one document, keys that are not plain values, ``<<`` merge keys,
tags other than the core scalar types, and an ``api_key_env`` that is not an environment-variable
name (most likely a pasted key: its value is never shown, in errors or in logs). Given the
cluster's node ids (``known_nodes``), an unknown id in ``gpu_nodes`` or ``egress_nodes`` is a
problem of the file too.

Every number that sizes work is bounded before the work is done: the file's bytes
(`MAX_FILE_BYTES`), its nesting (`MAX_NESTING`), its values with aliases expanded (`MAX_VALUES`,
which refuses "billion laughs" files), its entries (`MAX_DEPLOYMENTS`,
`placement_actors.domain.limits.MAX_NODES`), ``replicas`` and ``gpus`` (`MAX_FILE_COUNT`, and the
placement actor's limit on remote replicas), the length of numbers, and the node, text and label
limits of `placement_actors.domain.limits`.

Each file is read once, as strict UTF-8, and parsed once, by libyaml when PyYAML has it (PyYAML's
own parser otherwise). The loader builds the tree from the parser's events itself, without
recursion, keeping each value's line; so whatever bytes a file holds, the only error that comes
out is a `ConfigFileError`. A 5 MB file of 50,000 deployments loads in a few seconds.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import logging
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError
from yaml.reader import ReaderError

from placement_actors.domain.constraints import EgressStrategy, GpuStrategy, PlacementConstraints
from placement_actors.domain.deployments import (
    ApiKey,
    Deployment,
    RemoteNetwork,
    RuntimeKind,
    deployment_name_problem,
)
from placement_actors.domain.errors import ConfigFileError, ConfigProblem, InvalidSpecError
from placement_actors.domain.limits import (
    DEFAULT_MAX_REMOTE_REPLICAS,
    MAX_LABEL_TEXT,
    MAX_LABELS,
    MAX_NODE_GPUS,
    MAX_NODE_ID,
    MAX_NODES,
    MAX_TEXT,
)
from placement_actors.domain.topology import NodeTopology

__all__ = [
    "MAX_DEPLOYMENTS",
    "MAX_FILE_BYTES",
    "MAX_FILE_COUNT",
    "MAX_NESTING",
    "MAX_VALUES",
    "ClusterFile",
    "DeploymentSpec",
    "load_cluster",
    "load_deployments",
]

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Bytes one file may hold (64 MiB); a larger file is refused before it is parsed."""

MAX_NESTING = 32
"""Levels of lists and mappings one file may nest (the formats need 4)."""

MAX_VALUES = 1_000_000
"""Values (keys, scalars, lists and mappings) one file may hold, each alias counted as a copy of
what it refers to: a file that expands to more is refused before it is validated."""

MAX_DEPLOYMENTS = 100_000
"""Deployments one deployments file may hold."""

MAX_FILE_COUNT = 1_000_000
"""The largest ``replicas`` or ``gpus`` a deployments file may ask for. A larger count is not
malformed, but no cluster holds it: in a human-written file it is a typo. Counts up to this
ceiling that do not fit are refused later, when placed (`NotEnoughGpusError`)."""

_MAX_PROBLEMS = 100
"""Problems one error shows; the rest are counted in a last line."""
_MAX_ENV_NAME = 128
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_FIELD = re.compile(r"[A-Za-z0-9_.\-]{1,40}")
_SHOWN = 40
"""Characters of user text (a node id, a key) shown in a problem."""

# libyaml's parser when PyYAML was built with it (tens of times faster), PyYAML's otherwise.
_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_M = TypeVar("_M", bound=BaseModel)


def _not_blank(value: str) -> str:
    if not value.strip():
        kind = "not_blank"
        raise PydanticCustomError(kind, "must not be blank")
    return value


def _env_name(value: str) -> str:
    if not value:
        kind = "env_name_empty"
        raise PydanticCustomError(kind, "must not be empty")
    if len(value) > _MAX_ENV_NAME or not _ENV_NAME.fullmatch(value):
        kind = "env_name"
        raise PydanticCustomError(
            kind,
            "must name an environment variable (the value looks like a key itself and is not "
            "shown)",
        )
    return value


def _deployment_name(value: str) -> str:
    problem = deployment_name_problem(value)
    if problem is not None:  # checked with the other fields: every problem is reported at once
        kind = "deployment_name"
        raise PydanticCustomError(kind, problem)
    return value


_NodeId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NODE_ID), AfterValidator(_not_blank)
]
_EnvName = Annotated[str, AfterValidator(_env_name)]
_Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]
_LabelText = Annotated[str, StringConstraints(max_length=MAX_LABEL_TEXT)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DeploymentEntry(_Entry):
    name: Annotated[str, AfterValidator(_deployment_name)]
    model: _Text
    replicas: StrictInt = Field(default=1, ge=1, le=MAX_FILE_COUNT)
    gpus: StrictInt | None = Field(default=None, ge=1, le=MAX_FILE_COUNT)
    runtime: RuntimeKind | None = None
    api_key_env: _EnvName | None = None
    strategy: GpuStrategy = GpuStrategy.PACK
    egress_strategy: EgressStrategy = EgressStrategy.SPREAD
    gpu_nodes: list[_NodeId] | None = Field(default=None, max_length=MAX_NODES)
    egress_nodes: list[_NodeId] | None = Field(default=None, max_length=MAX_NODES)
    keep_whole: StrictBool = False
    movable: StrictBool = False
    label_selector: dict[_LabelText, _LabelText] = Field(
        default_factory=dict, max_length=MAX_LABELS
    )


class _NodeEntry(_Entry):
    id: _NodeId
    gpus: StrictInt = Field(default=0, ge=0, le=MAX_NODE_GPUS)
    head: StrictBool = False
    egress: StrictBool = False
    labels: dict[_LabelText, _LabelText] = Field(default_factory=dict, max_length=MAX_LABELS)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentSpec:
    """One entry of a deployments file: the deployment and how it may be placed."""

    deployment: Deployment
    constraints: PlacementConstraints
    unset_key_env: str | None = None
    """The variable its ``api_key_env`` names when that is not set (its name: never a key)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterFile:
    """A cluster file: the nodes, and which of them have egress."""

    topology: tuple[NodeTopology, ...]
    egress_nodes: tuple[str, ...]


def load_deployments(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    known_nodes: Collection[str] | None = None,
    max_remote_replicas: int = DEFAULT_MAX_REMOTE_REPLICAS,
) -> tuple[DeploymentSpec, ...]:
    """Read and validate a deployments file.

    Args:
        path: the YAML file.
        environ: where ``api_key_env`` names are looked up; the process environment by default.
            A named variable that is unset leaves the deployment without a key (logged at
            INFO): placement needs only the key's identity, to group deployments that share it.
        known_nodes: the node ids of the cluster the file is for; when given, a ``gpu_nodes`` or
            ``egress_nodes`` id outside it is a problem of the file. ``None`` checks nothing.
        max_remote_replicas: the most replicas a remote deployment may ask for: the limit of
            the placement actor the file is for (its default unless it was started with
            another), so a file it would refuse is refused here, with the line.

    Raises:
        ConfigFileError: the file is unreadable, not YAML, or holds any invalid entry.
    """
    env = os.environ if environ is None else environ
    known = None if known_nodes is None else frozenset(known_nodes)
    with _collector_paused():
        return _deployments(_read(path), env, known, max_remote_replicas)


def _deployments(
    doc: _Document, env: Mapping[str, str], known: frozenset[str] | None, max_remote: int
) -> tuple[DeploymentSpec, ...]:
    entries = doc.entries("deployments", most=MAX_DEPLOYMENTS)
    specs: list[DeploymentSpec] = []
    seen: set[str] = set()
    for index, item in enumerate(entries):
        loc: tuple[str | int, ...] = ("deployments", index)
        entry = doc.validated(_DeploymentEntry, item, loc)
        if entry is None:
            continue
        if entry.name in seen:
            doc.add((*loc, "name"), "name", "appears twice in this file")
        seen.add(entry.name)
        if known is not None:
            doc.check_known(loc, "gpu_nodes", entry.gpu_nodes, known)
            doc.check_known(loc, "egress_nodes", entry.egress_nodes, known)
        try:
            spec = _deployment_spec(entry, env)
        except InvalidSpecError as exc:
            doc.add_domain(loc, exc, _DEPLOYMENT_FIELDS, "deployment")
            continue
        remote = isinstance(spec.deployment.transport_kind(), RemoteNetwork)
        if remote and spec.deployment.replicas > max_remote:
            problem = f"a remote deployment may ask for at most {max_remote:,} replicas"
            doc.add((*loc, "replicas"), "replicas", problem)
        specs.append(spec)
    doc.raise_problems()
    return tuple(specs)


def load_cluster(path: str | Path) -> ClusterFile:
    """Read and validate a cluster file.

    Raises:
        ConfigFileError: the file is unreadable, not YAML, or holds any invalid node.
    """
    with _collector_paused():
        return _cluster(_read(path))


def _cluster(doc: _Document) -> ClusterFile:
    entries = doc.entries("nodes", most=MAX_NODES, at_least_one=True)
    nodes: list[NodeTopology] = []
    egress: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(entries):
        loc: tuple[str | int, ...] = ("nodes", index)
        entry = doc.validated(_NodeEntry, item, loc)
        if entry is None:
            continue
        if entry.id in seen:
            doc.add((*loc, "id"), "id", "appears twice")
        seen.add(entry.id)
        try:
            nodes.append(
                NodeTopology(
                    node_id=entry.id, num_gpus=entry.gpus, is_head=entry.head, labels=entry.labels
                )
            )
        except InvalidSpecError as exc:
            doc.add_domain(loc, exc, _NODE_FIELDS, "node")
        if entry.egress:
            egress.append(entry.id)
    doc.raise_problems()
    return ClusterFile(topology=tuple(nodes), egress_nodes=tuple(egress))


# The file's name of a domain value's field, where they differ.
_DEPLOYMENT_FIELDS = {"api_key": "api_key_env"}
_NODE_FIELDS = {"node_id": "id", "num_gpus": "gpus"}


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a file's values are built.

    A 5 MB file makes half a million values; the collector would run every 700 new containers,
    each time scanning the growing tree (which holds no cycles), and double the load time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _deployment_spec(entry: _DeploymentEntry, env: Mapping[str, str]) -> DeploymentSpec:
    secret = None if entry.api_key_env is None else env.get(entry.api_key_env)
    if secret:
        try:
            secret.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes in the environment: never shown
            msg = f"the value of {entry.api_key_env} is not UTF-8 text (not shown)"
            raise InvalidSpecError(msg, field="api_key_env") from None
    api_key = ApiKey(secret) if secret else None
    deployment = Deployment(
        name=entry.name,
        model=entry.model,
        replicas=entry.replicas,
        gpus=entry.gpus,
        runtime=entry.runtime,
        api_key=api_key,
    )
    constraints = PlacementConstraints(
        gpu_nodes=None if entry.gpu_nodes is None else tuple(entry.gpu_nodes),
        egress_nodes=None if entry.egress_nodes is None else tuple(entry.egress_nodes),
        label_selector=entry.label_selector,
        strategy=entry.strategy,
        egress_strategy=entry.egress_strategy,
        keep_whole=entry.keep_whole,
        movable=entry.movable,
    )
    unset = entry.api_key_env if entry.api_key_env is not None and api_key is None else None
    if unset is not None:
        # The name passed `_env_name`: a variable's name, not a pasted key, so it may be shown.
        logger.info(
            "deployment %s: %s is not set; placing it without an API key", deployment.name, unset
        )
    return DeploymentSpec(deployment=deployment, constraints=constraints, unset_key_env=unset)


# -- one file's problems ----------------------------------------------------------------------


class _Problems:
    """The problems of one file: the first `_MAX_PROBLEMS` in full, the rest counted.

    A file of half a million bad values has as many problems; finding each one's line costs up
    to the size of its mapping, and nobody reads the thousandth.
    """

    def __init__(self) -> None:
        self.found: list[ConfigProblem] = []
        self._more = 0
        self._more_line: int | None = None

    def wanted(self) -> bool:
        """Whether the next problem is shown (or is the first not shown): worth finding its line."""
        return len(self.found) < _MAX_PROBLEMS or self._more == 0

    def add(self, line: int | None, field_name: str | None, problem: str) -> None:
        if len(self.found) < _MAX_PROBLEMS:
            self.found.append(ConfigProblem(line=line, field=field_name, problem=problem))
            return
        if self._more == 0:
            self._more_line = line
        self._more += 1

    def count(self) -> None:
        """One more problem, not shown (`wanted` said no)."""
        self._more += 1

    def all(self) -> tuple[ConfigProblem, ...]:
        """The problems shown, in file order, then how many are not."""
        ordered = sorted(self.found, key=lambda p: 0 if p.line is None else p.line)
        if self._more:
            more = f"and {self._more:,} more problems (not shown; the first is on this line)"
            ordered.append(ConfigProblem(line=self._more_line, field=None, problem=more))
        return tuple(ordered)


@dataclass(slots=True, kw_only=True)
class _Document:
    """A parsed file: its node tree (for lines), its values, and the problems found so far."""

    path: str
    root: yaml.Node | None
    value: object
    problems: _Problems

    def add(self, loc: Sequence[str | int], field_name: str | None, problem: str) -> None:
        if self.problems.wanted():
            self.problems.add(_line_of(self.root, loc), field_name, problem)
        else:
            self.problems.count()

    def raise_problems(self) -> None:
        if self.problems.found:
            raise ConfigFileError(path=self.path, problems=self.problems.all())

    def entries(self, key: str, *, most: int, at_least_one: bool = False) -> list[object]:
        """The list under the one top-level ``key``; problems with the top level are added."""
        items = self._top_level(key)
        if isinstance(items, _Unreadable):
            return []
        if not isinstance(items, list):
            self.add((key,), key, "must be a list")
            return []
        if at_least_one and not items:
            self.add((key,), key, "must have at least 1 item(s)")
        if len(items) > most:
            self.add((key,), key, f"holds {len(items):,} entries; at most {most:,} are allowed")
            return []
        return items

    def _top_level(self, key: str) -> object:
        """The value of the file's only key, ``key``; `_UNREADABLE` when there is none."""
        if self.value is None and not self.problems.found:
            problem = ConfigProblem(line=None, field=None, problem="the file is empty")
            raise ConfigFileError(path=self.path, problems=(problem,))
        if isinstance(self.value, _Unreadable):
            return _UNREADABLE
        if not isinstance(self.value, dict):
            self.add((), None, f"must be a mapping with a '{key}' list")
            return _UNREADABLE
        for other in self.value:
            if other in _FILE_KINDS and other != key and key not in self.value:  # the other kind
                mistaken = (
                    f"is not a known field: this looks like a {_FILE_KINDS[other]} file, where a "
                    f"{_FILE_KINDS[key]} file is wanted"
                )
                self.add((other,), _shown_field(other), mistaken)
            elif other != key:
                self.add((other,), _shown_field(other), "is not a known field")
        if key not in self.value:
            self.add((), key, "is required")
            return _UNREADABLE
        return self.value[key]

    def validated(self, model: type[_M], item: object, loc: tuple[str | int, ...]) -> _M | None:
        """``item`` as a ``model``, or ``None`` with its problems added."""
        if isinstance(item, _Unreadable):
            return None
        if not isinstance(item, dict):
            self.add(loc, str(loc[0]), f"entry {int(loc[1]) + 1} must be a mapping")
            return None
        # Unknown fields are told here, not by the schema: an entry may hold half a million, and
        # only the problems shown are worth a suggestion (or an error value from pydantic).
        # They come after the schema's problems, as the schema would list them.
        fields = model.model_fields
        unknown = [key for key in item if key not in fields]
        known = {key: value for key, value in item.items() if key in fields} if unknown else item
        entry, errors = _validate(model, known)
        for err in errors:
            self.add((*loc, *err["loc"]), _field_name(err["loc"]), _explain(err))
        for key in unknown:
            if self.problems.wanted():
                problem = "is not a known field" + _did_you_mean(key, fields)
                self.add((*loc, key), _shown_field(key), problem)
            else:
                self.problems.count()
        return None if unknown else entry

    def add_domain(
        self,
        loc: tuple[str | int, ...],
        exc: InvalidSpecError,
        names: Mapping[str, str],
        default: str,
    ) -> None:
        """A domain value refused an entry that passed the schema: name its field and line."""
        name = names.get(exc.field, exc.field) if exc.field else None
        self.add((*loc, name) if name else loc, name or default, str(exc))

    def check_known(
        self,
        loc: tuple[str | int, ...],
        name: str,
        nodes: Sequence[str] | None,
        known: frozenset[str],
    ) -> None:
        for index, node in enumerate(nodes or ()):
            if node not in known:
                self.add((*loc, name, index), name, f"unknown node {node[:_SHOWN]!r}")


def _validate(model: type[_M], item: object) -> tuple[_M | None, list[Any]]:
    try:
        return model.model_validate(item), []
    except ValidationError as exc:
        # ``exc`` and ``str(exc)`` show the input, which may be a secret: only its details leave.
        # An unreadable value was reported when it was read: its errors here would repeat that.
        errors = exc.errors(include_url=False)
        return None, [
            {k: v for k, v in err.items() if k != "input"}
            for err in errors
            if not isinstance(err.get("input"), _Unreadable)
        ]


def _field_name(loc: Sequence[str | int]) -> str | None:
    """The entry's field an error is about (a label key is part of the ``labels`` field)."""
    first = next((part for part in loc if isinstance(part, str)), None)
    return None if first is None else _shown_field(first)


_FILE_KINDS = {"deployments": "deployments", "nodes": "cluster"}
"""Each kind of file by its top-level key."""


def _did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` (did you mean replicas?)`` for a field name close to a known one, else ``""``."""
    if not isinstance(name, str) or len(name) > _SHOWN:
        return ""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _shown_field(name: object) -> str:
    """A field name for a problem: as written when it looks like one, else quoted and cut."""
    text = name if isinstance(name, str) else str(name)
    return text if _PLAIN_FIELD.fullmatch(text) else repr(text[:_SHOWN])


def _explain(err: Any) -> str:  # noqa: ANN401 - pydantic's ErrorDetails
    # Never from ``err["input"]``: the input may be a secret.
    ctx = err.get("ctx") or {}
    kind = err["type"]
    of_key = "key " if err["loc"] and err["loc"][-1] == "[key]" else ""
    explanations = {
        "missing": "is required",
        "extra_forbidden": "is not a known field",
        "greater_than_equal": f"must be ≥ {ctx.get('ge')}",
        "less_than_equal": f"must be ≤ {_number(ctx.get('le'))}",
        "int_type": "must be a whole number",
        "bool_type": "must be true or false",
        "string_type": f"{of_key}must be text",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "too_short": f"must have at least {ctx.get('min_length')} item(s)",
        "too_long": f"must have at most {_number(ctx.get('max_length'))} item(s)",
        "string_too_short": "must not be empty",
        "string_too_long": f"{of_key}must be at most {ctx.get('max_length')} characters",
        "enum": f"must be one of {ctx.get('expected')}",
    }
    return explanations.get(kind, str(err["msg"])[:200])


def _number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _line_of(root: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the YAML node at ``loc``, or of its nearest existing parent."""
    node = root
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == part), None)
            if pair is None:
                break
            line = pair[0].start_mark.line + 1
            node = pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


# -- reading and parsing ----------------------------------------------------------------------


def _read(path: str | Path) -> _Document:
    """Read, decode and parse ``path`` once; only a `ConfigFileError` comes out."""
    shown = str(path)
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL character
        reason = getattr(exc, "strerror", None) or str(exc)
        problem = ConfigProblem(line=None, field=None, problem=f"cannot read: {reason}")
        raise ConfigFileError(path=shown, problems=(problem,)) from None
    if len(data) > MAX_FILE_BYTES:
        problem = ConfigProblem(
            line=None, field=None, problem=f"is larger than {MAX_FILE_BYTES:,} bytes"
        )
        raise ConfigFileError(path=shown, problems=(problem,))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start
        problem = ConfigProblem(
            line=data.count(b"\n", 0, bad) + 1,
            field=None,
            problem=f"is not UTF-8 text (byte 0x{data[bad]:02x} cannot be decoded)",
        )
        raise ConfigFileError(path=shown, problems=(problem,)) from None
    builder = _TreeBuilder()
    try:
        builder.build(text)
    except yaml.YAMLError as exc:
        problem = _yaml_problem(exc, data, text)
        builder.problems.add(problem.line, problem.field, problem.problem)
    except _RefusedError as exc:
        builder.problems.add(exc.problem.line, exc.problem.field, exc.problem.problem)
    else:
        return _Document(
            path=shown, root=builder.root, value=builder.value, problems=builder.problems
        )
    raise ConfigFileError(path=shown, problems=builder.problems.all())


def _yaml_problem(exc: yaml.YAMLError, data: bytes, text: str) -> ConfigProblem:
    if isinstance(exc, ReaderError):
        # libyaml counts bytes of the UTF-8 text, PyYAML's reader counts characters.
        if _LOADER is yaml.SafeLoader:
            line = text.count("\n", 0, exc.position) + 1
        else:
            line = data.count(b"\n", 0, exc.position) + 1
        code = f" (#x{exc.character:04x})" if isinstance(exc.character, int) else ""
        return ConfigProblem(line=line, field=None, problem=f"not valid YAML: {exc.reason}{code}")
    mark = getattr(exc, "problem_mark", None)
    reason = getattr(exc, "problem", None) or type(exc).__name__
    # At the end of the file the parser marks the line after the last newline: name the last.
    last = max(1, len(text.splitlines()))  # the parser's line breaks: \r too
    return ConfigProblem(
        line=None if mark is None else min(int(mark.line) + 1, last),
        field=None,
        problem=f"not valid YAML: {reason}",
    )


def _shown_tag(tag: str) -> str:
    short = f"!!{tag.removeprefix(_CORE)}" if tag.startswith(_CORE) else tag
    return repr(short[:_SHOWN])


class _Unreadable:
    """Stands for a scalar that could not be read, already reported where it was read."""

    __slots__ = ()


_UNREADABLE = _Unreadable()
_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "null": "null"}


class _RefusedError(Exception):
    """The file cannot be read further (too deep, too large, ...): one last problem."""

    def __init__(self, problem: ConfigProblem) -> None:
        super().__init__(problem.problem)
        self.problem = problem


_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(f"{_CORE}{kind}" for kind in ("null", "bool", "int", "float", "str"))
_IMPLICIT_TAGS = _SCALAR_TAGS | {f"{_CORE}timestamp"}
_STR_TAG = f"{_CORE}str"
_INT_TAG = f"{_CORE}int"
_NUMBER_TAGS = frozenset({_INT_TAG, f"{_CORE}float"})
_MAX_NUMBER_TEXT = 100
_DECIMAL = re.compile(r"[1-9][0-9]{0,17}|0")
"""A YAML 1.1 decimal integer (a leading 0 means octal) that ``int`` reads directly."""
_SEQ_TAGS = frozenset({None, "!", f"{_CORE}seq"})
_MAP_TAGS = frozenset({None, "!", f"{_CORE}map"})
_MERGE_KEY = "<<"


class _Event(Protocol):
    """What the parser's events carry (libyaml's and PyYAML's alike); each kind has a part."""

    anchor: str | None
    tag: str | None
    value: str
    implicit: tuple[bool, bool]
    style: str | None
    flow_style: bool | None
    start_mark: Any  # yaml.Mark, or libyaml's: both have ``line``
    end_mark: Any


@dataclass(slots=True, kw_only=True)
class _Frame:
    """A list or mapping being built."""

    node: yaml.SequenceNode | yaml.MappingNode
    value: list[object] | dict[str, object]
    anchor: str | None
    size_at_start: int
    height: int = 1
    key: yaml.ScalarNode | None = None
    """In a mapping: the key whose value comes next."""
    drop: bool = False
    """The pending key was refused: its value is read but not kept."""


@dataclass(slots=True, kw_only=True)
class _Anchored:
    node: yaml.Node
    value: object
    size: int
    height: int


class _TreeBuilder:
    """Build nodes (for lines) and Python values from the parser's events, without recursion.

    Anchored values are shared by their aliases, as in PyYAML; an alias counts toward
    `MAX_VALUES` and `MAX_NESTING` as a copy of what it refers to, and may not refer to a node
    that contains it.
    """

    def __init__(self) -> None:
        self.root: yaml.Node | None = None
        self.value: object = None
        self.problems = _Problems()
        self._stack: list[_Frame] = []
        self._anchors: dict[str, _Anchored] = {}
        self._open_anchors: set[str] = set()
        self._size = 0
        self._done = False
        self._loader: Any = None

    def build(self, text: str) -> None:
        """Parse ``text``: one document (or none), into `root` and `value`."""
        self._loader = _LOADER(text)  # PyYAML's own reader checks the characters here
        try:
            self._run()
        finally:
            self._loader.dispose()

    def _run(self) -> None:
        get_event = self._loader.get_event
        on_event: dict[type[Any], Callable[[Any], None]] = {
            yaml.ScalarEvent: self._on_scalar,
            yaml.AliasEvent: self._on_alias,
            yaml.SequenceStartEvent: self._on_sequence_start,
            yaml.MappingStartEvent: self._on_mapping_start,
            yaml.SequenceEndEvent: self._on_end,
            yaml.MappingEndEvent: self._on_end,
            yaml.DocumentStartEvent: self._on_document_start,
            yaml.DocumentEndEvent: self._on_document_end,
        }
        event = get_event()
        while not isinstance(event, yaml.StreamEndEvent):
            handler = on_event.get(type(event))
            if handler is not None:
                handler(event)
            event = get_event()

    # -- events -------------------------------------------------------------------------------

    def _on_document_start(self, event: _Event) -> None:
        if self._done:
            line = event.start_mark.line + 1
            self._refuse(line, "holds more than one YAML document (only one is read)")

    def _on_document_end(self, _event: _Event) -> None:
        self._done = True

    def _on_scalar(self, event: _Event) -> None:
        # The hot path (a file of 5 MB holds half a million scalars): few calls, no allocations
        # beyond the node and the value.
        self._size += 1
        if self._size > MAX_VALUES:
            self._count(0, event.start_mark.line + 1)
        frame = self._stack[-1] if self._stack else None
        mapping = None if frame is None or isinstance(frame.value, list) else frame.value
        if frame is not None and mapping is not None and frame.key is None:
            self._on_key(event, frame, mapping)
            return
        text, tag = event.value, event.tag
        if tag is None or tag == "!":
            tag = self._loader.resolve(yaml.ScalarNode, text, event.implicit)
        elif tag not in _SCALAR_TAGS:
            line = event.start_mark.line + 1
            self._note(line, self._field_here(), f"the tag {_shown_tag(tag)} is not supported")
            tag = _STR_TAG
        node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)
        # Plain ``<<`` and ``=`` resolve to merge and value tags: as values they are text.
        value = self._construct(node) if tag in _IMPLICIT_TAGS and tag != _STR_TAG else text
        if event.anchor is not None:
            self._anchors[event.anchor] = _Anchored(node=node, value=value, size=1, height=0)
        if frame is None:
            self.root, self.value = node, value
        elif isinstance(frame.value, list):
            frame.value.append(value)
            frame.node.value.append(node)
        else:
            key, frame.key = frame.key, None
            if frame.drop or key is None:
                frame.drop = False
            else:
                frame.value[key.value] = value
                frame.node.value.append((key, node))

    def _on_key(self, event: _Event, frame: _Frame, mapping: dict[str, object]) -> None:
        name, tag = event.value, event.tag
        node = yaml.ScalarNode(_STR_TAG, name, event.start_mark, event.end_mark, event.style)
        frame.key = node
        if event.anchor is not None:
            self._anchors[event.anchor] = _Anchored(node=node, value=name, size=1, height=0)
        if tag is None and name not in mapping and name != _MERGE_KEY:
            return  # the usual key
        line = event.start_mark.line + 1
        if tag is not None and tag != "!" and tag not in _SCALAR_TAGS:
            self._note(line, None, f"the tag {_shown_tag(tag)} is not supported")
        self._take_key(frame, node, line, plain=tag is None and event.implicit[0])

    def _on_alias(self, event: _Event) -> None:
        line = event.start_mark.line + 1
        anchor = event.anchor or ""
        found = self._anchors.get(anchor)
        if found is None:
            why = "refers to a value that contains it" if anchor in self._open_anchors else ""
            self._refuse(line, f"the alias *{anchor[:_SHOWN]} {why or 'is not defined'}")
        assert found is not None  # noqa: S101 - `_refuse` raised otherwise
        self._count(found.size, line)
        self._check_depth(len(self._stack) + found.height, line)
        frame = self._stack[-1] if self._stack else None
        if frame is not None and isinstance(frame.value, dict) and frame.key is None:
            if isinstance(found.node, yaml.ScalarNode):
                self._take_key(frame, found.node, line, plain=False)
            else:
                self._take_key(frame, None, line, plain=False)
            return
        self._add(found.node, found.value, found.height)

    def _on_sequence_start(self, event: _Event) -> None:
        self._start(event, yaml.SequenceNode, [], _SEQ_TAGS, "list")

    def _on_mapping_start(self, event: _Event) -> None:
        self._start(event, yaml.MappingNode, {}, _MAP_TAGS, "mapping")

    def _start(
        self,
        event: _Event,
        kind: type[yaml.SequenceNode | yaml.MappingNode],
        value: list[object] | dict[str, object],
        tags: frozenset[str | None],
        what: str,
    ) -> None:
        line = event.start_mark.line + 1
        self._check_depth(len(self._stack) + 1, line)
        self._count(1, line)
        if event.tag not in tags:
            shown = _shown_tag(event.tag or "")
            self._note(line, self._field_here(), f"the tag {shown} is not supported on a {what}")
        default = f"{_CORE}seq" if kind is yaml.SequenceNode else f"{_CORE}map"
        node = kind(default, [], event.start_mark, event.end_mark, event.flow_style)
        if event.anchor is not None:
            # An alias inside refers to this value, even if an earlier one had the same anchor.
            self._anchors.pop(event.anchor, None)
            self._open_anchors.add(event.anchor)
        self._stack.append(
            _Frame(node=node, value=value, anchor=event.anchor, size_at_start=self._size)
        )

    def _on_end(self, event: _Event) -> None:
        frame = self._stack.pop()
        frame.node.end_mark = event.end_mark
        if frame.anchor is not None:
            self._open_anchors.discard(frame.anchor)
            size = self._size - frame.size_at_start
            self._anchors[frame.anchor] = _Anchored(
                node=frame.node, value=frame.value, size=size, height=frame.height
            )
        self._add(frame.node, frame.value, frame.height)

    # -- building -----------------------------------------------------------------------------

    def _add(self, node: yaml.Node, value: object, height: int) -> None:
        """Put a finished value into the list or mapping being built (or make it the root)."""
        if not self._stack:
            self.root, self.value = node, value
            return
        frame = self._stack[-1]
        frame.height = max(frame.height, height + 1)
        if isinstance(frame.value, list):
            frame.value.append(value)
            frame.node.value.append(node)
        elif frame.key is None:  # a list or mapping where a key belongs
            line = node.start_mark.line + 1
            self._take_key(frame, None, line, plain=False)
        else:
            self._put(frame, node, value)

    def _put(self, frame: _Frame, node: yaml.Node, value: object) -> None:
        """Set the value of ``frame``'s pending key (unless the key was refused)."""
        key, frame.key = frame.key, None
        if frame.drop or key is None:
            frame.drop = False
            return
        if isinstance(frame.value, dict):
            frame.value[key.value] = value
            frame.node.value.append((key, node))

    def _take_key(
        self, frame: _Frame, node: yaml.ScalarNode | None, line: int, *, plain: bool
    ) -> None:
        """``node`` is the next key of ``frame``: keys are text, once each per mapping."""
        if node is None:
            self._note(
                line, self._field_here(), "a key must be a plain value, not a list or mapping"
            )
            frame.key = yaml.ScalarNode(_STR_TAG, "", None, None)
            frame.drop = True
            return
        frame.key = node
        name = node.value
        if plain and name == _MERGE_KEY:
            self._note(line, None, "merge keys (<<) are not supported; write the fields out")
            frame.drop = True
        elif name in frame.value:
            frame.drop = True
            if not self.problems.wanted():
                self.problems.count()
                return
            first = next(k for k, _ in frame.node.value if k.value == name).start_mark.line + 1
            self._note(line, _shown_field(name), f"key appears twice (first on line {first})")

    def _construct(self, node: yaml.ScalarNode) -> object:
        text = node.value
        if node.tag == _INT_TAG and _DECIMAL.fullmatch(text):
            return int(text)  # most numbers, without PyYAML's general path
        if node.tag in _NUMBER_TAGS and len(text) > _MAX_NUMBER_TEXT:
            # PyYAML reads 1:2:3... as base 60: its work grows with the square of the length.
            line = node.start_mark.line + 1
            self._note(
                line, self._field_here(), f"is a number of more than {_MAX_NUMBER_TEXT} characters"
            )
            return _UNREADABLE
        constructor = self._loader.yaml_constructors[node.tag]
        try:
            return constructor(self._loader, node)
        # PyYAML's scalar constructors raise these for text their patterns let through, such as
        # a date with month 13, a bool tag on other text, or an integer of more than 4300 digits.
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, yaml.YAMLError):
            kind = node.tag.removeprefix(_CORE)
            if kind == "timestamp":
                return node.value  # it looked like a date but is not one: it is text
            line = node.start_mark.line + 1
            self._note(line, self._field_here(), f"cannot be read as {_KINDS.get(kind, kind)}")
            return _UNREADABLE

    # -- limits and problems ------------------------------------------------------------------

    def _count(self, values: int, line: int) -> None:
        self._size += values
        if self._size > MAX_VALUES:
            self._refuse(
                line,
                f"the file holds more than {MAX_VALUES:,} values here (each alias counts as a "
                "copy of what it refers to)",
            )

    def _check_depth(self, depth: int, line: int) -> None:
        if depth > MAX_NESTING:
            self._refuse(line, f"nested more than {MAX_NESTING} levels")

    def _field_here(self) -> str | None:
        for frame in reversed(self._stack):
            if frame.key is not None and frame.key.value:
                return _shown_field(frame.key.value)
        return None

    def _note(self, line: int, field_name: str | None, problem: str) -> None:
        self.problems.add(line, field_name, problem)

    def _refuse(self, line: int, problem: str) -> None:
        raise _RefusedError(ConfigProblem(line=line, field=self._field_here(), problem=problem))
