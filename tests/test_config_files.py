from pathlib import Path

import pytest

from placement_actors import ApiKey, ConfigFileError, GpuStrategy, InvalidSpecError, RuntimeKind
from placement_actors.config_files import load_cluster, load_deployments

EXAMPLES = Path(__file__).parent.parent / "examples"


def write(tmp_path: Path, text: str, name: str = "deployments.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_files_load() -> None:
    specs = load_deployments(EXAMPLES / "deployments.yaml", environ={})
    cluster = load_cluster(EXAMPLES / "cluster.yaml")
    assert len(specs) == 8
    assert {n.node_id for n in cluster.topology} >= set(cluster.egress_nodes)


def test_a_deployment_entry_becomes_a_deployment_and_constraints(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
deployments:
  - name: llama
    model: meta-llama/Llama-3.1-8B
    replicas: 2
    gpus: 4
    runtime: sglang
    strategy: spread
    gpu_nodes: [a, b]
""",
    )
    (spec,) = load_deployments(path, environ={})
    assert (spec.deployment.replicas, spec.deployment.gpus) == (2, 4)
    assert spec.deployment.runtime is RuntimeKind.SGLANG
    assert spec.constraints.strategy is GpuStrategy.SPREAD
    assert spec.constraints.gpu_nodes == ("a", "b")


def test_api_keys_come_from_the_named_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "deployments:\n  - {name: g, model: gpt-4o, api_key_env: MY_KEY}\n")
    (spec,) = load_deployments(path, environ={"MY_KEY": "sk-from-env"})
    assert spec.deployment.api_key == ApiKey("sk-from-env")
    (unset,) = load_deployments(path, environ={})
    assert unset.deployment.api_key is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "deployments:\n  - name: a\n    model: m\n    replicas: 0\n",
            "deployments.yaml:4: replicas: must be ≥ 1",
        ),
        (
            "deployments:\n  - name: a\n    model: m\n  - name: b\n    gpus: two\n    model: m\n",
            "deployments.yaml:5: gpus: must be a whole number",
        ),
        ("deployments:\n  - name: a\n", "deployments.yaml:2: model: is required"),
        (
            "deployments:\n  - name: a\n    model: m\n    replica: 2\n",
            "deployments.yaml:4: replica: is not a known field",
        ),
        (
            "deployments:\n  - name: a\n    model: gpt-4o\n    gpus: 2\n",
            "deployments.yaml:4: gpus: deployment a: gpus is for local deployments",
        ),
        (
            "deployments:\n  - {name: a, model: m}\n  - {name: a, model: m}\n",
            "deployments.yaml:3: name: appears twice in this file",
        ),
        ("deployments: [\n", "deployments.yaml:2: not valid YAML"),
        ("", "deployments.yaml: the file is empty"),
    ],
    ids=[
        "replicas-below-one",
        "gpus-not-a-number",
        "model-missing",
        "unknown-field",
        "gpus-on-remote",
        "duplicate-name",
        "broken-yaml",
        "empty-file",
    ],
)
def test_invalid_files_name_the_file_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert str(caught.value).replace(str(tmp_path) + "/", "").startswith(expected)
    assert isinstance(caught.value, InvalidSpecError)


def test_every_problem_in_a_file_is_reported_and_nothing_is_returned(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "deployments:\n  - {name: a, model: m, replicas: 0}\n  - {name: b, model: m, gpus: 0}\n",
    )
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert [(p.line, p.field) for p in caught.value.problems] == [(2, "replicas"), (3, "gpus")]


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_deployments(tmp_path / "nope.yaml")


def test_a_cluster_file_gives_topology_and_egress_nodes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nodes:\n  - {id: h, head: true, egress: true}\n  - {id: g, gpus: 8, labels: {zone: a}}\n",
        "cluster.yaml",
    )
    cluster = load_cluster(path)
    head, gpu = cluster.topology
    assert (head.is_head, head.num_gpus, gpu.num_gpus, gpu.labels["zone"]) == (True, 0, 8, "a")
    assert cluster.egress_nodes == ("h",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodes:\n  - {id: a, gpus: -1}\n", "cluster.yaml:2: gpus: must be ≥ 0"),
        ("nodes:\n  - {id: a}\n  - {id: a}\n", "cluster.yaml:3: id: appears twice"),
        ("nodes: []\n", "cluster.yaml:1: nodes: must have at least 1 item(s)"),
        ("nodes:\n  - {id: a, head: maybe}\n", "cluster.yaml:2: head: must be true or false"),
    ],
    ids=["negative-gpus", "duplicate-id", "no-nodes", "head-not-bool"],
)
def test_invalid_cluster_files_name_the_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text, "cluster.yaml")
    with pytest.raises(ConfigFileError) as caught:
        load_cluster(path)
    assert str(caught.value).replace(str(tmp_path) + "/", "") == expected
