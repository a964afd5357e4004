"""What is being placed: a deployment, the runtime that serves it and how it reaches its model."""

from __future__ import annotations

import enum
import functools
import hashlib
import re
from dataclasses import dataclass

from placement_actors.domain.checked import Checked, mark_checked
from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.limits import MAX_TEXT

__all__ = [
    "GROUP_NAME_ROOT",
    "ApiKey",
    "CustomRuntime",
    "Deployment",
    "LocalGpu",
    "ProviderKind",
    "RemoteNetwork",
    "Runtime",
    "RuntimeKind",
    "TransportKind",
    "deployment_name_problem",
    "group_name",
    "group_prefix",
    "infer_runtime",
    "is_deployment_name",
    "replica_of_group",
]

GROUP_NAME_ROOT = "placement-actors:"
"""Every placement group the service creates is named ``placement-actors:<deployment>:r<index>``."""

# Names become parts of Ray placement-group names and CLI arguments: keep them to a safe alphabet.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ProviderKind(enum.Enum):
    """A remote model provider reached over the network."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    LITELLM = "litellm"
    OTHER = "other"


class RuntimeKind(enum.Enum):
    """The engine that serves a deployment: a local GPU engine or a remote provider's API."""

    VLLM = "vllm"
    SGLANG = "sglang"
    TENSORRT_LLM = "tensorrt_llm"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    LITELLM = "litellm"

    @property
    def provider(self) -> ProviderKind | None:
        """The remote provider this runtime calls, or ``None`` for a local GPU engine."""
        return _RUNTIME_PROVIDERS.get(self)


