import pickle

import pytest

from placement_actors import (
    ApiKey,
    CustomRuntime,
    Deployment,
    InvalidSpecError,
    LocalGpu,
    ProviderKind,
    RemoteNetwork,
    RuntimeKind,
    infer_runtime,
)
from placement_actors.domain.deployments import group_name, replica_of_group


@pytest.mark.parametrize(
    ("model", "runtime"),
    [
        ("gpt-4o", RuntimeKind.OPENAI),
        ("gpt-4-turbo", RuntimeKind.OPENAI),
        ("gpt-3.5-turbo", RuntimeKind.OPENAI),
        ("o1-mini", RuntimeKind.OPENAI),
        ("o3-mini", RuntimeKind.OPENAI),
        ("o1", RuntimeKind.OPENAI),
        ("chatgpt-4o-latest", RuntimeKind.OPENAI),
        ("GPT-4o", RuntimeKind.OPENAI),  # case is ignored
        ("claude-sonnet-4-5", RuntimeKind.ANTHROPIC),
        ("anthropic/claude-3-haiku", RuntimeKind.ANTHROPIC),
        ("gemini-2.0-flash", RuntimeKind.GEMINI),
        ("google/gemini-pro", RuntimeKind.GEMINI),
        ("litellm/gpt-4o", RuntimeKind.LITELLM),  # LiteLLM wins over the embedded provider
        ("claude-3-via-litellm", RuntimeKind.LITELLM),
        ("meta-llama/Llama-3.1-8B-Instruct", RuntimeKind.VLLM),
        ("o1x", RuntimeKind.VLLM),  # not o1 nor o1-*
        ("gpt-2", RuntimeKind.VLLM),  # an open model, served locally
    ],
    ids=lambda v: v if isinstance(v, str) else v.value,
)
def test_infer_runtime_maps_model_names_to_runtimes(model: str, runtime: RuntimeKind) -> None:
    assert infer_runtime(model) is runtime


def test_explicit_runtime_wins_over_the_model_name() -> None:
    deployment = Deployment(name="d", model="gpt-4o", runtime=RuntimeKind.VLLM, gpus=2)
    assert deployment.effective_runtime() is RuntimeKind.VLLM
    assert deployment.transport_kind() == LocalGpu()


@pytest.mark.parametrize(
    ("runtime", "transport"),
    [
        (RuntimeKind.VLLM, LocalGpu()),
        (RuntimeKind.SGLANG, LocalGpu()),
        (RuntimeKind.TENSORRT_LLM, LocalGpu()),
        (RuntimeKind.OPENAI, RemoteNetwork(ProviderKind.OPENAI)),
        (RuntimeKind.ANTHROPIC, RemoteNetwork(ProviderKind.ANTHROPIC)),
        (RuntimeKind.GEMINI, RemoteNetwork(ProviderKind.GEMINI)),
        (RuntimeKind.LITELLM, RemoteNetwork(ProviderKind.LITELLM)),
        (CustomRuntime(name="my-engine"), LocalGpu()),
        (
            CustomRuntime(name="my-api", provider=ProviderKind.OTHER),
            RemoteNetwork(ProviderKind.OTHER),
        ),
    ],
    ids=str,
)
def test_transport_kind_follows_the_runtime(runtime: object, transport: object) -> None:
    deployment = Deployment(name="d", model="m", runtime=runtime)  # type: ignore[arg-type]
    assert deployment.transport_kind() == transport


def test_local_deployment_defaults_to_one_gpu_per_replica() -> None:
    assert Deployment(name="d", model="m").gpus_per_replica == 1
    assert Deployment(name="d", model="m", gpus=4).gpus_per_replica == 4


def test_remote_deployment_holds_no_gpus() -> None:
    assert Deployment(name="d", model="gpt-4o").gpus_per_replica == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "", "model": "m"}, "name"),
        ({"name": "has space", "model": "m"}, "name"),
        ({"name": "a/b", "model": "m"}, "name"),
        ({"name": "-lead", "model": "m"}, "name"),
        ({"name": 7, "model": "m"}, "name"),
        ({"name": "d", "model": " "}, "model"),
        ({"name": "d", "model": "m", "replicas": 0}, "replicas"),
        ({"name": "d", "model": "m", "replicas": True}, "replicas"),
        ({"name": "d", "model": "m", "replicas": 1.5}, "replicas"),
        ({"name": "d", "model": "m", "gpus": 0}, "gpus"),
        ({"name": "d", "model": "m", "gpus": -2}, "gpus"),
        ({"name": "d", "model": "gpt-4o", "gpus": 1}, "gpus"),  # remote deployments hold no GPUs
        ({"name": "d", "model": "m", "runtime": "vllm"}, "runtime"),
        ({"name": "d", "model": "gpt-4o", "api_key": "sk-plain"}, "api_key"),
    ],
    ids=[
        "empty-name",
        "space-in-name",
        "slash-in-name",
        "leading-dash",
        "name-not-str",
        "blank-model",
        "zero-replicas",
        "bool-replicas",
        "float-replicas",
        "zero-gpus",
        "negative-gpus",
        "gpus-on-remote",
        "runtime-as-string",
        "bare-string-key",
    ],
)
def test_invalid_deployment_raises_invalid_spec_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        Deployment(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


def test_api_key_shows_only_a_fingerprint() -> None:
    key = ApiKey("sk-very-secret-value")
    deployment = Deployment(name="d", model="gpt-4o", api_key=key)
    for shown in (repr(key), str(key), repr(deployment), str(deployment), f"{key}"):
        assert "sk-very-secret-value" not in shown
    assert key.fingerprint in repr(key)
    assert len(key.fingerprint) == 8


def test_api_keys_are_equal_and_hashable_by_value() -> None:
    assert ApiKey("a") == ApiKey("a")
    assert ApiKey("a") != ApiKey("b")
    assert len({ApiKey("a"), ApiKey("a"), ApiKey("b")}) == 2
    assert ApiKey("a").fingerprint != ApiKey("b").fingerprint


def test_api_key_survives_pickling_and_reveals_its_secret_on_request() -> None:
    key = pickle.loads(pickle.dumps(ApiKey("sk-1")))  # noqa: S301 - our own bytes
    assert key == ApiKey("sk-1")
    assert key.reveal() == "sk-1"


def test_empty_api_key_is_rejected() -> None:
    with pytest.raises(InvalidSpecError):
        ApiKey("")


def test_deployment_is_frozen() -> None:
    deployment = Deployment(name="d", model="m")
    with pytest.raises(AttributeError):
        deployment.replicas = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "found"),
    [
        ("placement-actors:llama:r0", ("llama", 0)),
        ("placement-actors:llama-3.1_8b:r12", ("llama-3.1_8b", 12)),
        ("placement-actors:a:rb:r3", None),  # ':' is never in a deployment name
        ("placement-actors:llama:r01", None),  # group_name writes no leading zero
        ("placement-actors:llama:r", None),
        ("placement-actors::r0", None),
        ("placement-actors:not a name:r0", None),
        ("placement-actors:llama:r1234567890", None),  # more digits than a replica index has
        ("placement-actors:llama:r٣", None),  # a digit, but not an ASCII one
        ("someone-elses:r0", None),
        (7, None),
    ],
)
def test_a_group_name_is_read_back_only_as_group_name_writes_it(
    name: object, found: object
) -> None:
    assert replica_of_group(name) == found
    if found is not None:
        assert group_name(*found) == name
