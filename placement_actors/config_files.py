"""Deployment and cluster YAML files, validated, with errors that name the file, line and field.

``deployments.yaml``::

    deployments:
      - name: llama-8b                 # letters, digits, '.', '_', '-'
        model: meta-llama/Llama-3.1-8B-Instruct
        replicas: 2                    # default 1
        gpus: 1                        # GPUs per replica (tensor-parallel size), local only
        runtime: vllm                  # optional; inferred from the model name
        strategy: spread               # pack (default) or spread
        gpu_nodes: [gpu-a, gpu-b]      # optional: only these GPU nodes
      - name: gpt
        model: gpt-4o
        api_key_env: OPENAI_API_KEY    # the key is read from this variable, never from the file
        egress_nodes: [cpu-1]          # optional: only these egress nodes

``cluster.yaml``::

    nodes:
      - id: gpu-a
        gpus: 8
        head: false                    # default false
        egress: false                  # default false: may it reach remote providers?
        labels: {zone: a}

A file with any error yields nothing: every problem is reported in one `ConfigFileError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from placement_actors.domain.constraints import GpuStrategy, PlacementConstraints
from placement_actors.domain.deployments import ApiKey, Deployment, RuntimeKind
from placement_actors.domain.errors import ConfigFileError, ConfigProblem, InvalidSpecError
from placement_actors.domain.topology import NodeTopology

__all__ = ["ClusterFile", "DeploymentSpec", "load_cluster", "load_deployments"]

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DeploymentEntry(_Entry):
    name: str
    model: str
    replicas: StrictInt = Field(default=1, ge=1)
    gpus: StrictInt | None = Field(default=None, ge=1)
    runtime: RuntimeKind | None = None
    api_key_env: str | None = Field(default=None, min_length=1)
    strategy: GpuStrategy = GpuStrategy.PACK
    gpu_nodes: list[str] | None = None
    egress_nodes: list[str] | None = None


class _DeploymentsFile(_Entry):
    deployments: list[_DeploymentEntry]


class _NodeEntry(_Entry):
    id: str = Field(min_length=1)
    gpus: StrictInt = Field(default=0, ge=0)
    head: StrictBool = False
    egress: StrictBool = False
    labels: dict[str, str] = Field(default_factory=dict)


class _ClusterFile(_Entry):
    nodes: list[_NodeEntry] = Field(min_length=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentSpec:
    """One entry of a deployments file: the deployment and how it may be placed."""

    deployment: Deployment
    constraints: PlacementConstraints


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterFile:
    """A cluster file: the nodes, and which of them have egress."""

    topology: tuple[NodeTopology, ...]
    egress_nodes: tuple[str, ...]


def load_deployments(
    path: str | Path, *, environ: Mapping[str, str] | None = None
) -> tuple[DeploymentSpec, ...]:
    """Read and validate a deployments file.

    Args:
        path: the YAML file.
        environ: where ``api_key_env`` names are looked up; the process environment by default.
            A named variable that is unset leaves the deployment without a key (logged at
            INFO): placement needs only the key's identity, to group deployments that share it.

    Raises:
        ConfigFileError: the file is unreadable, not YAML, or holds any invalid entry.
    """
    env = os.environ if environ is None else environ
    doc, root = _read(path)
    parsed = _validate(_DeploymentsFile, doc, root, path)
    specs: list[DeploymentSpec] = []
    problems: list[ConfigProblem] = []
    seen: set[str] = set()
    for index, entry in enumerate(parsed.deployments):
        loc: tuple[str | int, ...] = ("deployments", index)
        if entry.name in seen:
            problems.append(_problem(root, (*loc, "name"), "name", "appears twice in this file"))
            continue
        seen.add(entry.name)
        try:
            specs.append(_deployment_spec(entry, env))
        except InvalidSpecError as exc:
            field = exc.field or "deployment"
            problems.append(_problem(root, (*loc, field), field, str(exc)))
    if problems:
        raise ConfigFileError(path=str(path), problems=tuple(problems))
    return tuple(specs)


def load_cluster(path: str | Path) -> ClusterFile:
    """Read and validate a cluster file.

    Raises:
        ConfigFileError: the file is unreadable, not YAML, or holds any invalid node.
    """
    doc, root = _read(path)
    parsed = _validate(_ClusterFile, doc, root, path)
    problems: list[ConfigProblem] = []
    seen: set[str] = set()
    for index, node in enumerate(parsed.nodes):
        if node.id in seen:
            problems.append(_problem(root, ("nodes", index, "id"), "id", "appears twice"))
        seen.add(node.id)
    if problems:
        raise ConfigFileError(path=str(path), problems=tuple(problems))
    return ClusterFile(
        topology=tuple(
            NodeTopology(node_id=n.id, num_gpus=n.gpus, is_head=n.head, labels=n.labels)
            for n in parsed.nodes
        ),
        egress_nodes=tuple(n.id for n in parsed.nodes if n.egress),
    )


def _deployment_spec(entry: _DeploymentEntry, env: Mapping[str, str]) -> DeploymentSpec:
    api_key = None
    if entry.api_key_env is not None:
        secret = env.get(entry.api_key_env)
        if secret:
            api_key = ApiKey(secret)
        else:
            logger.info(
                "deployment %s: %s is not set; placing it without an API key",
                entry.name,
                entry.api_key_env,
            )
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
        strategy=entry.strategy,
    )
    return DeploymentSpec(deployment=deployment, constraints=constraints)


def _read(path: str | Path) -> tuple[Any, yaml.Node | None]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problem = ConfigProblem(line=None, field=None, problem=f"cannot read: {exc.strerror}")
        raise ConfigFileError(path=str(path), problems=(problem,)) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        problem = ConfigProblem(line=line, field=None, problem=f"not valid YAML: {reason}")
        raise ConfigFileError(path=str(path), problems=(problem,)) from exc
    return doc, root


def _validate(
    model: type[_M],
    doc: Any,  # noqa: ANN401 - raw YAML
    root: yaml.Node | None,
    path: str | Path,
) -> _M:
    if doc is None:
        problem = ConfigProblem(line=None, field=None, problem="the file is empty")
        raise ConfigFileError(path=str(path), problems=(problem,))
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = tuple(
            _problem(root, tuple(err["loc"]), _field_name(err["loc"]), _explain(err))
            for err in exc.errors()
        )
        raise ConfigFileError(path=str(path), problems=problems) from None


def _field_name(loc: Sequence[str | int]) -> str | None:
    names = [part for part in loc if isinstance(part, str)]
    return names[-1] if names else None


def _explain(err: Any) -> str:  # noqa: ANN401 - pydantic's ErrorDetails
    ctx = err.get("ctx") or {}
    kind = err["type"]
    explanations = {
        "missing": "is required",
        "extra_forbidden": "is not a known field",
        "greater_than_equal": f"must be ≥ {ctx.get('ge')}",
        "int_type": "must be a whole number",
        "bool_type": "must be true or false",
        "string_type": "must be text",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "too_short": f"must have at least {ctx.get('min_length')} item(s)",
        "string_too_short": "must not be empty",
        "enum": f"must be one of {ctx.get('expected')}",
    }
    return explanations.get(kind, str(err["msg"]))


def _problem(
    root: yaml.Node | None, loc: Sequence[str | int], field: str | None, problem: str
) -> ConfigProblem:
    return ConfigProblem(line=_line_of(root, loc), field=field, problem=problem)


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