_RUNTIME_PROVIDERS = {
    RuntimeKind.OPENAI: ProviderKind.OPENAI,
    RuntimeKind.ANTHROPIC: ProviderKind.ANTHROPIC,
    RuntimeKind.GEMINI: ProviderKind.GEMINI,
    RuntimeKind.LITELLM: ProviderKind.LITELLM,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomRuntime(Checked):
    """A runtime this library has no name for.

    Attributes:
        name: what the runtime calls itself (for people; placement ignores it).
        provider: the remote provider it calls, or ``None`` when it is a local GPU engine.
    """

    name: str
    provider: ProviderKind | None = None

    def __post_init__(self) -> None:
        """Reject an empty name or a provider that is not a `ProviderKind`."""
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > MAX_TEXT:
            msg = f"a custom runtime needs a name of 1-{MAX_TEXT} characters"
            raise InvalidSpecError(msg, field="runtime")
        if self.provider is not None and not isinstance(self.provider, ProviderKind):
            msg = (
                "custom runtime provider must be a ProviderKind, "
                f"got {type(self.provider).__name__}"
            )
            raise InvalidSpecError(msg, field="runtime")
        mark_checked(self)


Runtime = RuntimeKind | CustomRuntime


@dataclass(frozen=True, slots=True)
class LocalGpu:
    """The deployment runs an engine on this cluster's GPUs."""


@dataclass(frozen=True, slots=True)
class RemoteNetwork:
    """The deployment calls a remote provider's API and needs a node with egress to it."""

    provider: ProviderKind


TransportKind = LocalGpu | RemoteNetwork

_LOCAL_GPU = LocalGpu()
_REMOTE = {provider: RemoteNetwork(provider) for provider in ProviderKind}
"""Frozen values, shared: asking a deployment for its transport builds nothing."""


class ApiKey(Checked):
    """A secret API key: equal and hashable by value, but never shown.

    ``repr``/``str`` give a short fingerprint only (the first 8 hex digits of its SHA-256),
    enough to tell two keys apart in a log without revealing either. `reveal` hands the secret to
    the code that must send it.
    """

    __slots__ = ("_fingerprint", "_secret")
    _fingerprint: str
    _secret: str

    def __init__(self, secret: str) -> None:
        """Wrap ``secret``; it must be a non-empty string."""
        if not isinstance(secret, str) or not secret:
            msg = "an API key must be a non-empty string"
            raise InvalidSpecError(msg, field="api_key")
        object.__setattr__(self, "_secret", secret)
        object.__setattr__(self, "_fingerprint", hashlib.sha256(secret.encode()).hexdigest()[:8])
        mark_checked(self)

    def __setattr__(self, name: str, value: object) -> None:
        """Refuse: a key is a value, shared by every message that holds it."""
        msg = "ApiKey is immutable"
        raise AttributeError(msg)

    def __delattr__(self, name: str) -> None:
        """Refuse, as `__setattr__` does."""
        msg = "ApiKey is immutable"
        raise AttributeError(msg)

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag that tells keys apart."""
        return self._fingerprint

    def reveal(self) -> str:
        """The secret itself, for the code that authenticates with it. Never log it."""
        return self._secret

    def __repr__(self) -> str:
        """Show the fingerprint only."""
        return f"ApiKey(sha256:{self._fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        """Keys are equal when their secrets are."""
        if not isinstance(other, ApiKey):
            return NotImplemented
        return self._secret == other._secret

    def __hash__(self) -> int:
        """Hash by value, so keys can group deployments."""
        return hash(("ApiKey", self._secret))

    def __reduce__(self) -> tuple[type[ApiKey], tuple[str]]:
        """Pickle by value (actors and Ray move keys between processes)."""
        return (ApiKey, (self._secret,))


@functools.lru_cache(maxsize=4096)  # a pure function of a short string, asked on every Place
def infer_runtime(model: str) -> RuntimeKind:
    """Guess the runtime from a model name.

    ``gpt-4*``, ``gpt-3.5*``, ``o1``/``o1-*``, ``o3``/``o3-*`` and ``chatgpt-*`` are OpenAI;
    ``claude-*`` and ``anthropic/*`` are Anthropic; ``gemini-*`` and ``google/gemini*`` are Gemini;
    ``litellm/*`` or a name containing ``via-litellm`` is LiteLLM (checked first, since a LiteLLM
    name usually embeds another provider's); anything else is a local vLLM model. Case is ignored.
    """
    name = model.strip().lower()
    if name.startswith("litellm/") or "via-litellm" in name:
        return RuntimeKind.LITELLM
    if name.startswith(("gpt-4", "gpt-3.5", "o1-", "o3-", "chatgpt-")) or name in {"o1", "o3"}:
        return RuntimeKind.OPENAI
    if name.startswith(("claude-", "anthropic/")):
        return RuntimeKind.ANTHROPIC
    if name.startswith(("gemini-", "google/gemini")):
        return RuntimeKind.GEMINI
    return RuntimeKind.VLLM


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment(Checked):
    """A model to serve, as a number of identical replicas.

    Attributes:
        name: unique key of the deployment in the service (letters, digits, ``.``, ``_``, ``-``).
        model: the model identifier (a Hugging Face id, a provider's model name, ...).
        replicas: how many replicas to place, at least 1.
        gpus: GPUs per replica (the tensor-parallel size) for a local deployment; ``None`` means 1.
            Must stay ``None`` for a remote one.
        runtime: the serving runtime; ``None`` infers it from the model name (`infer_runtime`).
        api_key: the key a remote deployment authenticates with; deployments with the same provider
            and key are kept together so they can share a rate limiter.
    """

    name: str
    model: str
    replicas: int = 1
    gpus: int | None = None
    runtime: Runtime | None = None
    api_key: ApiKey | None = None

    def __post_init__(self) -> None:
        """Check every field; a `Deployment` that exists is valid."""
        problem = deployment_name_problem(self.name)
        if problem is not None:
            raise InvalidSpecError(problem, field="name")
        if not isinstance(self.model, str) or not self.model.strip() or len(self.model) > MAX_TEXT:
            msg = f"deployment {self.name}: model must be a string of 1-{MAX_TEXT} characters"
            raise InvalidSpecError(msg, field="model")
        if not _is_int(self.replicas) or self.replicas < 1:
            shown = _shown(self.replicas)
            msg = f"deployment {self.name}: replicas must be an integer >= 1, got {shown}"
            raise InvalidSpecError(msg, field="replicas")
        if self.runtime is not None and not isinstance(self.runtime, RuntimeKind | CustomRuntime):
            msg = f"deployment {self.name}: runtime must be a RuntimeKind or CustomRuntime"
            raise InvalidSpecError(msg, field="runtime")
        if self.api_key is not None and not isinstance(self.api_key, ApiKey):
            msg = f"deployment {self.name}: api_key must be an ApiKey (wrap the secret in ApiKey)"
            raise InvalidSpecError(msg, field="api_key")
        self._check_gpus()
        mark_checked(self)

    def _check_gpus(self) -> None:
        transport = self.transport_kind()
        if isinstance(transport, RemoteNetwork):
            if self.gpus is not None:
                msg = (
                    f"deployment {self.name}: gpus is for local deployments, but {self.model!r} "
                    f"is served remotely by {transport.provider.value}"
                )
                raise InvalidSpecError(msg, field="gpus")
        elif self.gpus is not None and (not _is_int(self.gpus) or self.gpus < 1):
            msg = f"deployment {self.name}: gpus must be an integer >= 1, got {_shown(self.gpus)}"
            raise InvalidSpecError(msg, field="gpus")

    def effective_runtime(self) -> Runtime:
        """The explicit runtime, else the one inferred from the model name."""
        return self.runtime if self.runtime is not None else infer_runtime(self.model)

    def transport_kind(self) -> TransportKind:
        """`LocalGpu` for a GPU engine on this cluster, `RemoteNetwork` for a provider's API."""
        provider = self.effective_runtime().provider
        return _LOCAL_GPU if provider is None else _REMOTE[provider]

    @property
    def gpus_per_replica(self) -> int:
        """GPUs each replica holds: ``gpus`` (default 1) when local, 0 when remote."""
        if isinstance(self.transport_kind(), RemoteNetwork):
            return 0
        return 1 if self.gpus is None else self.gpus


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    """A value for an error message: small integers as they are, anything else by its type."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) < 10**12 else "a huge integer"
    return type(value).__name__


def deployment_name_problem(value: object) -> str | None:
    """Why ``value`` cannot name a deployment, or ``None`` if it can."""
    if is_deployment_name(value):
        return None
    shown = repr(value[:40]) if isinstance(value, str) else "a non-string"
    return (
        f"deployment name {shown} must be 1-128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


def is_deployment_name(value: object) -> bool:
    """Whether ``value`` could name a deployment (letters, digits, ``.``, ``_``, ``-``)."""
    return (
        isinstance(value, str)
        and len(value) <= 128  # noqa: PLR2004 - the pattern's own limit, checked before matching
        and _NAME_PATTERN.fullmatch(value) is not None
    )


def group_prefix(deployment: str) -> str:
    """The name prefix of every placement group of ``deployment``.

    Deployment names cannot contain ``:``, so the prefix of ``dep-1`` (``placement-actors:dep-1:``)
    never matches a group of ``dep-10``.
    """
    if not is_deployment_name(deployment):
        msg = "not a deployment name"
        raise InvalidSpecError(msg, field="name")
    return f"{GROUP_NAME_ROOT}{deployment}:"


def group_name(deployment: str, replica_index: int) -> str:
    """The placement-group name of one replica of ``deployment``."""
    return f"{group_prefix(deployment)}r{replica_index}"


_INDEX_DIGITS = 9
"""The most digits of a replica index in a group name read back (more: no group of ours)."""


def replica_of_group(name: object) -> tuple[str, int] | None:
    """The deployment and replica index a `group_name` names; ``None`` for any other name."""
    if not isinstance(name, str) or not name.startswith(GROUP_NAME_ROOT):
        return None
    deployment, _, index = name[len(GROUP_NAME_ROOT) :].rpartition(":r")
    if not (
        is_deployment_name(deployment)
        and index.isascii()
        and index.isdecimal()
        and len(index) <= _INDEX_DIGITS
        and str(int(index)) == index  # as `group_name` writes it: no leading zero
    ):
        return None
    return deployment, int(index)
