import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import yaml

from placement_actors import (
    ApiKey,
    ConfigFileError,
    GpuStrategy,
    InvalidSpecError,
    RuntimeKind,
    config_files,
)
from placement_actors.config_files import load_cluster, load_deployments
from placement_actors.domain.constraints import EgressStrategy

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
    label_selector: {zone: "in(x,y)", gpu-type: "!T4"}
    keep_whole: true
    movable: true
""",
    )
    (spec,) = load_deployments(path, environ={})
    assert spec.constraints.keep_whole
    assert spec.constraints.movable
    assert spec.constraints.label_selector == {"zone": "in(x,y)", "gpu-type": "!T4"}
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
        (
            "deployments:\n  - name: a\n    model: m\n    movable: maybe\n",
            "deployments.yaml:4: movable: must be true or false",
        ),
        (
            "deployments:\n  - name: a\n    model: m\n    label_selector: {zone: 'in(a'}\n",
            "deployments.yaml:4: label_selector: label_selector zone: 'in(a' is not a value",
        ),
        ("deployments: [\n", "deployments.yaml:1: not valid YAML"),  # the last line, not past it
        ("", "deployments.yaml: the file is empty"),
    ],
    ids=[
        "replicas-below-one",
        "gpus-not-a-number",
        "model-missing",
        "unknown-field",
        "gpus-on-remote",
        "duplicate-name",
        "movable-not-a-bool",
        "malformed-label-selector",
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


def test_a_bad_name_is_reported_with_the_other_bad_fields_of_its_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "deployments:\n  - name: bad name\n    model: m\n    gpus: -1\n    strategy: sprad\n",
    )
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    problems = [(p.line, p.field) for p in caught.value.problems]
    assert problems == [(2, "name"), (4, "gpus"), (5, "strategy")]
    assert "must be 1-128 letters" in caught.value.problems[0].problem


def test_a_misspelt_field_names_the_field_it_is_close_to(tmp_path: Path) -> None:
    path = write(
        tmp_path, "deployments:\n  - {name: a, model: m, replica: 2, stratgy: pack, colour: red}\n"
    )
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert {p.field: p.problem for p in caught.value.problems} == {
        "replica": "is not a known field (did you mean replicas?)",
        "stratgy": "is not a known field (did you mean strategy?)",
        "colour": "is not a known field",
    }


def test_a_cluster_file_given_for_a_deployments_file_says_so_and_the_other_way_round(
    tmp_path: Path,
) -> None:
    cluster = write(tmp_path, "nodes:\n  - {id: a, gpus: 8}\n", name="cluster.yaml")
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(cluster, environ={})
    assert "this looks like a cluster file, where a deployments file is wanted" in str(caught.value)
    deployments = write(tmp_path, "deployments:\n  - {name: a, model: m}\n")
    with pytest.raises(ConfigFileError) as caught:
        load_cluster(deployments)
    assert "this looks like a deployments file, where a cluster file is wanted" in str(caught.value)


def test_a_deployments_file_with_a_stray_nodes_key_is_not_called_a_cluster_file(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "deployments:\n  - {name: a, model: m}\nnodes: []\n")
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert [(p.field, p.problem) for p in caught.value.problems] == [
        ("nodes", "is not a known field")
    ]


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


# -- what YAML would let through silently --------------------------------------------------------


def problems_of(caught: pytest.ExceptionInfo[ConfigFileError], tmp_path: Path) -> list[str]:
    return str(caught.value).replace(str(tmp_path) + "/", "").splitlines()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "deployments:\n  - {name: a, model: m}\ndeployments:\n  - {name: b, model: m}\n",
            "deployments.yaml:3: deployments: key appears twice (first on line 1)",
        ),
        (
            "deployments:\n  - name: a\n    model: m\n    replicas: 2\n    replicas: 3\n",
            "deployments.yaml:5: replicas: key appears twice (first on line 4)",
        ),
        (
            "deployments:\n  - {name: a, model: m, 'name': b}\n",
            "deployments.yaml:2: name: key appears twice (first on line 2)",
        ),
    ],
    ids=["top-level-block-twice", "field-twice-in-an-entry", "plain-and-quoted-key"],
)
def test_a_key_twice_in_one_mapping_names_both_lines(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(write(tmp_path, text), environ={})
    assert problems_of(caught, tmp_path) == [expected]


def test_a_label_twice_in_a_cluster_file_names_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path, "nodes:\n  - id: a\n    labels:\n      zone: a\n      zone: b\n", "cluster.yaml"
    )
    with pytest.raises(ConfigFileError) as caught:
        load_cluster(path)
    assert problems_of(caught, tmp_path) == [
        "cluster.yaml:5: zone: key appears twice (first on line 4)"
    ]


def write_bytes(tmp_path: Path, data: bytes, name: str = "deployments.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "deployments.yaml:1: is not UTF-8 text (byte 0x89 cannot be decoded)",
        ),
        (
            "deployments:\n  - name: a\n    model: caf\xe9\n".encode("latin-1"),
            "deployments.yaml:3: is not UTF-8 text (byte 0xe9 cannot be decoded)",
        ),
        (
            "deployments: []\n".encode("utf-16"),
            "deployments.yaml:1: is not UTF-8 text (byte 0xff cannot be decoded)",
        ),
        (
            bytes(range(256)),  # 0x0a (one newline) comes before 0x80
            "deployments.yaml:2: is not UTF-8 text (byte 0x80 cannot be decoded)",
        ),
        (
            b"deployments:\n  - name: a\x00\n    model: m\n",
            "deployments.yaml:2: not valid YAML: control characters are not allowed (#x0000)",
        ),
        (
            "deployments:\n  - name: \u00e9t\u00e9\n    model: m\x07\n".encode(),
            "deployments.yaml:3: not valid YAML: control characters are not allowed (#x0007)",
        ),
        (
            b"deployments:\n\t- name: a\n",
            "deployments.yaml:2: not valid YAML: found character that cannot start any token",
        ),
    ],
    ids=["binary", "latin-1", "utf-16", "every-byte", "nul-byte", "bell-after-accents", "tab"],
)
def test_files_that_are_not_utf8_yaml_text_name_the_line_of_the_bad_byte(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(write_bytes(tmp_path, data), environ={})
    assert problems_of(caught, tmp_path) == [expected]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b"\xef\xbb\xbfdeployments:\n  - {name: a, model: m}\n")
    (spec,) = load_deployments(path, environ={})
    assert spec.deployment.name == "a"


def test_a_file_above_the_size_limit_is_refused_before_it_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_files, "MAX_FILE_BYTES", 100)
    path = write(tmp_path, "deployments:\n" + "  - {name: a, model: m}\n" * 5)
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert problems_of(caught, tmp_path) == ["deployments.yaml: is larger than 100 bytes"]


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_cluster(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[" * 10_000, "deployments.yaml:1: nested more than 32 levels"),
        ("{a: " * 100, "deployments.yaml:1: a: nested more than 32 levels"),
        (
            "deployments:\n" + "".join("  " * depth + "a:\n" for depth in range(1, 40)),
            "deployments.yaml:33: a: nested more than 32 levels",
        ),
        (
            "deployments:\n  - name: a\n    model: m\n    gpu_nodes: " + "[" * 40 + "]" * 40 + "\n",
            "deployments.yaml:4: gpu_nodes: nested more than 32 levels",
        ),
    ],
    ids=["10000-brackets", "100-flow-mappings", "block-mappings", "inside-an-entry"],
)
def test_too_deep_nesting_is_refused_with_its_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(write(tmp_path, text), environ={})
    assert problems_of(caught, tmp_path) == [expected]


def billion_laughs(width: int = 10, levels: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [
        f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]"
        for level in range(1, levels)
    ]
    return "\n".join(lines) + "\ndeployments: *a8\n"


def test_a_billion_laughs_file_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(write(tmp_path, billion_laughs()), environ={})
    (problem,) = caught.value.problems
    # a0 is 11 values (a list of 10), a1 111, ... a5 1,111,111: past the budget, on line 6.
    assert problem.line == 6
    assert "more than 1,000,000 values" in problem.problem


def test_aliases_within_the_budget_are_shared_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "deployments:\n"
        "  - {name: a, model: m, gpu_nodes: &pool [gpu-a, gpu-b]}\n"
        "  - {name: b, model: m, gpu_nodes: *pool}\n",
    )
    first, second = load_deployments(path, environ={})
    assert first.constraints.gpu_nodes == second.constraints.gpu_nodes == ("gpu-a", "gpu-b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "deployments: []\n---\ndeployments: []\n",
            "deployments.yaml:2: holds more than one YAML document (only one is read)",
        ),
        (
            "deployments: &a [*a]\n",
            "deployments.yaml:1: deployments: the alias *a refers to a value that contains it",
        ),
        (
            "deployments: *nowhere\n",
            "deployments.yaml:1: deployments: the alias *nowhere is not defined",
        ),
        (
            "base: &b {model: m}\ndeployments:\n  - <<: *b\n    name: a\n",
            (
                "deployments.yaml:1: base: is not a known field\n"
                "deployments.yaml:3: merge keys (<<) are not supported; write the fields out\n"
                "deployments.yaml:3: model: is required"
            ),
        ),
        (
            "deployments:\n  - ? [a, b]\n    : c\n    name: a\n    model: m\n",
            "deployments.yaml:2: deployments: a key must be a plain value, not a list or mapping",
        ),
        (
            "deployments:\n  - {name: a, model: !!python/object:os.system m}\n",
            "deployments.yaml:2: model: the tag '!!python/object:os.system' is not supported",
        ),
        (
            "deployments: !!set {a, b}\n",
            (
                "deployments.yaml:1: deployments: the tag '!!set' is not supported on a mapping\n"
                "deployments.yaml:1: deployments: must be a list"
            ),
        ),
        ("- name: a\n", "deployments.yaml:1: must be a mapping with a 'deployments' list"),
        ("deployments: [a]\n", "deployments.yaml:1: deployments: entry 1 must be a mapping"),
        ("deployments: {}\n", "deployments.yaml:1: deployments: must be a list"),
        ("# nothing here\n---\n", "deployments.yaml: the file is empty"),
    ],
    ids=[
        "two-documents",
        "recursive-alias",
        "undefined-alias",
        "merge-key",
        "list-as-key",
        "python-tag",
        "set-tag",
        "root-is-a-list",
        "entry-not-a-mapping",
        "deployments-not-a-list",
        "only-a-comment",
    ],
)
def test_yaml_features_a_spec_file_does_not_use_are_refused_with_their_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(write(tmp_path, text), environ={})
    assert problems_of(caught, tmp_path) == expected.splitlines()


# -- bounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("replicas: 100000000000000000000", "replicas: must be ≤ 1,000,000"),
        ("replicas: 1000001", "replicas: must be ≤ 1,000,000"),
        ("gpus: 100000000000000", "gpus: must be ≤ 1,000,000"),
        ("replicas: " + "9" * 5000, "replicas: is a number of more than 100 characters"),
        ("replicas: 1" + ":1" * 100, "replicas: is a number of more than 100 characters"),
        ("replicas: 1e400", "replicas: must be a whole number"),
        ("replicas: !!int ten", "replicas: cannot be read as a whole number"),
        ("replicas: -5", "replicas: must be ≥ 1"),
        ("gpu_nodes: ['" + "g" * 257 + "']", "gpu_nodes: must be at most 256 characters"),
    ],
    ids=[
        "replicas-20-digits",
        "replicas-one-above",
        "gpus-15-digits",
        "5000-digits",
        "base-60",
        "float-infinity",
        "int-tag-on-text",
        "negative",
        "long-node-id",
    ],
)
def test_numbers_and_texts_in_a_deployments_file_are_bounded(
    tmp_path: Path, entry: str, expected: str
) -> None:
    path = write(tmp_path, f"deployments:\n  - name: a\n    model: m\n    {entry}\n")
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert problems_of(caught, tmp_path) == [f"deployments.yaml:4: {expected}"]


def test_a_model_id_is_at_most_1024_characters(tmp_path: Path) -> None:
    path = write(tmp_path, "deployments:\n  - name: a\n    model: " + "m" * 1025 + "\n")
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert problems_of(caught, tmp_path) == [
        "deployments.yaml:3: model: must be at most 1024 characters"
    ]


def test_a_million_replicas_is_a_valid_file_the_placement_actor_refuses_later(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "deployments:\n  - {name: a, model: m, replicas: 1000000, gpus: 8}\n")
    (spec,) = load_deployments(path, environ={})
    assert spec.deployment.replicas == 1_000_000


def test_remote_replicas_above_the_actors_limit_are_refused_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "deployments:\n  - name: a\n    model: gpt-4o\n    replicas: 10001\n")
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert problems_of(caught, tmp_path) == [
        "deployments.yaml:4: replicas: a remote deployment may ask for at most 10,000 replicas"
    ]
    (spec,) = load_deployments(path, environ={}, max_remote_replicas=20_000)
    assert spec.deployment.replicas == 10_001


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ('id: "  "', "cluster.yaml:3: id: must not be blank"),
        ("id: ''", "cluster.yaml:3: id: must not be empty"),
        ("id: " + "n" * 257, "cluster.yaml:3: id: must be at most 256 characters"),
        ("id: b\n    gpus: 100000000000000", "cluster.yaml:4: gpus: must be ≤ 1,024"),
        ("id: b\n    gpus: 1025", "cluster.yaml:4: gpus: must be ≤ 1,024"),
        ("id: b\n    labels: {zone: 1}", "cluster.yaml:4: labels: must be text"),
        (
            "id: b\n    labels: {" + "k" * 257 + ": v}",
            "cluster.yaml:4: labels: key must be at most 256 characters",
        ),
        (
            "id: b\n    labels: {" + ", ".join(f"l{i}: v" for i in range(65)) + "}",
            "cluster.yaml:4: labels: must have at most 64 item(s)",
        ),
    ],
    ids=[
        "blank-id",
        "empty-id",
        "long-id",
        "huge-gpus",
        "gpus-one-above",
        "label-not-text",
        "long-label-key",
        "too-many-labels",
    ],
)
def test_cluster_file_values_are_bounded_and_name_their_line(
    tmp_path: Path, node: str, expected: str
) -> None:
    path = write(tmp_path, f"nodes:\n  - id: a\n  - {node}\n", "cluster.yaml")
    with pytest.raises(ConfigFileError) as caught:
        load_cluster(path)
    assert problems_of(caught, tmp_path) == [expected]


@pytest.mark.parametrize(
    ("limit", "kind", "text"),
    [
        ("MAX_DEPLOYMENTS", "deployments", "deployments:\n" + "  - {name: a, model: m}\n" * 4),
        ("MAX_NODES", "cluster", "nodes:\n" + "".join(f"  - {{id: n{i}}}\n" for i in range(4))),
    ],
    ids=["deployments", "nodes"],
)
def test_a_file_with_more_entries_than_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str, kind: str, text: str
) -> None:
    monkeypatch.setattr(config_files, limit, 3)
    path = write(tmp_path, text, f"{kind}.yaml")
    with pytest.raises(ConfigFileError) as caught:
        (load_deployments if kind == "deployments" else load_cluster)(path)
    key = "deployments" if kind == "deployments" else "nodes"
    assert problems_of(caught, tmp_path) == [
        f"{kind}.yaml:1: {key}: holds 4 entries; at most 3 are allowed"
    ]


def test_a_file_with_thousands_of_problems_shows_the_first_hundred_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "deployments:\n" + "".join(f"  - {{name: d{i}, model: m, x: 1}}\n" for i in range(500)),
    )
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    shown = problems_of(caught, tmp_path)
    assert len(shown) == 101
    assert shown[0] == "deployments.yaml:2: x: is not a known field"
    assert shown[-1] == (
        "deployments.yaml:102: and 400 more problems (not shown; the first is on this line)"
    )


def problems_of_one_entry(tmp_path: Path, lines: Sequence[str]) -> list[str]:
    """The problems shown for a file of one entry (``name: a``, ``model: m``, then ``lines``)."""
    path = write(
        tmp_path,
        "deployments:\n  - name: a\n    model: m\n" + "".join(f"    {x}\n" for x in lines),
    )
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    return problems_of(caught, tmp_path)


def test_unknown_fields_past_the_hundred_shown_are_counted_without_a_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suggested: list[object] = []
    suggest = config_files._did_you_mean

    def counted(name: object, known: Iterable[str]) -> str:
        suggested.append(name)
        return suggest(name, known)

    monkeypatch.setattr(config_files, "_did_you_mean", counted)
    shown = problems_of_one_entry(tmp_path, [f"replicaz{i}: 1" for i in range(5_000)])
    assert shown[0] == (
        "deployments.yaml:4: replicaz0: is not a known field (did you mean replicas?)"
    )
    assert shown[-1] == (
        "deployments.yaml:104: and 4,900 more problems (not shown; the first is on this line)"
    )
    assert len(suggested) == 101  # the hundred shown and the first counted, not 5,000


def test_a_bad_value_above_a_hundred_unknown_fields_is_among_the_problems_shown(
    tmp_path: Path,
) -> None:
    shown = problems_of_one_entry(tmp_path, ["replicas: zero", *(f"zz{i}: 1" for i in range(100))])
    assert shown[0].startswith("deployments.yaml:4: replicas: ")
    assert shown[1] == "deployments.yaml:5: zz0: is not a known field"
    assert shown[-1] == (
        "deployments.yaml:104: and 1 more problems (not shown; the first is on this line)"
    )


# -- one round of problems ------------------------------------------------------------------------


def test_schema_and_domain_problems_are_reported_together_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "deployments:\n"
        "  - {name: 'no spaces', model: m}\n"  # domain: Deployment refuses the name
        "  - {name: b, model: m, replicas: 0}\n"  # schema
        "  - name: c\n"
        "    model: gpt-4o\n"
        "    gpus: 1\n"  # domain: gpus on a remote deployment
        "  - {name: d, model: m, colour: red}\n"  # schema
        "  - {name: c, model: m}\n",  # a name again
    )
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert [(p.line, p.field) for p in caught.value.problems] == [
        (2, "name"),
        (3, "replicas"),
        (6, "gpus"),
        (7, "colour"),
        (8, "name"),
    ]


def test_unknown_nodes_are_problems_at_their_line_when_the_cluster_is_known(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "deployments:\n"
        "  - name: a\n"
        "    model: m\n"
        "    gpu_nodes:\n"
        "      - gpu-a\n"
        "      - gpu-z\n"
        "  - {name: b, model: gpt-4o, egress_nodes: [head, '" + "x" * 100 + "']}\n",
    )
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={}, known_nodes={"gpu-a", "head"})
    assert problems_of(caught, tmp_path) == [
        "deployments.yaml:6: gpu_nodes: unknown node 'gpu-z'",
        f"deployments.yaml:7: egress_nodes: unknown node '{'x' * 40}'",
    ]
    assert len(load_deployments(path, environ={})) == 2  # without a cluster, nothing to check


# -- secrets --------------------------------------------------------------------------------------

PASTED_KEY = "sk-proj-Abc123456789xyzSECRET"


@pytest.mark.parametrize(
    "value",
    [PASTED_KEY, "sk-ant-api03-" + "A" * 80, "a b", "X" * 129, "1ABC"],
    ids=["openai-key", "anthropic-key", "a-space", "129-characters", "leading-digit"],
)
def test_an_api_key_env_that_is_no_variable_name_is_refused_and_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    caplog.set_level(logging.DEBUG)
    path = write(
        tmp_path,
        f"deployments:\n  - name: g\n    model: gpt-4o\n    api_key_env: '{value}'\n",
    )
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={value: "the-real-secret"})
    assert problems_of(caught, tmp_path) == [
        (
            "deployments.yaml:4: api_key_env: must name an environment variable "
            "(the value looks like a key itself and is not shown)"
        )
    ]
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    everything = str(caught.value) + repr(caught.value.problems) + repr(caught.value.args)
    assert value not in everything
    assert value not in caplog.text
    assert "the-real-secret" not in everything + caplog.text


def test_an_unset_variable_is_named_on_its_entry_and_logged_by_name_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = write(tmp_path, "deployments:\n  - {name: g, model: gpt-4o, api_key_env: MY_KEY}\n")
    (spec,) = load_deployments(path, environ={})
    assert spec.deployment.api_key is None
    assert spec.unset_key_env == "MY_KEY"
    assert "deployment g: MY_KEY is not set" in caplog.text
    (spec,) = load_deployments(path, environ={"MY_KEY": "sk-set"})
    assert spec.unset_key_env is None


# -- new fields and the C parser's stand-in --------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", EgressStrategy.SPREAD),
        ("egress_strategy: spread", EgressStrategy.SPREAD),
        ("egress_strategy: pack", EgressStrategy.PACK),
    ],
    ids=["default", "spread", "pack"],
)
def test_egress_strategy_becomes_the_constraints_egress_strategy(
    tmp_path: Path, line: str, expected: EgressStrategy
) -> None:
    path = write(tmp_path, f"deployments:\n  - name: g\n    model: gpt-4o\n    {line}\n")
    (spec,) = load_deployments(path, environ={})
    assert spec.constraints.egress_strategy is expected


def test_an_unknown_egress_strategy_names_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, "deployments:\n  - {name: g, model: gpt-4o, egress_strategy: wide}\n")
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    assert problems_of(caught, tmp_path) == [
        "deployments.yaml:2: egress_strategy: must be one of 'spread' or 'pack'"
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"deployments:\n  - {name: a, model: m}\ndeployments: []\n",
            "deployments.yaml:3: deployments: key appears twice (first on line 1)",
        ),
        (
            "deployments:\n  - name: \u00e9\n    model: m\x00\n".encode(),
            "deployments.yaml:3: not valid YAML: special characters are not allowed (#x0000)",
        ),
        (b"[" * 10_000, "deployments.yaml:1: nested more than 32 levels"),
        (b"deployments: [\n", "deployments.yaml:1: not valid YAML"),
    ],
    ids=["duplicate-key", "nul-after-accents", "deep", "broken"],
)
def test_pure_python_yaml_gives_the_same_lines_when_libyaml_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, expected: str
) -> None:
    monkeypatch.setattr(config_files, "_LOADER", yaml.SafeLoader)
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(write_bytes(tmp_path, data), environ={})
    assert problems_of(caught, tmp_path)[0].startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: 2024-13-45", ("2024-13-45", "m")),  # looks like a date but is none: text
        ("name: '007'", ("007", "m")),
        ("name: a\n    model: '1.0'", ("a", "1.0")),
    ],
    ids=["impossible-date", "quoted-number", "quoted-float"],
)
def test_text_that_looks_like_another_type_is_text(
    tmp_path: Path, text: str, expected: tuple[str, str]
) -> None:
    if "model" not in text:
        text += "\n    model: m"
    path = write(tmp_path, f"deployments:\n  - {text}\n")
    (spec,) = load_deployments(path, environ={})
    assert (spec.deployment.name, spec.deployment.model) == expected


def test_a_5_mb_file_of_50000_deployments_loads(tmp_path: Path) -> None:
    # How long it takes is measured by hand (tests never assert timings).
    entry = "  - name: dep-{:06d}\n    model: meta-llama/Llama-3.1-8B-Instruct\n    replicas: 2\n"
    path = write(
        tmp_path,
        "deployments:\n" + "".join(entry.format(i) + "    gpus: 1\n" for i in range(50_000)),
    )
    assert path.stat().st_size > 4_500_000
    specs = load_deployments(path, environ={})
    assert len(specs) == 50_000
    assert specs[-1].deployment.name == "dep-049999"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_a_yaml_error_names_its_line_whatever_the_line_endings(
    tmp_path: Path, newline: str
) -> None:
    lines = ["deployments:", "  - name: a", "    model: m", "  - name: b", "    model: [", ""]
    path = tmp_path / "deployments.yaml"
    path.write_bytes(newline.join(lines).encode())
    with pytest.raises(ConfigFileError) as caught:
        load_deployments(path, environ={})
    (problem,) = problems_of(caught, tmp_path)
    assert problem.startswith("deployments.yaml:5: not valid YAML")  # the last line, not past it
